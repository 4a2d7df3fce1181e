"""EnergyCallback on real Lightning fits (tiny models, CPU), the GPU replayed from the H200 trace.

The other callback test files import the helpers defined here (TinyModel, loaders, fit, ...).
"""

from __future__ import annotations

import csv
import itertools
import logging
import math
import pathlib
import signal
import threading
import time

import pytest
import pytorch_lightning as pl
import torch
from fakes import FakeSensor
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_callbacks import EnergyCallback
from wattwise.errors import BadInput, LedgerFormatError, UnknownRegion
from wattwise.integrate import integrate_phases
from wattwise.ledger import Ledger
from wattwise.units import J_PER_WH

TRACE = "h200-lightning-fit-50hz.csv"


class TinyModel(pl.LightningModule):
    """8 -> 2 linear classifier; ``fail_at_epoch`` raises in training_step of that epoch."""

    def __init__(
        self, fail_at_epoch: int | None = None, width: int = 8, step_s: float = 0.0
    ) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(width, 2)
        self.fail_at_epoch = fail_at_epoch
        self.step_s = step_s  # a floor on each training step's time, for fits of known length

    def training_step(self, batch, batch_idx):
        if self.current_epoch == self.fail_at_epoch:
            raise RuntimeError("boom in training_step")
        time.sleep(self.step_s)
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.layer(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.layer(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", torch.nn.functional.cross_entropy(self.layer(x), y))

    def predict_step(self, batch, batch_idx):
        return self.layer(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n: int = 64, width: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, width, generator=generator), torch.randint(0, 2, (n,)))
    return DataLoader(data, batch_size=8)


def trainer(tmp_path: pathlib.Path, callbacks: list, **kwargs) -> pl.Trainer:
    options = {
        "max_epochs": 2,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": any(isinstance(c, ModelCheckpoint) for c in callbacks),
        "default_root_dir": tmp_path,
        "num_sanity_val_steps": 1,
    }
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


@pytest.fixture
def replay(monkeypatch: pytest.MonkeyPatch, nvml_fixtures: pathlib.Path) -> list:
    """Replay the real H200 trace; returns the list of replay sensors opened (to read t_open)."""
    from wattwise.sensors.replay import ReplayNvmlSensor

    monkeypatch.setenv("WATTWISE_REPLAY_NVML", str(nvml_fixtures / TRACE))
    opened: list = []
    real_open = ReplayNvmlSensor.open

    def recording_open(self):
        opened.append(self)
        return real_open(self)

    monkeypatch.setattr(ReplayNvmlSensor, "open", recording_open)
    return opened


def use_sensors(monkeypatch: pytest.MonkeyPatch, make_sensors) -> None:
    """Make the callback's Meter read ``make_sensors()`` instead of discovering devices."""
    import wattwise.meter as meter_module

    real = meter_module.Meter

    class SensorMeter(real):
        def __init__(self, *args, **kwargs):
            kwargs["sensors"] = make_sensors()
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(meter_module, "Meter", SensorMeter)


class Stamps(pl.Callback):
    """Monotonic stamps of each setup and teardown. One listed before the EnergyCallback and
    one after bracket what the callback does in its own setup (start the meter: the first
    boundary, then the start of the measured time) and teardown (the end of the measured
    time, then the meter's last boundary), however long a loaded machine makes those take."""

    def __init__(self) -> None:
        self.setup_s: list[float] = []
        self.teardown_s: list[float] = []

    def setup(self, trainer, pl_module, stage):
        self.setup_s.append(time.monotonic())

    def teardown(self, trainer, pl_module, stage):
        self.teardown_s.append(time.monotonic())


def assert_duration_is_the_phase_span(duration_s: float, rows: list[dict], before, after):
    """The callback's duration of its last call is the span its phases cover, but for the time
    its own setup and teardown took around the two (bracketed by the ``Stamps`` before and
    after it): the phases start before the measured time starts and end after it ends."""
    first, last = min(r["start_s"] for r in rows), max(r["end_s"] for r in rows)
    assert before.setup_s[-1] <= first and last <= after.teardown_s[-1]
    slack_s = (after.setup_s[-1] - before.setup_s[-1]) + (
        after.teardown_s[-1] - before.teardown_s[-1]
    )
    assert duration_s <= last - first <= duration_s + slack_s


def shipped(location) -> Ledger:
    """The ledger at ``location``, a server's spool shipped first (so reads come from the
    server itself, not from the spool)."""
    book = Ledger(location)
    book.sync()
    assert book.waiting_runs() == []
    return book


def phase_rows(ledger: Ledger, run_id: str) -> list[dict]:
    return ledger.phases(run_id).to_dict("records")


def assert_tiled(rows: list[dict]) -> None:
    """Per device, phases follow each other with no gap and no overlap."""
    for device_id in {r["device_id"] for r in rows}:
        mine = sorted((r for r in rows if r["device_id"] == device_id), key=lambda r: r["start_s"])
        for before, after in itertools.pairwise(mine):
            assert after["start_s"] == pytest.approx(before["end_s"], abs=1e-6), device_id


def trace_energy_j(sensor, t0_s: float, t1_s: float) -> float:
    """The GPU energy of the replayed trace over [t0_s, t1_s] (sampler clock), worked out from
    the trace's instant power rows (rectangles of 20 ms), independently of wattwise.integrate."""
    trace = sensor.trace
    rel0 = trace.t_s[0] + t0_s - sensor.t_open_s
    rel1 = trace.t_s[0] + t1_s - sensor.t_open_s
    power = trace.best_power_w
    total = 0.0
    for i, t in enumerate(trace.t_s):
        nxt = trace.t_s[i + 1] if i + 1 < len(trace.t_s) else math.inf
        lo, hi = max(t, rel0), min(nxt, rel1)
        if hi > lo:
            total += power[i] * (hi - lo)
    return total


# --------------------------------------------------------------------- the fit and its phases
@pytest.mark.slow
def test_phases_tile_the_fit_and_add_up_to_its_total(tmp_path, replay):
    cb = EnergyCallback(ledger=tmp_path / "w.db")
    before, after = Stamps(), Stamps()
    started = time.monotonic()
    # about 4 s, so that what one 0.1 s counter update can leave unresolved at the two ends of
    # the fit (and scheduling jitter on a busy machine) stays well under 1% (the replayed GPU
    # idles until 8.8 s into the trace)
    model = TinyModel(step_s=0.15)
    trainer(tmp_path, [before, cb, after], max_epochs=3).fit(model, loader(), loader(32))
    ended = time.monotonic()

    ledger = Ledger(tmp_path / "w.db")
    run = ledger.get_run(cb.run_id)
    rows = phase_rows(ledger, cb.run_id)
    assert run.status == "finished" and run.epochs == 3 and cb.epochs_completed == 3
    assert {r["stage"] for r in rows} == {"other", "sanity_check", "train", "validate"}
    assert sorted({r["epoch"] for r in rows if not pd_isna(r["epoch"])}) == [0, 1, 2]
    assert_tiled(rows)
    (gpu,) = [d for d in {r["device_id"] for r in rows} if d.startswith("gpu:")]
    gpu_rows = [r for r in rows if r["device_id"] == gpu]
    first, last = min(r["start_s"] for r in gpu_rows), max(r["end_s"] for r in gpu_rows)
    assert started <= first and last <= ended
    # The phases cover the fit: set-up (after Trainer.fit was called) to teardown.
    assert_duration_is_the_phase_span(cb.summary["duration_s"], rows, before, after)
    # Sum of the GPU phases == the whole fit integrated as one phase from every row of the
    # trace, within 1%; and the trace's own power over the fit within what the counter's
    # 0.1 s update period leaves unresolved at each end.
    (sensor,) = replay
    gpu_j = sum(r["energy_j"] for r in gpu_rows)
    samples = sensor.trace.samples(gpu, offset_s=sensor.t_open_s - sensor.trace.t_s[0])
    (whole,) = integrate_phases(samples, [sensor.info], [("fit", first)], end_s=last)
    peak_w = max(p.power_w for p in samples if first - 1 <= p.t_s <= last + 1)
    # within 1%, or within one counter update at peak power: a 5 s fit at 120 W is 600 J, and
    # one 0.1 s update (12 J, 2%) is as fine as the live counter can place the fit's two ends
    assert gpu_j == pytest.approx(
        whole.energy_j, rel=0.01, abs=sensor.info.update_period_s * peak_w
    )
    resolution_j = 2 * sensor.info.update_period_s * peak_w
    assert gpu_j == pytest.approx(trace_energy_j(sensor, first, last), abs=resolution_j)
    # Ledger, callback and summary agree; per-kind totals add up.
    assert run.energy_j == pytest.approx(sum(r["energy_j"] for r in rows), rel=1e-9)
    assert cb.energy_j == pytest.approx(run.energy_j, rel=1e-9)
    assert cb.summary["energy_wh"] == pytest.approx(run.energy_j / J_PER_WH)
    assert cb.summary["energy_by_kind_wh"]["gpu"] == pytest.approx(gpu_j / J_PER_WH)
    assert sum(cb.summary["energy_by_kind_wh"].values()) == pytest.approx(cb.summary["energy_wh"])
    assert len(cb.epoch_energy_j) == len(cb.epoch_duration_s) == 3
    assert 0 < sum(cb.epoch_energy_j) < cb.energy_j  # epochs exclude set-up and the tail


def pd_isna(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == "<NA>"


@pytest.mark.slow
def test_square_wave_power_is_attributed_exactly(tmp_path, monkeypatch):
    """A scripted GPU stepping through 100, 300 and 200 W every 0.25 s, sampled at 100 Hz: the
    whole fit (~2 s) matches the exact integral of the schedule within 1%, each phase within
    what a late sample can misplace at its two ends."""
    t0 = time.monotonic()
    schedule = [(t0 + 0.25 * i, (100.0, 300.0, 200.0)[i % 3]) for i in range(2000)]
    sensors: list[FakeSensor] = []

    def make():
        sensors.append(FakeSensor(schedule, counter_period_s=0.0))
        return sensors[-1:]

    use_sensors(monkeypatch, make)
    cb = EnergyCallback(ledger=tmp_path / "w.db", sample_hz=100)
    model = TinyModel(step_s=0.1)
    trainer(tmp_path, [cb], max_epochs=2).fit(model, loader(), loader(32))
    rows = phase_rows(Ledger(tmp_path / "w.db"), cb.run_id)
    assert_tiled(rows)
    (fake,) = sensors
    first, last = min(r["start_s"] for r in rows), max(r["end_s"] for r in rows)
    assert last - first > 1.6
    exact_j = fake.energy_between(first, last)
    assert sum(r["energy_j"] for r in rows) == pytest.approx(exact_j, rel=0.01)
    assert cb.energy_j == pytest.approx(exact_j, rel=0.01)
    for row in rows:  # a step of 200 W with the next sample up to 50 ms late, at each end
        exact = fake.energy_between(row["start_s"], row["end_s"])
        assert row["energy_j"] == pytest.approx(exact, abs=2 * 200.0 * 0.05)


@pytest.mark.slow
def test_run_record_snapshots_metrics_and_summary(tmp_path, ledger_location, replay, caplog):
    cb = EnergyCallback(ledger=ledger_location, tags=("t1",))
    fit = trainer(tmp_path, [cb], max_epochs=2)
    with caplog.at_level(logging.INFO):
        fit.fit(TinyModel(width=8), loader(), loader(32))
    (shown,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("wattwise run")]
    assert cb.run_id in shown and "2 epochs" in shown and "Wh" in shown
    ledger = shipped(ledger_location)
    run = ledger.get_run(cb.run_id)
    assert run.architecture == "TinyModel" and run.tags == ["t1"]
    assert run.metrics["val_loss"] == pytest.approx(float(fit.callback_metrics["val_loss"]))
    assert not any(name.startswith("energy/") for name in run.metrics)
    assert run.settings["sample_hz"] == 10 and run.settings["stage"] == "fit"
    assert {d["kind"] for d in run.devices} == {"gpu", "cpu", "ram"}
    snapshots = ledger.snapshots(cb.run_id).to_dict("records")
    assert [s["epoch"] for s in snapshots] == [0, 1]
    assert all(s["trainable_params"] == 8 * 2 + 2 == s["total_params"] for s in snapshots)
    assert all(s["model_class"] == "TinyModel" and s["label"] == "TinyModel" for s in snapshots)
    summary = cb.summary
    assert summary["run_id"] == cb.run_id and summary["epochs"] == 2
    assert summary["architecture"] == "TinyModel"
    assert summary["co2e_kg"] > 0 and "no_region" in summary["flags"]
    assert set(summary["methods"].values()) <= {"counter", "power", "rapl", "estimate"}


@pytest.mark.slow
def test_test_after_fit_adds_rows_to_the_same_run_and_alone_makes_its_own(
    tmp_path, ledger_location, replay
):
    cb = EnergyCallback(ledger=ledger_location)
    fit = trainer(tmp_path, [cb], max_epochs=1)
    model = TinyModel()
    fit.fit(model, loader(), loader(32))
    energy_after_fit = cb.energy_j
    fit.test(model, loader(32))
    ledger = shipped(ledger_location)
    assert len(ledger.list_runs()) == 1
    run = ledger.get_run(cb.run_id)
    test_rows = [r for r in phase_rows(ledger, cb.run_id) if r["stage"] == "test"]
    assert test_rows and all(pd_isna(r["epoch"]) for r in test_rows)
    assert run.status == "finished" and run.epochs == 1
    assert "test_loss" in run.metrics and "val_loss" in run.metrics
    assert cb.energy_j > energy_after_fit
    assert run.energy_j == pytest.approx(cb.energy_j, rel=1e-9)

    alone = EnergyCallback(ledger=ledger_location)
    trainer(tmp_path, [alone]).test(TinyModel(), loader(32))
    assert alone.run_id != cb.run_id and len(ledger.list_runs()) == 2
    other = ledger.get_run(alone.run_id)
    assert other.epochs == 0 and other.settings["stage"] == "test"
    assert {r["stage"] for r in phase_rows(ledger, alone.run_id)} == {"other", "test"}


# --------------------------------------------------------------------- metrics to loggers
@pytest.mark.slow
def test_csv_logger_gets_the_cumulative_energy_columns(tmp_path, replay):
    from pytorch_lightning.loggers import CSVLogger

    logger = CSVLogger(tmp_path / "logs", name="run")
    cb = EnergyCallback(ledger=tmp_path / "w.db", region="FRA", pricing="aws:p5.48xlarge")
    fit = trainer(tmp_path, [cb], max_epochs=3, logger=logger)
    fit.fit(TinyModel(step_s=0.04), loader(), loader(32))  # epochs of >= 0.32 s
    with open(pathlib.Path(logger.log_dir) / "metrics.csv") as fh:
        table = [row for row in csv.DictReader(fh) if row.get("energy/total_wh")]
    wanted = {
        "energy/gpu_wh",
        "energy/cpu_wh",
        "energy/ram_wh",
        "energy/total_wh",
        "power/gpu_w",
        "cost/usd",
        "carbon/gco2e",
    }
    assert wanted <= set(table[0])
    assert len(table) == 3
    totals = [float(r["energy/total_wh"]) for r in table]
    assert totals == sorted(totals) and totals[0] > 0  # cumulative
    # Epoch k's logged total == everything in the ledger up to the end of epoch k, to within
    # one counter update (0.1 s x ~120 W): it is logged at the epoch end, before the counter's
    # next update settles the epoch's last phase (the ledger row is settled later, in place).
    rows = phase_rows(Ledger(tmp_path / "w.db"), cb.run_id)
    assert not any("provisional" in r["flags"] for r in rows)
    for k, total in enumerate(totals):
        upto = sum(r["energy_j"] for r in rows if not pd_isna(r["epoch"]) and r["epoch"] <= k)
        assert total == pytest.approx(upto / J_PER_WH, abs=12.0 / J_PER_WH)
        parts = sum(float(table[k][f"energy/{kind}_wh"]) for kind in ("gpu", "cpu", "ram"))
        assert parts == pytest.approx(total, rel=1e-5)
    # mean GPU power of an epoch = its GPU energy / its duration. The replayed H200 draws
    # 119.6-119.7 W (power_mW) in the trace's first 3 s; a counter anchor caught late by a busy
    # sampler may move one counter update (0.1 s x 120 W = 12 J) across each end of the epoch.
    by_epoch: dict[int, list[dict]] = {}
    for r in rows:
        if not pd_isna(r["epoch"]) and r["kind"] == "gpu":
            by_epoch.setdefault(int(r["epoch"]), []).append(r)
    for k, row in enumerate(table):
        mine = by_epoch[k]
        duration_s = max(r["end_s"] for r in mine) - min(r["start_s"] for r in mine)
        assert duration_s >= 0.3
        mean_w = float(row["power/gpu_w"])
        gpu_j = sum(r["energy_j"] for r in mine)
        # logged at the epoch end with the provisional figures; the ledger holds them settled
        assert mean_w == pytest.approx(gpu_j / duration_s, abs=12.0 / duration_s), k
        slack_w = 2 * 12.0 / duration_s
        assert 119.6 - slack_w < mean_w < 119.7 + slack_w, k
    # carbon in grams = kWh x PUE x intensity (FRA); checked against carbon's own numbers
    from wattwise import carbon

    pue = carbon.pue("aws:p5.48xlarge").value
    g = carbon.intensity("FRA").gco2e_per_kwh
    last_total_kwh = totals[-1] / 1000.0
    assert float(table[-1]["carbon/gco2e"]) == pytest.approx(last_total_kwh * pue * g, rel=1e-4)
    assert float(table[-1]["cost/usd"]) > 0
    assert "energy/total_wh" in fit.progress_bar_metrics


@pytest.mark.slow
def test_log_metrics_false_logs_nothing(tmp_path, replay):
    cb = EnergyCallback(ledger=tmp_path / "w.db", log_metrics=False)
    fit = trainer(tmp_path, [cb], max_epochs=1)
    fit.fit(TinyModel(), loader(), loader(32))
    assert not [name for name in fit.callback_metrics if "/" in name]
    assert cb.energy_j > 0


# --------------------------------------------------------------------- failures
@pytest.mark.slow
def test_exception_in_training_step_leaves_a_failed_run_with_its_completed_epochs(tmp_path, replay):
    cb = EnergyCallback(ledger=tmp_path / "w.db")
    with pytest.raises(RuntimeError, match="boom"):
        trainer(tmp_path, [cb], max_epochs=5).fit(TinyModel(fail_at_epoch=2), loader(), loader(32))
    ledger = Ledger(tmp_path / "w.db")
    run = ledger.get_run(cb.run_id)
    assert run.status == "failed" and run.epochs == 2
    assert "boom in training_step" in run.reason
    rows = phase_rows(ledger, cb.run_id)
    assert sorted({int(r["epoch"]) for r in rows if not pd_isna(r["epoch"])}) == [0, 1]
    # what was measured after the last completed epoch is kept too (epoch None)
    assert any(pd_isna(r["epoch"]) for r in rows)
    assert run.energy_j == pytest.approx(cb.energy_j, rel=1e-9)


class Interrupting(TinyModel):
    def training_step(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise KeyboardInterrupt
        return super().training_step(batch, batch_idx)


@pytest.mark.slow
def test_keyboard_interrupt_marks_the_run_interrupted(tmp_path, replay):
    cb = EnergyCallback(ledger=tmp_path / "w.db")
    sigint = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT while it shuts down
    try:
        with pytest.raises(SystemExit):
            trainer(tmp_path, [cb], max_epochs=3).fit(Interrupting(), loader(), loader(32))
    finally:
        signal.signal(signal.SIGINT, sigint)
    run = Ledger(tmp_path / "w.db").get_run(cb.run_id)
    assert run.status == "interrupted" and run.epochs == 1
    assert run.reason == "KeyboardInterrupt"  # Ctrl+C carries no message: no dangling ": "
    assert run.energy_j == pytest.approx(cb.energy_j, rel=1e-9) and cb._meter is None


@pytest.mark.slow
def test_failing_sensor_and_ledger_never_reach_training(tmp_path, monkeypatch, caplog):
    now = time.monotonic()
    use_sensors(monkeypatch, lambda: [FakeSensor(200.0, raise_from_s=now + 0.3)])
    cb = EnergyCallback(ledger=tmp_path / "w.db")
    real_add = Ledger.add_phases
    calls = []

    def flaky_add(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_add(self, *args, **kwargs)

    monkeypatch.setattr(Ledger, "add_phases", flaky_add)
    with caplog.at_level(logging.WARNING):
        model = TinyModel(step_s=0.05)  # the sensor fails in the first of three 0.4 s epochs
        trainer(tmp_path, [cb], max_epochs=3).fit(model, loader(), loader(32))
    assert cb.epochs_completed == 3
    assert {"callback_error", "sensor_lost"} <= set(cb.summary["flags"])
    disk = [r for r in caplog.records if "disk full" in r.getMessage()]
    assert len(disk) == 1  # warned once
    run = Ledger(tmp_path / "w.db").get_run(cb.run_id)
    assert run.status == "finished" and run.epochs == 3
    assert "callback_error" in run.flags  # rows written after the failure say so


def test_a_sensor_that_fails_to_open_is_skipped_not_raised(tmp_path, monkeypatch):
    from wattwise.errors import SensorPermissionError

    use_sensors(
        monkeypatch,
        lambda: [
            FakeSensor(80.0),
            FakeSensor(
                1.0, device_id="cpu:package-0", kind="cpu", open_error=SensorPermissionError("x")
            ),
        ],
    )
    cb = EnergyCallback(ledger=tmp_path / "w.db")
    trainer(tmp_path, [cb], max_epochs=1).fit(TinyModel(), loader(), loader(32))
    assert list(cb.summary["methods"]) == ["gpu:GPU-00000000-0000-0000-0000-000000000000"]
    assert cb.energy_by_kind_j["cpu"] == 0 and cb.energy_by_kind_j["gpu"] > 0


# --------------------------------------------------------------------- arguments and set-up
@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"sample_hz": 0}, BadInput, "sample_hz=0"),
        ({"sample_hz": "fast"}, BadInput, "'fast'"),
        ({"cpu_mode": "cores"}, BadInput, "machine, process"),
        ({"baseline": "warm"}, BadInput, "'idle'"),
        ({"tags": "one"}, BadInput, "tags='one'"),
        ({"ledger": 42}, BadInput, "ledger=42"),
        ({"architecture": ""}, BadInput, "architecture=''"),
        ({"parent": "missing/run.ckpt"}, BadInput, "missing/run.ckpt"),
        ({"region": "ATLANTIS"}, UnknownRegion, "ATLANTIS"),
        ({"pricing": "aws:nope"}, BadInput, "aws:nope"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, named):
    with pytest.raises(error) as info:
        EnergyCallback(**kwargs)
    assert named in str(info.value)


def test_construction_is_light_and_needs_no_device():
    # this thread's CPU time, not the wall time, which a loaded machine stretches at will
    threads = set(threading.enumerate())
    started = time.thread_time()
    cb = EnergyCallback()
    assert time.thread_time() - started < 0.1
    assert set(threading.enumerate()) <= threads  # no thread started (no sampler)
    assert cb.run_id is None and cb.energy_j == 0 and cb.epochs_completed == 0
    assert cb.summary == {} and cb._meter is None


def test_a_file_that_is_not_a_ledger_fails_at_setup_and_is_untouched(tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"my precious notes, not a database")
    cb = EnergyCallback(ledger=path)
    with pytest.raises(LedgerFormatError):
        trainer(tmp_path, [cb], max_epochs=1).fit(TinyModel(), loader(), loader(32))
    assert path.read_bytes() == b"my precious notes, not a database"


def test_state_key_distinguishes_configurations():
    a = EnergyCallback(ledger="a.db", architecture="x")
    assert a.state_key == EnergyCallback(ledger="a.db", architecture="x").state_key
    assert a.state_key != EnergyCallback(ledger="b.db", architecture="x").state_key
    assert a.state_key != EnergyCallback(ledger="a.db", architecture="y").state_key


@pytest.mark.slow
def test_idle_baseline_reports_energy_above_idle(tmp_path, replay):
    cb = EnergyCallback(ledger=tmp_path / "w.db", baseline="idle")
    before, after = Stamps(), Stamps()
    trainer(tmp_path, [before, cb, after], max_epochs=1).fit(TinyModel(), loader(), loader(32))
    ledger = Ledger(tmp_path / "w.db")
    run = ledger.get_run(cb.run_id)
    rows = phase_rows(ledger, cb.run_id)
    baseline = [r for r in rows if r["stage"] == "baseline"]
    # one second of idle, measured inside the callback's setup (a fixed band around 1 s broke
    # when a loaded machine woke the sleep late)
    in_setup_s = after.setup_s[-1] - before.setup_s[-1]
    assert baseline and all(1.0 <= r["duration_s"] <= in_setup_s for r in baseline)
    idle = run.settings["idle_power_w"]
    assert set(idle) == {r["device_id"] for r in rows}
    for row in baseline:
        assert idle[row["device_id"]] == pytest.approx(row["energy_j"] / row["duration_s"])
    above_wh = cb.summary["energy_above_idle_wh"]
    assert 0 <= above_wh < cb.summary["energy_wh"]
    assert run.metrics["wattwise/energy_above_idle_wh"] == pytest.approx(above_wh)
    assert "idle_baseline" in cb.summary["flags"]
    # energy above idle: each phase's energy minus idle power x its duration (never below 0)
    expected = sum(max(0.0, r["energy_j"] - idle[r["device_id"]] * r["duration_s"]) for r in rows)
    assert above_wh * J_PER_WH == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.slow
def test_idle_baseline_of_a_fit_that_fails_in_its_first_epoch_is_counted_once(tmp_path, replay):
    """The baseline phases are collected before the first epoch; with no epoch committed they
    are counted at teardown, from the meter's stop(), once (not also as pending ones)."""
    cb = EnergyCallback(ledger=tmp_path / "w.db", baseline="idle")
    with pytest.raises(RuntimeError, match="boom"):
        trainer(tmp_path, [cb], max_epochs=2).fit(TinyModel(fail_at_epoch=0), loader(), loader(32))
    ledger = Ledger(tmp_path / "w.db")
    run = ledger.get_run(cb.run_id)
    rows = phase_rows(ledger, cb.run_id)
    assert run.status == "failed" and run.epochs == 0 and cb.epochs_completed == 0
    baseline = [r for r in rows if r["stage"] == "baseline"]
    assert baseline and len(baseline) == len({r["device_id"] for r in baseline})
    assert_tiled(rows)
    assert cb.energy_j == pytest.approx(sum(r["energy_j"] for r in rows), rel=1e-9)
    assert run.energy_j == pytest.approx(cb.energy_j, rel=1e-9)


@pytest.mark.slow
def test_works_with_the_lightning_namespace(tmp_path, replay):
    import lightning.pytorch as lightning

    class Model(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(8, 2)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    cb = EnergyCallback(ledger=tmp_path / "w.db")
    fit = lightning.Trainer(
        max_epochs=2,
        accelerator="cpu",
        callbacks=[cb],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    fit.fit(Model(), loader())
    run = Ledger(tmp_path / "w.db").get_run(cb.run_id)
    assert run.epochs == 2 and run.architecture == "Model" and run.energy_j > 0
    assert "energy/total_wh" in fit.callback_metrics


class MarkRecorder:
    def __init__(self) -> None:
        self.labels: list[str] = []

    def mark(self, label: str) -> None:
        self.labels.append(label)


class CudaTrainer:
    """What the boundary hooks read from a trainer on a CUDA device."""

    sanity_checking = False

    class strategy:  # mimics trainer.strategy
        root_device = torch.device("cuda", 0)


def test_sync_cuda_synchronises_at_stage_boundaries_only_never_per_step(monkeypatch):
    synced: list = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    cb = EnergyCallback(sync_cuda=True)
    cb._meter, cb._stage = MarkRecorder(), "fit"
    fit = CudaTrainer()
    cb.on_train_epoch_start(fit, None)
    for step in range(50):
        cb.on_train_batch_start(fit, None, None, step)
    cb.on_validation_start(fit, None)
    cb.on_validation_end(fit, None)
    for step in range(50, 100):  # training goes on after a mid-epoch validation
        cb.on_train_batch_start(fit, None, None, step)
    assert cb._meter.labels == ["other", "train", "validate", "other", "train"]
    assert synced == [torch.device("cuda", 0)] * 5
    synced.clear()
    plain = EnergyCallback()  # the default never synchronises
    plain._meter, plain._stage = MarkRecorder(), "fit"
    plain.on_validation_start(fit, None)
    assert synced == [] and plain._meter.labels == ["validate"]


@pytest.mark.slow
def test_hooks_never_read_a_sensor_on_the_training_thread(tmp_path, monkeypatch):
    threads: set[str] = set()

    class ThreadRecordingSensor(FakeSensor):
        def read(self, t_s, *, counter):
            threads.add(threading.current_thread().name)
            return super().read(t_s, counter=counter)

    use_sensors(monkeypatch, lambda: [ThreadRecordingSensor(150.0)])
    cb = EnergyCallback(ledger=tmp_path / "w.db")
    trainer(tmp_path, [cb], max_epochs=2).fit(TinyModel(), loader(), loader(32))
    assert cb.energy_j > 0
    assert threads == {"wattwise-sampler"}


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["validate", "predict"])
def test_validate_or_predict_alone_make_a_run_of_their_own(tmp_path, replay, stage):
    cb = EnergyCallback(ledger=tmp_path / "w.db")
    getattr(trainer(tmp_path, [cb]), stage)(TinyModel(), loader(32))
    ledger = Ledger(tmp_path / "w.db")
    (run,) = ledger.list_runs()
    assert run.run_id == cb.run_id and run.status == "finished" and run.epochs == 0
    assert {r["stage"] for r in phase_rows(ledger, cb.run_id)} == {"other", stage}
    assert run.energy_j == pytest.approx(cb.energy_j, rel=1e-9) and cb.energy_j > 0


@pytest.mark.slow
def test_mid_epoch_validation_is_its_own_stage_and_training_resumes_after(tmp_path, replay):
    cb = EnergyCallback(ledger=tmp_path / "w.db")
    trainer(tmp_path, [cb], max_epochs=2, val_check_interval=0.5).fit(
        TinyModel(), loader(), loader(32)
    )
    rows = phase_rows(Ledger(tmp_path / "w.db"), cb.run_id)
    (gpu,) = {r["device_id"] for r in rows if r["kind"] == "gpu"}
    for epoch in (0, 1):
        stages = [
            r["stage"]
            for r in sorted(rows, key=lambda r: r["start_s"])
            if r["device_id"] == gpu and r["epoch"] == epoch and r["stage"] != "other"
        ]
        body = stages[stages.index("train") :]  # epoch 0 starts with the sanity check
        assert body == ["train", "validate", "train", "validate"], epoch
    assert_tiled(rows)


class EarlyFlush(pl.Callback):
    """Like BudgetGuard: asks the EnergyCallback to count the epoch before it does so itself."""

    def __init__(self, cb: EnergyCallback) -> None:
        self.cb = cb
        self.seen: list[tuple[int, float]] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.cb.flush(trainer)
        self.cb.flush(trainer)  # idempotent
        stored = Ledger(self.cb._ledger_path).get_run(self.cb.run_id).energy_j
        self.seen.append((self.cb.epochs_completed, self.cb.energy_j, stored))


@pytest.mark.slow
def test_flush_counts_each_epoch_once_whoever_calls_it_first(tmp_path, replay):
    cb = EnergyCallback(ledger=tmp_path / "w.db")
    early = EarlyFlush(cb)
    trainer(tmp_path, [early, cb], max_epochs=3).fit(TinyModel(), loader(), loader(32))
    assert [n for n, _, _ in early.seen] == [1, 2, 3] and cb.epochs_completed == 3
    assert len(cb.epoch_energy_j) == 3
    run = Ledger(tmp_path / "w.db").get_run(cb.run_id)
    assert run.epochs == 3 and run.energy_j == pytest.approx(cb.energy_j, rel=1e-9)
    # after each early flush the callback's total is what the ledger holds, no more, no less
    # (not necessarily growing: an epoch's last phase, provisional, may settle lower later)
    for _, counted, stored in early.seen:
        assert counted == pytest.approx(stored, rel=1e-9) and counted > 0


class LrModel(TinyModel):
    """TinyModel whose learning rate Lightning's Tuner can set (``self.lr``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lr = 0.1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


@pytest.mark.slow
def test_a_tuner_call_before_the_fit_leaves_no_energy_outside_the_ledger(tmp_path, replay):
    """Regression: ``Tuner.lr_find`` runs a fit that never reaches ``on_fit_start`` (so no run
    is opened and nothing is written) and restores the trainer afterwards; its energy and time
    stayed in the callback's totals, so the summary, ``energy_j`` (what BudgetGuard reads) and
    the logged ``energy/total_wh`` of the real fit exceeded what its run holds in the ledger."""
    from pytorch_lightning.tuner import Tuner

    cb = EnergyCallback(ledger=tmp_path / "w.db")
    before, after = Stamps(), Stamps()
    fit = trainer(tmp_path, [before, cb, after], max_epochs=2, logger=False)
    model = LrModel()
    # 20 steps over 8-batch epochs: lr_find itself goes through two epoch ends
    Tuner(fit).lr_find(model, loader(), loader(32), num_training=20)
    assert cb.run_id is None  # lr_find opened no run
    fit.fit(model, loader(), loader(32))

    ledger = Ledger(tmp_path / "w.db")
    (run,) = ledger.list_runs()
    assert run.run_id == cb.run_id and run.epochs == 2 == cb.summary["epochs"]
    assert cb.energy_j == pytest.approx(run.energy_j, rel=1e-9)
    assert cb.summary["energy_wh"] == pytest.approx(run.energy_j / J_PER_WH, rel=1e-9)
    rows = phase_rows(ledger, run.run_id)
    assert_duration_is_the_phase_span(cb.summary["duration_s"], rows, before, after)
    assert len(cb.epoch_energy_j) == len(cb.epoch_train_samples) == 2


@pytest.mark.slow
def test_region_and_pricing_from_the_environment_are_recorded_with_the_run(
    tmp_path, replay, monkeypatch
):
    """Regression: with ``WATTWISE_REGION`` / ``WATTWISE_PRICING`` set while training (and no
    argument), the summary used them but the run was stored with neither, so ``wattwise
    report`` run later from another shell priced it with the world average and ``onprem``."""
    monkeypatch.setenv("WATTWISE_REGION", "FRA")
    monkeypatch.setenv("WATTWISE_PRICING", "aws:p5.48xlarge")
    cb = EnergyCallback(ledger=tmp_path / "w.db")
    trainer(tmp_path, [cb], max_epochs=1).fit(TinyModel(), loader(), loader(32))
    assert cb.summary["region"] == "FRA" and cb.summary["pricing"] == "aws:p5.48xlarge"
    run = Ledger(tmp_path / "w.db").get_run(cb.run_id)
    assert (run.region, run.pricing) == ("FRA", "aws:p5.48xlarge")

    # an argument still wins over the environment; nothing configured stays unrecorded
    monkeypatch.delenv("WATTWISE_PRICING")
    explicit = EnergyCallback(ledger=tmp_path / "w.db", region="DEU")
    trainer(tmp_path, [explicit], max_epochs=1).fit(TinyModel(), loader(), loader(32))
    other = Ledger(tmp_path / "w.db").get_run(explicit.run_id)
    assert (other.region, other.pricing) == ("DEU", None)


def test_the_printed_summary_says_no_gpu_rather_than_gpu_0():
    """Regression: on a machine without a GPU the summary read "GPU 0", like a GPU measured at
    zero; a kind with no device now says so, a measured kind shows its energy."""
    from lightning_callbacks.energy import _format_summary

    summary = {
        "run_id": "r1",
        "architecture": "mlp",
        "epochs": 2,
        "duration_s": 3.0,
        "energy_wh": 0.5,
        "energy_by_kind_wh": {"gpu": 0.0, "cpu": 0.4, "ram": 0.1},
        "cost_usd": None,
        "co2e_kg": None,
        "devices": ["cpu: Intel Xeon (estimate)", "ram: RAM (estimate)"],
        "flags": [],
    }
    text = _format_summary(summary)
    assert "(no GPU, CPU 0.4, RAM 0.1;" in text and "GPU 0" not in text
    summary["devices"].append("gpu: NVIDIA H200 (counter)")
    summary["energy_by_kind_wh"]["gpu"] = 0.0  # a GPU that was measured at zero shows as such
    assert "(GPU 0, CPU 0.4, RAM 0.1;" in _format_summary(summary)


@pytest.mark.slow
def test_a_configuration_that_cannot_be_read_still_opens_the_run(
    tmp_path, replay, monkeypatch, caplog
):
    """Reading the configuration for the run's region and pricing happens in on_fit_start: a
    wattwise.toml that cannot be read is a warning there, training goes on and the run is
    still opened (no region or pricing recorded: none was given)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wattwise.toml").write_text("pue = 'abc'\n")
    cb = EnergyCallback(ledger=tmp_path / "w.db")
    with caplog.at_level("WARNING", logger="lightning_callbacks.energy"):
        trainer(tmp_path, [cb], max_epochs=1).fit(TinyModel(), loader(), loader(32))
    warned = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("wattwise: settings failed (ConfigError") for m in warned), warned
    assert "callback_error" in cb.flags
    (run,) = Ledger(tmp_path / "w.db").list_runs()
    assert run.run_id == cb.run_id and run.epochs == 1
    assert (run.region, run.pricing) == (None, None)
    # and the run is finished: cost and CO2e, which read the configuration too, are left out
    # (a warning) instead of the whole end of the run failing and the run staying "running"
    assert run.status == "finished" and run.ended_at is not None
    assert cb.summary["cost_usd"] is None and cb.summary["co2e_kg"] is None
    assert cb.summary["energy_wh"] > 0
