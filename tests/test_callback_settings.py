"""What EnergyCallback learns while a fit goes on and keeps in the run's settings, for
`wattwise estimate --run`: optimizer steps per epoch (``--steps`` needs no ``--steps-per-epoch``)
and, on CUDA, the peak GPU memory of every rank (``fits_memory``).

The CUDA memory query is faked here (this machine has no GPU); the real one runs in the
``gpu``-marked test at the end.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from test_callback import TinyModel, loader, trainer
from test_cli_estimate import fail, run_json
from torch.utils.data import DataLoader, IterableDataset

import lightning_callbacks.energy as energy_module
from lightning_callbacks import EnergyCallback
from wattwise import hardware, units
from wattwise.estimate import MEMORY_HEADROOM
from wattwise.ledger import Ledger

PEAK_KEYS = {"peak_mem_gib", "peak_mem_reserved_gib"}


@pytest.fixture
def h200(monkeypatch: pytest.MonkeyPatch, nvml_fixtures) -> None:
    """The GPU replayed from the mlp6144 H200 trace (its marks name the GPU, so the estimator
    knows what was measured)."""
    trace = nvml_fixtures / "h200-mlp6144-8epochs-20hz.csv"
    monkeypatch.setenv("WATTWISE_REPLAY_NVML", str(trace))


class SettingsSeen(pl.Callback):
    """Reads the run's settings back from the ledger after each training epoch's commit (it
    comes after EnergyCallback in the list, so its hook runs after the commit)."""

    def __init__(self, energy: EnergyCallback, db) -> None:
        self.energy, self.db = energy, db
        self.seen: list[dict] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        with Ledger(self.db) as ledger:
            self.seen.append(ledger.get_run(self.energy.run_id).settings)


def fake_peaks(monkeypatch: pytest.MonkeyPatch, allocated_gib: list[float]) -> list[float]:
    """Make every read of the CUDA peak return the next figure of ``allocated_gib`` (reserved:
    2 GiB more), as a CUDA rank would; returns the list of figures handed out."""
    figures = iter(allocated_gib)
    handed: list[float] = []

    def peak(trainer):
        handed.append(next(figures))
        return handed[-1], handed[-1] + 2.0

    monkeypatch.setattr(energy_module, "_cuda_peak_gib", peak)
    return handed


@pytest.mark.slow
def test_a_cpu_fit_records_its_steps_per_epoch_and_estimate_plans_in_steps(tmp_path, h200, capsys):
    """10 batches an epoch, gradients accumulated over 3: 4 optimizer steps an epoch (the last
    partial accumulation steps too). No peak memory on a CPU Trainer."""
    db = tmp_path / "w.db"
    energy = EnergyCallback(ledger=db, log_metrics=False)
    fit = trainer(tmp_path, [energy], max_epochs=2, accumulate_grad_batches=3)
    fit.fit(TinyModel(), loader(80), loader(16))  # 80 samples / batch 8 = 10 batches

    assert fit.global_step == 2 * 4  # Lightning's own count of optimizer steps
    settings = Ledger(db).get_run(energy.run_id).settings
    assert (settings["batches_per_epoch"], settings["steps_per_epoch"]) == (10, 4)
    assert not PEAK_KEYS & set(settings)
    assert settings["precision"]  # what begin_run wrote is still there

    capsys.readouterr()
    data = run_json(
        capsys, "--run", energy.run_id, "--ledger", str(db), "--steps", "50", "--gpu", "H100"
    )
    assert data["epochs"] == pytest.approx(50 / 4)
    (target,) = data["targets"]
    assert target["fits_memory"] is None  # no peak known
    per_epoch = data["profile"]["seconds_per_epoch"] * target["time_ratio"]
    assert target["seconds"] == pytest.approx(
        data["profile"]["warmup_extra_s"] * target["time_ratio"] + 50 / 4 * per_epoch, rel=1e-6
    )


class Endless(IterableDataset):
    """An iterable dataset without a length: Lightning cannot tell the epoch's batches."""

    def __iter__(self):
        generator = torch.Generator().manual_seed(0)
        for _ in range(24):
            yield torch.randn(8, generator=generator), torch.randint(0, 2, (), generator=generator)


@pytest.mark.slow
def test_an_epoch_of_unknown_length_records_no_steps(tmp_path, h200, capsys):
    db = tmp_path / "w.db"
    energy = EnergyCallback(ledger=db, log_metrics=False)
    fit = trainer(tmp_path, [energy], max_epochs=2, num_sanity_val_steps=0)
    fit.fit(TinyModel(), DataLoader(Endless(), batch_size=8), loader(16))

    assert math.isinf(fit.num_training_batches) and fit.global_step == 2 * 3
    run = Ledger(db).get_run(energy.run_id)
    settings = run.settings
    assert "steps_per_epoch" not in settings and "batches_per_epoch" not in settings
    # left out on purpose, not lost to a guarded fault (int(inf) would raise inside the guard)
    assert "callback_error" not in run.flags
    capsys.readouterr()
    err = fail(capsys, "--run", energy.run_id, "--ledger", str(db), "--steps", "50")
    assert "--steps-per-epoch" in err


@pytest.mark.slow
def test_peak_memory_is_the_max_over_epochs_kept_across_a_resume(
    tmp_path, h200, monkeypatch, capsys
):
    """The faked CUDA peak is read at each epoch's commit and at the end; the run's settings
    hold the largest so far after every epoch, and a resumed run keeps the larger of its old
    peak (here raised after its last checkpoint) and the new one."""
    db = tmp_path / "w.db"
    ckpt_dir = tmp_path / "ckpt"
    # epoch 0, epoch 1, teardown (after the checkpoint of epoch 1 was saved)
    handed = fake_peaks(monkeypatch, [2.0, 12.0, 30.0])
    first = EnergyCallback(ledger=db, log_metrics=False)
    seen = SettingsSeen(first, db)
    checkpoints = ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_epochs=1)
    trainer(tmp_path, [first, seen, checkpoints], max_epochs=2).fit(
        TinyModel(), loader(), loader(16)
    )
    assert handed == [2.0, 12.0, 30.0]
    assert [s["peak_mem_gib"] for s in seen.seen] == [2.0, 12.0]  # written at each commit
    assert [s["peak_mem_reserved_gib"] for s in seen.seen] == [4.0, 14.0]
    settings = Ledger(db).get_run(first.run_id).settings
    assert (settings["peak_mem_gib"], settings["peak_mem_reserved_gib"]) == (30.0, 32.0)
    assert settings["steps_per_epoch"] == 8 and first.peak_mem_gib == 30.0

    # A new process resumes from epoch 1's checkpoint (which holds a peak of 12 GiB) to 4 epochs:
    # its own peaks are smaller at first (the ledger's 30 GiB stays), then larger (40 wins).
    (ckpt,) = ckpt_dir.glob("epoch=1-*.ckpt")
    handed = fake_peaks(monkeypatch, [4.0, 5.0, 40.0])
    second = EnergyCallback(ledger=db, log_metrics=False)
    seen = SettingsSeen(second, db)
    more = ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_epochs=1)
    trainer(tmp_path, [second, seen, more], max_epochs=4).fit(
        TinyModel(), loader(), loader(16), ckpt_path=ckpt
    )
    assert second.run_id == first.run_id and handed == [4.0, 5.0, 40.0]
    assert [s["peak_mem_gib"] for s in seen.seen] == [30.0, 30.0]
    run = Ledger(db).get_run(first.run_id)
    assert run.epochs == 4
    assert (run.settings["peak_mem_gib"], run.settings["peak_mem_reserved_gib"]) == (40.0, 42.0)

    # 40 GiB (+ the estimator's headroom) fits an 80 GB H100, not a 24 GB RTX 4090
    capsys.readouterr()
    data = run_json(
        capsys, "--run", run.run_id, "--ledger", str(db), "--epochs", "3", "--gpu", "H100,4090"
    )
    fits = {t["gpu"]: t["fits_memory"] for t in data["targets"]}
    assert fits == {"H100 SXM 80 GB": True, "RTX 4090": False}
    assert data["profile"]["peak_mem_gib"] == 40.0
    assert hardware.lookup("4090").memory_gib < 40.0 * (1 + MEMORY_HEADROOM)


@pytest.mark.slow
def test_settings_are_written_only_when_they_changed(tmp_path, h200, monkeypatch):
    """One ledger write per change on the training thread: epoch 0 (new steps and peak),
    epoch 2 (a larger peak); epoch 1 and the teardown change nothing and write nothing."""
    fake_peaks(monkeypatch, [3.0, 3.0, 5.0, 5.0])  # epochs 0, 1, 2, teardown
    writes: list[dict] = []
    update = Ledger.update_settings

    def spy(self, run_id, values):
        writes.append(dict(values))
        return update(self, run_id, values)

    monkeypatch.setattr(Ledger, "update_settings", spy)
    db = tmp_path / "w.db"
    energy = EnergyCallback(ledger=db, log_metrics=False)
    trainer(tmp_path, [energy], max_epochs=3).fit(TinyModel(), loader(), loader(16))
    shape = {"batches_per_epoch": 8, "steps_per_epoch": 8}
    assert writes == [
        {**shape, "peak_mem_gib": 3.0, "peak_mem_reserved_gib": 5.0},
        {**shape, "peak_mem_gib": 5.0, "peak_mem_reserved_gib": 7.0},
    ]
    assert Ledger(db).get_run(energy.run_id).settings["peak_mem_gib"] == 5.0


@pytest.mark.slow
def test_a_failing_memory_query_never_reaches_training(tmp_path, h200, monkeypatch, caplog):
    """A CUDA query that raises is a bookkeeping fault: one warning, the run flagged
    ``callback_error``, no peak keys, and the steps still recorded."""

    def broken(trainer):
        raise RuntimeError("CUDA error: injected")

    monkeypatch.setattr(energy_module, "_cuda_peak_gib", broken)
    db = tmp_path / "w.db"
    energy = EnergyCallback(ledger=db, log_metrics=False)
    with caplog.at_level("WARNING", logger="lightning_callbacks.energy"):
        trainer(tmp_path, [energy], max_epochs=2).fit(TinyModel(), loader(), loader(16))
    run = Ledger(db).get_run(energy.run_id)
    assert run.status == "finished" and run.epochs == 2
    assert "callback_error" in run.flags
    assert not PEAK_KEYS & set(run.settings) and run.settings["steps_per_epoch"] == 8
    warnings = [r.message for r in caplog.records if "peak memory failed" in r.message]
    assert warnings == [
        "wattwise: peak memory failed (RuntimeError: CUDA error: injected); training goes on"
    ]


def test_peak_figures_keep_the_larger_known_number():
    max_gib = energy_module._max_gib
    assert max_gib(None, None) is None
    assert max_gib(None, 3) == 3.0
    assert max_gib(5.0, 3.0) == 5.0 and max_gib(3.0, 5.0) == 5.0
    # no figure: nothing a corrupted checkpoint or settings value could hold
    # and with no figure yet none is made of it (against 7.0, True, 0 and -1 lose to max() even
    # unfiltered: that check alone passed without the bool and > 0 filters)
    for junk in (0, 0.0, -1.0, float("nan"), float("inf"), "30", True, [30]):
        assert max_gib(7.0, junk) == 7.0
        assert max_gib(None, junk) is None, junk


def test_every_rank_learns_the_run_peak_that_rank_0_read_back_on_resume(monkeypatch):
    """After a resume only rank 0 reads the run's ledger peak; its rank report carries the
    largest peak it knows, so the other ranks' commits raise their own figure to it."""
    fake_peaks(monkeypatch, [4.0, 4.0])  # this process's own CUDA peaks on both ranks
    rank0, rank1 = EnergyCallback(), EnergyCallback()
    rank0._note_peaks(30.0, 32.0)  # what rank 0 read from the run's settings
    trainer = SimpleNamespace(node_rank=0)
    reports = [rank0._local_report(trainer, False), rank1._local_report(trainer, False)]
    assert (reports[0].peak_mem_gib, reports[0].peak_mem_reserved_gib) == (30.0, 32.0)
    assert (reports[1].peak_mem_gib, reports[1].peak_mem_reserved_gib) == (4.0, 6.0)
    # every rank's _commit notes each gathered report's peaks (the ddp launcher test shows
    # rank 1's larger peak reaching rank 0 that way)
    for report in reports:
        rank1._note_peaks(report.peak_mem_gib, report.peak_mem_reserved_gib)
    assert (rank1.peak_mem_gib, rank1.peak_mem_reserved_gib) == (30.0, 32.0)


@pytest.mark.gpu
@pytest.mark.slow
def test_a_real_cuda_fit_records_its_peak_memory(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA")
    width = 4096  # a 4096 x 2 layer and its gradient: 64 KiB; the batch of 8 x 4096: 128 KiB
    db = tmp_path / "w.db"
    energy = EnergyCallback(ledger=db, log_metrics=False)
    fit = trainer(tmp_path, [energy], max_epochs=2, accelerator="cuda", devices=1)
    fit.fit(TinyModel(width=width), loader(64, width), loader(16, width))
    settings = Ledger(db).get_run(energy.run_id).settings
    root = fit.strategy.root_device
    assert settings["peak_mem_gib"] > 0
    # read at the fit's end; the process's peak can only have grown since
    assert settings["peak_mem_gib"] <= torch.cuda.max_memory_allocated(root) / units.BYTES_PER_GIB
    assert settings["peak_mem_reserved_gib"] >= settings["peak_mem_gib"]
    assert settings["peak_mem_gib"] * units.BYTES_PER_GIB >= width * 2 * 4  # at least the weights
    assert settings["steps_per_epoch"] == 8


def test_cuda_peak_is_none_on_a_cpu_trainer():
    cpu = type("S", (), {"root_device": torch.device("cpu")})()
    assert energy_module._cuda_peak_gib(type("T", (), {"strategy": cpu})()) is None


def test_epoch_shape_by_hand():
    def shape(batches, accumulate):
        t = type("T", (), {"num_training_batches": batches, "accumulate_grad_batches": accumulate})
        return energy_module._epoch_shape(t())

    assert shape(10, 3) == {"batches_per_epoch": 10, "steps_per_epoch": 4}
    assert shape(9, 3) == {"batches_per_epoch": 9, "steps_per_epoch": 3}
    assert shape(7, 1) == {"batches_per_epoch": 7, "steps_per_epoch": 7}
    assert shape(2, 8) == {"batches_per_epoch": 2, "steps_per_epoch": 1}
    for unknown in (float("inf"), 0, float("nan")):
        assert shape(unknown, 1) == {}
