"""`wattwise estimate` through wattwise.cli.main: JSON figures, ledger runs, bad input."""

from __future__ import annotations

import json
import math
import re

import pytest

from wattwise import hardware
from wattwise.cli import main
from wattwise.estimate import profile_from_run
from wattwise.ledger import Ledger
from wattwise.types import DeviceInfo, PhaseEnergy

GPU = DeviceInfo(
    "gpu:GPU-8c3e2a4b-1f6d-4e7a-9b2c-5d0e1f2a3b4c", "gpu", "NVIDIA H100 80GB HBM3", "counter"
)
CPU = DeviceInfo("cpu:machine", "cpu", "Xeon", "estimate", flags=frozenset({"estimated"}))

# (seconds, GPU joules, CPU joules) per epoch: epoch 0 carries 2 s and 900 J of warm-up
EPOCHS = [
    (12.0, 4800.0, 600.0),
    (10.0, 4000.0, 500.0),
    (10.0, 4000.0, 500.0),
    (10.0, 4000.0, 500.0),
]


def run_json(capsys, *args: str) -> dict:
    code = main(["estimate", *args, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def fail(capsys, *args: str) -> str:
    assert main(["estimate", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.fixture
def ledger_run(tmp_path):
    """A finished H100 run of 4 epochs (train + validate phases on a GPU and a CPU) + a test."""
    path = tmp_path / "w.db"
    with Ledger(path) as ledger:
        run_id = ledger.begin_run(
            architecture="mlp", devices=[GPU, CPU], settings={"peak_mem_gib": 30.0}
        )
        t, index = 100.0, 0
        for epoch, (seconds, gpu_j, cpu_j) in enumerate(EPOCHS):
            phases = []
            # training for all but the last second, then one second of validation
            for name, t0, t1, share in (
                ("train", t, t + seconds - 1, (seconds - 1) / seconds),
                ("validate", t + seconds - 1, t + seconds, 1 / seconds),
            ):
                for device, energy_j in ((GPU, gpu_j), (CPU, cpu_j)):
                    phases.append(
                        PhaseEnergy(
                            name,
                            index,
                            device.device_id,
                            device.kind,
                            t0,
                            t1,
                            energy_j * share,
                            device.method,
                        )
                    )
                index += 1
            ledger.add_phases(
                run_id, phases, epoch=epoch, epochs_completed=epoch + 1, devices=[GPU, CPU]
            )
            t += seconds
        test = [PhaseEnergy("test", index, GPU.device_id, "gpu", t, t + 50, 1e6, "counter")]
        ledger.add_phases(run_id, test, epoch=None)
        ledger.finish_run(run_id)
    return path, run_id


def test_profile_from_run_by_hand(ledger_run):
    path, run_id = ledger_run
    with Ledger(path) as ledger:
        profile = profile_from_run(ledger, run_id[:8])
    assert profile.gpu.name == "H100 SXM 80 GB"
    assert profile.seconds_per_epoch == pytest.approx(10.0)
    assert profile.joules_per_epoch == pytest.approx(4500.0)  # GPU + CPU; the test stage is out
    assert profile.host_joules_per_epoch == pytest.approx(500.0)
    assert (profile.warmup_epochs, profile.epochs_measured) == (1, 4)
    assert profile.warmup_extra_s == pytest.approx(2.0)
    assert profile.warmup_extra_j == pytest.approx(900.0)
    assert profile.peak_mem_gib == 30.0
    assert profile.spread == 0.0
    assert profile.run_id == run_id


def test_a_last_epoch_cut_short_by_max_steps_is_not_a_steady_epoch(tmp_path):
    """Regression: ``Trainer(max_steps=...)`` ends the fit inside an epoch and Lightning still
    ends that epoch, so EnergyCallback commits it (with its smaller training-sample count). The
    profile took it as one more steady epoch, so the run's rates came out low (a 4-epoch run
    whose fifth epoch ran half its batches: seconds and joules per epoch 12.5% low)."""
    path = tmp_path / "w.db"
    samples = [640, 640, 640, 640, 320]
    with Ledger(path) as ledger:
        run_id = ledger.begin_run(architecture="mlp", devices=[GPU, CPU])
        t = 100.0
        for epoch, (seconds, gpu_j, cpu_j) in enumerate([*EPOCHS, (5.0, 2000.0, 250.0)]):
            phases = [
                PhaseEnergy(
                    "train", 2 * epoch + i, d.device_id, d.kind, t, t + seconds, j, d.method
                )
                for i, (d, j) in enumerate(((GPU, gpu_j), (CPU, cpu_j)))
            ]
            ledger.add_phases(
                run_id,
                phases,
                epoch=epoch,
                epochs_completed=epoch + 1,
                devices=[GPU, CPU],
                train_samples=samples[epoch],
            )
            t += seconds
        ledger.finish_run(run_id)
        profile = profile_from_run(ledger, run_id)
    assert profile.seconds_per_epoch == pytest.approx(10.0)
    assert profile.joules_per_epoch == pytest.approx(4500.0)
    assert (profile.warmup_epochs, profile.epochs_measured) == (1, 4)


def test_run_default_target_is_its_own_gpu(capsys, ledger_run):
    path, run_id = ledger_run
    data = run_json(capsys, "--run", run_id, "--ledger", str(path), "--epochs", "10")
    (target,) = data["targets"]
    assert target["gpu"] == "H100 SXM 80 GB"
    assert target["seconds"] == pytest.approx(2.0 + 10 * 10.0)  # warm-up once + 10 steady
    assert target["energy_kwh"] == pytest.approx((900.0 + 10 * 4500.0) / 3.6e6)
    assert target["fits_memory"] is True
    assert data["profile"]["run_id"] == run_id


def test_run_scaled_to_other_gpus(capsys, ledger_run):
    path, run_id = ledger_run
    data = run_json(
        capsys,
        "--run",
        run_id,
        "--ledger",
        str(path),
        "--epochs",
        "10",
        "--gpu",
        "A100,rtx 4060 ti",
    )
    a100, small = data["targets"]
    spec = hardware.lookup("A100")
    h100 = hardware.lookup("H100")
    u = (400.0 - h100.idle_w) / (h100.tdp_w - h100.idle_w)  # 4000 J / 10 s = 400 W of GPU
    assert a100["gpu_power_w"] == pytest.approx(spec.idle_w + u * (spec.tdp_w - spec.idle_w))
    ratio = a100["time_ratio"]
    # host power (50 W) carries over unchanged
    per_epoch_j = (a100["gpu_power_w"] + 50.0) * 10.0 * ratio
    warmup_j = 900.0 * per_epoch_j / 4500.0
    assert a100["energy_kwh"] == pytest.approx((warmup_j + 10 * per_epoch_j) / 3.6e6)
    assert small["fits_memory"] is False  # 30 GiB peak on a 16 GB card
    assert data["cheapest"] == data["fastest"] == data["greenest"] == a100["gpu"]


def test_typed_in_numbers(capsys):
    data = run_json(
        capsys,
        "--measured-gpu",
        "NVIDIA H100 80GB HBM3",
        "--seconds-per-epoch",
        "60",
        "--joules-per-epoch",
        "24000",
        "--epochs",
        "10",
        "--gpu",
        "h100",
        "--budget-kwh",
        "0.05",
        "--region",
        "FRA",
    )
    (target,) = data["targets"]
    assert target["seconds"] == pytest.approx(600.0)
    assert target["energy_kwh"] == pytest.approx(240_000 / 3.6e6)  # 0.0667 kWh > 0.05
    assert target["verdicts"] == {"kwh": False}
    assert target["within_budget"] is False
    assert data["region"] == "FRA"


def test_steps_plan(capsys):
    data = run_json(
        capsys,
        "--measured-gpu",
        "H100",
        "--seconds-per-epoch",
        "60",
        "--joules-per-epoch",
        "24000",
        "--steps",
        "250",
        "--steps-per-epoch",
        "100",
        "--gpu",
        "H100",
    )
    assert data["epochs"] == pytest.approx(2.5)
    assert data["targets"][0]["seconds"] == pytest.approx(150.0)


def test_typed_in_defaults_to_every_known_gpu(capsys):
    data = run_json(
        capsys,
        "--measured-gpu",
        "H100",
        "--seconds-per-epoch",
        "60",
        "--joules-per-epoch",
        "24000",
        "--peak-mem-gib",
        "20",
        "--epochs",
        "5",
    )
    assert [t["gpu"] for t in data["targets"]] == [s.name for s in hardware.all_gpus()]
    assert {"cheapest", "fastest", "greenest"} <= set(data)


def test_table_output(capsys):
    args = ["--measured-gpu", "H100", "--seconds-per-epoch", "60", "--joules-per-epoch", "24000"]
    assert main(["estimate", *args, "--epochs", "5", "--gpu", "H100,A100"]) == 0
    out = capsys.readouterr().out
    assert "A100 SXM" in out
    assert "fastest: H100 SXM 80 GB" in out
    assert "owning beats renting" in out
    cloud = ["--epochs", "5", "--gpu", "H100,H200", "--pricing", "aws:p5.48xlarge"]
    assert main(["estimate", *args, *cloud, "--budget-kwh", "0.032"]) == 0
    out = capsys.readouterr().out
    assert "priced as onprem" in out  # AWS rents no H200 in the table
    assert "H100 SXM 80 GB: over: kwh" in out  # 5 x 24 kJ = 0.0333 kWh


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--epochs", "10", "--gpu", "H900"], ["H900", "closest", "H100"]),
        (["--epochs", "0"], ["--epochs 0", "> 0"]),
        (["--epochs", "-3"], ["--epochs -3", "> 0"]),
        (["--epochs", "3", "--steps", "5"], ["exactly one of --epochs", "both"]),
        ([], ["exactly one of --epochs", "neither"]),
        (["--steps", "2.5"], ["--steps"]),
        (["--steps", "100"], ["--steps-per-epoch"]),
        (["--epochs", "3", "--budget-usd", "0"], ["--budget-usd 0", "> 0"]),
    ],
)
def test_bad_plan_or_target_exits_2(capsys, args, expected):
    measured = ["--measured-gpu", "H100", "--seconds-per-epoch", "60", "--joules-per-epoch", "1e4"]
    err = fail(capsys, *measured, *args)
    for text in expected:
        assert text in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--epochs", "3"], ["--run RUN_ID", "--measured-gpu NAME"]),
        (
            ["--measured-gpu", "H100", "--seconds-per-epoch", "60", "--epochs", "3"],
            ["--joules-per-epoch"],
        ),
        (
            [
                "--measured-gpu",
                "Z80",
                "--seconds-per-epoch",
                "6",
                "--joules-per-epoch",
                "6",
                "--epochs",
                "3",
            ],
            ["Z80"],
        ),
        (
            [
                "--measured-gpu",
                "H100",
                "--seconds-per-epoch",
                "-6",
                "--joules-per-epoch",
                "6",
                "--epochs",
                "3",
            ],
            ["--seconds-per-epoch -6"],
        ),
        (["--run", "abc", "--measured-gpu", "H100", "--epochs", "3"], ["--run"]),
    ],
)
def test_bad_measured_input_exits_2(capsys, args, expected):
    err = fail(capsys, *args)
    for text in expected:
        assert text in err


@pytest.mark.parametrize(
    ("plan", "flag", "unit"),
    [
        (["--epochs", "1e308"], "--epochs", "epochs"),
        (["--steps", "1e308", "--steps-per-epoch", "10"], "--steps", "steps"),
    ],
)
def test_plan_whose_totals_overflow_exits_2_naming_the_flag(capsys, plan, flag, unit):
    """Regression: --epochs 1e308 reached the pricing as energy inf ("bad energy_j inf")."""
    measured = ["--measured-gpu", "H100", "--seconds-per-epoch", "1", "--joules-per-epoch", "100"]
    err = fail(capsys, *measured, *plan, "--gpu", "H100,L4")
    assert f"{flag})" in err and "1e+308" in err and "accepted" in err
    assert "energy_j" not in err and len(err.strip().splitlines()) == 1
    # the largest plan the message suggests is accepted, with finite figures
    most = re.search(rf"at most about (\S+) {unit}", err)
    assert most is not None, err
    plan = [plan[0], most.group(1), *plan[2:]]
    data = run_json(capsys, *measured, *plan, "--gpu", "H100,L4")
    for target in data["targets"]:
        figures = [target["seconds"], target["energy_kwh"], target["cost_usd"], target["co2e_kg"]]
        figures += [v for pair in target["band"].values() for v in pair]
        assert all(math.isfinite(v) and v > 0 for v in figures)


def test_unknown_run_exits_2(capsys, ledger_run):
    path, _ = ledger_run
    err = fail(capsys, "--run", "nope", "--ledger", str(path), "--epochs", "3")
    assert "nope" in err


@pytest.mark.slow
def test_run_recorded_by_the_callback_on_a_replayed_h200(
    capsys, tmp_path, monkeypatch, nvml_fixtures
):
    """A real fit measured by EnergyCallback with the GPU replayed from the mlp6144 H200 trace
    (its marks name the GPU): `estimate --run` knows the GPU, the precision and the epochs."""
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_callbacks import EnergyCallback

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    monkeypatch.setenv("WATTWISE_REPLAY_NVML", str(nvml_fixtures / "h200-mlp6144-8epochs-20hz.csv"))
    energy = EnergyCallback(ledger=tmp_path / "w.db", log_metrics=False)
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        callbacks=[energy],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Tiny(), DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4))
    capsys.readouterr()
    data = run_json(
        capsys, "--run", energy.run_id, "--ledger", str(tmp_path / "w.db"), "--epochs", "30"
    )
    (target,) = data["targets"]
    assert target["gpu"] == "H200 SXM 141 GB"
    assert target["time_ratio"] == pytest.approx(1.0)
    profile = data["profile"]
    assert profile["epochs_measured"] == 3
    assert profile["precision"] == "fp32"  # the Trainer's default 32-true
    expected_s = profile["warmup_extra_s"] + 30 * profile["seconds_per_epoch"]
    assert target["seconds"] == pytest.approx(expected_s)
    assert sum(energy.epoch_duration_s) < 30 * profile["seconds_per_epoch"]


def test_replayed_trace_run_predicts_its_own_total(capsys, tmp_path, nvml_fixtures):
    """The 8-epoch mlp6144 H200 trace recorded as a run: 8 planned epochs on its own GPU give
    back exactly the recorded epochs (warm-up extra + 8 steady epochs = the recorded sum)."""
    db = tmp_path / "w.db"
    trace = nvml_fixtures / "h200-mlp6144-8epochs-20hz.csv"
    marks = nvml_fixtures / "h200-mlp6144-8epochs-marks.json"
    assert main(["replay", str(trace), "--marks", str(marks), "--ledger", str(db)]) == 0
    capsys.readouterr()
    with Ledger(db) as ledger:
        (record,) = ledger.list_runs()
        phases = ledger.phases(record.run_id)
    in_epochs = phases[phases["epoch"].notna()]
    spans = in_epochs.groupby("epoch").agg(start=("start_s", "min"), end=("end_s", "max"))
    total_j = in_epochs["energy_j"].sum()
    total_s = (spans["end"] - spans["start"]).sum()

    data = run_json(capsys, "--run", record.run_id, "--ledger", str(db), "--epochs", "8")
    (target,) = data["targets"]
    assert target["gpu"] == "H200 SXM 141 GB"
    assert data["profile"]["warmup_epochs"] == 1  # epoch 0 is ~11 % slower
    assert target["energy_kwh"] * 3.6e6 == pytest.approx(total_j)
    assert target["seconds"] == pytest.approx(total_s)
    assert target["fits_memory"] is True  # 3.04 GiB peak

    # the marks give 90 training steps per epoch: 900 steps = 10 epochs
    data = run_json(capsys, "--run", record.run_id, "--ledger", str(db), "--steps", "900")
    assert data["epochs"] == pytest.approx(10.0)


def test_configured_pricing_list_uses_its_first_scenario(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WATTWISE_PRICING", raising=False)
    (tmp_path / "wattwise.toml").write_text(
        'pricing = ["aws:p5.48xlarge", "onprem"]\n', encoding="utf-8"
    )
    measured = ["--measured-gpu", "H100", "--seconds-per-epoch", "60", "--joules-per-epoch", "1e4"]
    data = run_json(capsys, *measured, "--epochs", "3", "--gpu", "H100")
    assert data["pricing"] == "aws:p5.48xlarge"
    assert data["targets"][0]["pricing"] == "aws:p5.48xlarge"
    data = run_json(capsys, *measured, "--epochs", "3", "--gpu", "H100", "--pricing", "onprem")
    assert data["pricing"] == "onprem"
