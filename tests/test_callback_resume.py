"""Resume and lineage: a fit restored from a checkpoint continues its run; a new fit started from
another run's checkpoint records that run as its parent. Real fits, the H200 trace replayed."""

from __future__ import annotations

import pathlib
import time

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from test_callback import TinyModel, loader, pd_isna, phase_rows, replay, trainer  # noqa: F401

from lightning_callbacks import BudgetGuard, EnergyCallback
from lightning_callbacks.energy import CHECKPOINT_STAMP
from wattwise.ledger import Ledger

pytestmark = pytest.mark.slow

MISSING_CALLBACK_STATE = "callbacks used to create the checkpoint need to be provided"


STEP_S = 0.1


def checkpointing(tmp_path: pathlib.Path) -> ModelCheckpoint:
    return ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)


def row_keys(rows: list[dict]) -> set[tuple]:
    return {(r["device_id"], r["start_s"], r["stage"]) for r in rows}


def test_resume_from_a_mid_fit_checkpoint_continues_the_same_run(tmp_path, replay):  # noqa: F811
    db = tmp_path / "w.db"
    # The uninterrupted fit, for comparison.
    whole = EnergyCallback(ledger=tmp_path / "whole.db")
    # steps of at least 0.1 s: fits of ~4 s, so that the counter's 0.1 s update steps at the two
    # ends of each measured span stay small against what is compared below
    trainer(tmp_path, [whole], max_epochs=4).fit(TinyModel(step_s=STEP_S), loader(), loader(32))

    # The same fit stopped after 2 epochs (the process ends), then resumed to 4.
    first = EnergyCallback(ledger=db)
    trainer(tmp_path, [first, checkpointing(tmp_path)], max_epochs=2).fit(
        TinyModel(step_s=STEP_S), loader(), loader(32)
    )
    ledger = Ledger(db)
    after_first = ledger.get_run(first.run_id)
    rows_first = phase_rows(ledger, first.run_id)
    ckpt = tmp_path / "ckpt" / "epoch=1-step=16.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved[CHECKPOINT_STAMP] == first.run_id
    state = saved["callbacks"][first.state_key]
    assert state["run_id"] == first.run_id and state["epochs_completed"] == 2
    # saved right after the epoch end, before the counter's next update settled the epoch's last
    # phase: the state holds it provisional (and says so); the ledger row was settled later
    assert state["epoch_energy_j"] == pytest.approx(first.epoch_energy_j, abs=0.1 * 200.0)
    assert state["provisional"] and all(row[0] == 1 for row in state["provisional"])

    second = EnergyCallback(ledger=db)  # a fresh callback, as in a new process
    trainer(tmp_path, [second, checkpointing(tmp_path)], max_epochs=4).fit(
        TinyModel(step_s=STEP_S), loader(), loader(32), ckpt_path=ckpt
    )
    run = ledger.get_run(second.run_id)
    assert second.run_id == first.run_id and len(ledger.list_runs()) == 1
    assert run.status == "finished" and run.epochs == 4 and second.epochs_completed == 4
    assert run.parent_run_id is None
    # Epochs 0-1 carried over unchanged, 2-3 measured by the second process.
    assert len(second.epoch_energy_j) == 4
    assert second.epoch_energy_j[:2] == pytest.approx(first.epoch_energy_j)
    # No loss, no double count: the callback's total is the first process's recorded total
    # (including what it measured after its last checkpoint) plus the rows the second one added.
    rows = phase_rows(ledger, second.run_id)
    added = [
        r for r in rows if (r["device_id"], r["start_s"], r["stage"]) not in row_keys(rows_first)
    ]
    assert len(rows) == len(rows_first) + len(added)
    assert second.energy_j == pytest.approx(
        after_first.energy_j + sum(r["energy_j"] for r in added), rel=1e-9
    )
    assert run.energy_j == pytest.approx(second.energy_j, rel=1e-9)
    assert sorted({int(r["epoch"]) for r in added if not pd_isna(r["epoch"])}) == [2, 3]
    # Same totals as the uninterrupted fit for the same work: on this busy machine the time a
    # fit takes varies, so compare energy per measured second. The replayed H200 idles at
    # ~120 W in the first seconds of its trace; a double count of the first half would show
    # as ~1.5x that.
    whole_rows = phase_rows(Ledger(tmp_path / "whole.db"), whole.run_id)
    assert gpu_power_w(rows) == pytest.approx(gpu_power_w(whole_rows), rel=0.05)
    assert 100 < gpu_power_w(rows) < 140


def gpu_power_w(rows: list[dict]) -> float:
    gpu = [r for r in rows if r["kind"] == "gpu"]
    return sum(r["energy_j"] for r in gpu) / sum(r["duration_s"] for r in gpu)


def test_resume_with_a_ledger_that_lacks_the_run_records_it_under_the_same_id(
    tmp_path,
    replay,  # noqa: F811
):
    first = EnergyCallback(ledger=tmp_path / "a.db")
    trainer(tmp_path, [first, checkpointing(tmp_path)], max_epochs=1).fit(
        TinyModel(), loader(), loader(32)
    )
    ckpt = tmp_path / "ckpt" / "epoch=0-step=8.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["callbacks"][first.state_key]
    Ledger(tmp_path / "a.db").remove(first.run_id)  # e.g. a fresh ledger on another machine
    second = EnergyCallback(ledger=tmp_path / "a.db")
    trainer(tmp_path, [second, checkpointing(tmp_path)], max_epochs=2).fit(
        TinyModel(), loader(), loader(32), ckpt_path=ckpt
    )
    again = Ledger(tmp_path / "a.db").get_run(first.run_id)
    assert again.epochs == 2 and again.status == "finished" and second.epochs_completed == 2
    # the first epoch comes from the checkpoint's state (its last phase provisional: no ledger
    # row is left to settle it from), the second was measured now
    assert second.epoch_energy_j[0] == pytest.approx(saved["epoch_energy_j"][0])
    assert second.epoch_energy_j[0] == pytest.approx(first.epoch_energy_j[0], abs=0.1 * 200.0)
    carried_j = sum(saved["energy_by_kind_j"].values())
    assert second.energy_j == pytest.approx(carried_j + again.energy_j, rel=1e-9)


def test_a_new_fit_from_another_runs_checkpoint_records_its_parent(tmp_path, replay):  # noqa: F811
    db = tmp_path / "w.db"
    parent = EnergyCallback(ledger=db, architecture="base")
    trainer(tmp_path, [parent, checkpointing(tmp_path)], max_epochs=1).fit(
        TinyModel(), loader(), loader(32)
    )
    ckpt = tmp_path / "ckpt" / "epoch=0-step=8.ckpt"

    # Fine-tuning from the checkpoint with a differently configured callback (no state of its
    # own in the checkpoint): a new run, whose parent is the stamped run.
    child = EnergyCallback(ledger=db, architecture="finetune")
    with pytest.warns(UserWarning, match=MISSING_CALLBACK_STATE):
        trainer(tmp_path, [child], max_epochs=2).fit(
            TinyModel(), loader(), loader(32), ckpt_path=ckpt
        )
    ledger = Ledger(db)
    record = ledger.get_run(child.run_id)
    assert child.run_id != parent.run_id
    assert record.parent_run_id == parent.run_id and record.architecture == "finetune"
    assert record.epochs == 1 and child.epochs_completed == 1  # its own epochs only
    assert ledger.ancestors(child.run_id) == [parent.run_id]

    # Weights loaded by hand: the parent given as the checkpoint path, or as a run id.
    by_path = EnergyCallback(ledger=db, parent=ckpt)
    trainer(tmp_path, [by_path], max_epochs=1).fit(TinyModel(), loader(), loader(32))
    assert ledger.get_run(by_path.run_id).parent_run_id == parent.run_id
    by_id = EnergyCallback(ledger=db, parent=child.run_id)
    trainer(tmp_path, [by_id], max_epochs=1).fit(TinyModel(), loader(), loader(32))
    assert ledger.ancestors(by_id.run_id) == [child.run_id, parent.run_id]


def test_a_callback_reused_for_a_new_fit_records_a_new_run(tmp_path, replay):  # noqa: F811
    """Regression (issue 14, item 5): a second fit with the same callback (a new Trainer, no
    ckpt_path) continued the first run (one run, 6 epochs). A new fit is a new run; a fit
    resumed from a checkpoint holding this callback's state stays that run; test() after a fit
    adds to that fit's run."""
    db = tmp_path / "w.db"
    cb = EnergyCallback(ledger=db)
    model = TinyModel()
    trainer(tmp_path, [cb], max_epochs=3).fit(model, loader(), loader(32))
    first = cb.run_id
    ledger = Ledger(db)

    # the same module trained further: a new run, descended from the first (its weights)
    again = trainer(tmp_path, [cb, checkpointing(tmp_path)], max_epochs=3)
    again.fit(model, loader(), loader(32))
    second = cb.run_id
    assert second != first and len(ledger.list_runs()) == 2
    runs = {first: ledger.get_run(first), second: ledger.get_run(second)}
    assert [runs[first].epochs, runs[second].epochs] == [3, 3]
    assert cb.epochs_completed == 3 and len(cb.epoch_energy_j) == 3
    assert runs[second].parent_run_id == first and runs[first].parent_run_id is None
    assert runs[second].status == "finished" and not runs[second].reason
    # the callback's numbers are the second run's alone
    assert cb.energy_j == pytest.approx(runs[second].energy_j, rel=1e-9)
    assert cb.summary["run_id"] == second and cb.summary["epochs"] == 3
    assert ledger.get_run(first).energy_j == pytest.approx(runs[first].energy_j, rel=1e-12)

    # test() after that fit: rows added to the second run, no new run
    before_j = cb.energy_j
    again.test(model, loader(32))
    assert cb.run_id == second and len(ledger.list_runs()) == 2
    assert any(r["stage"] == "test" for r in phase_rows(ledger, second))
    assert ledger.get_run(second).energy_j == pytest.approx(cb.energy_j, rel=1e-9)
    assert cb.energy_j > before_j

    # a resume of the second run's checkpoint, in this process, with this callback: that run
    ckpt = tmp_path / "ckpt" / "epoch=2-step=24.ckpt"
    trainer(tmp_path, [cb, checkpointing(tmp_path)], max_epochs=4).fit(
        model, loader(), loader(32), ckpt_path=ckpt
    )
    assert cb.run_id == second and len(ledger.list_runs()) == 2
    assert ledger.get_run(second).epochs == 4 and cb.epochs_completed == 4
    assert ledger.get_run(first).epochs == 3  # untouched

    # a new module: a new run without a parent
    trainer(tmp_path, [cb], max_epochs=1).fit(TinyModel(), loader(), loader(32))
    third = ledger.get_run(cb.run_id)
    assert cb.run_id not in (first, second) and len(ledger.list_runs()) == 3
    assert third.epochs == 1 and third.parent_run_id is None
    assert cb.energy_j == pytest.approx(third.energy_j, rel=1e-9)


def test_state_dict_round_trip_and_defaults():
    cb = EnergyCallback()
    cb.run_id = "r1"
    cb.epochs_completed = 3
    cb.epoch_energy_j = [1.0, 2.0, 3.0]
    cb.epoch_duration_s = [0.5, 0.5, 0.5]
    cb.epoch_metrics = [{"val_loss": 0.5}, {}, {"val_loss": 0.4, "val_acc": 0.8}]
    cb.epoch_train_samples = [64, None, 64]
    cb.energy_by_kind_j = {"gpu": 5.0, "cpu": 1.0, "ram": 0.5}
    cb.duration_s = 2.0
    # every saved field away from its default, so a field load_state_dict drops shows
    cb.energy_above_idle_j = 1.5
    cb.idle_power_w = {"gpu:x": 60.0}
    cb.flags = {"idle_baseline", "power_only"}
    cb.methods = {"gpu:x": "counter"}
    cb._unsettled = [[2, True, "gpu:x", "validate", 1.0, 1.1, 12.0]]
    cb.peak_mem_gib, cb.peak_mem_reserved_gib = 12.5, 14.0
    fresh = EnergyCallback().state_dict()
    assert all(fresh[k] != v for k, v in cb.state_dict().items() if k != "version")
    restored = EnergyCallback()
    restored.load_state_dict(cb.state_dict())
    assert restored.state_dict() == cb.state_dict()
    assert restored.energy_j == pytest.approx(6.5)
    older = EnergyCallback()
    older.load_state_dict({"run_id": "r0", "energy_by_kind_j": {"gpu": 2.0}})  # fewer fields
    assert older.run_id == "r0" and older.energy_j == 2.0 and older.epochs_completed == 0
    assert older.epoch_energy_j == [] and older.energy_by_kind_j["ram"] == 0.0


def test_an_unreadable_parent_checkpoint_leaves_the_run_without_a_parent(
    tmp_path,
    replay,  # noqa: F811
    caplog,
):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    cb = EnergyCallback(ledger=tmp_path / "w.db", parent=broken)
    trainer(tmp_path, [cb], max_epochs=1).fit(TinyModel(), loader(), loader(32))
    run = Ledger(tmp_path / "w.db").get_run(cb.run_id)
    assert run.parent_run_id is None and run.epochs == 1 and run.status == "finished"
    assert any(str(broken) in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


class Crashing(TinyModel):
    """Raises in training_step at (epoch, batch) ``crash_at``."""

    def __init__(self, crash_at: tuple[int, int]) -> None:
        super().__init__()
        self.crash_at = crash_at

    def training_step(self, batch, batch_idx):
        if (self.current_epoch, batch_idx) == self.crash_at:
            raise RuntimeError("crash")
        return super().training_step(batch, batch_idx)


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch")
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_resume_from_a_mid_epoch_checkpoint_counts_the_resumed_epoch(tmp_path, replay):  # noqa: F811
    """Regression: resuming from a checkpoint saved inside an epoch (``every_n_train_steps``),
    Lightning skips ``on_train_epoch_start`` for the resumed epoch; the callback then did not
    count that epoch's end, merged it into the next epoch's rows and recorded one epoch too
    few (and BudgetGuard saw an epoch of zero growth, which left the budget unenforced)."""
    db = tmp_path / "w.db"
    steps = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    first = EnergyCallback(ledger=db)
    with pytest.raises(RuntimeError, match="crash"):
        trainer(tmp_path, [first, steps], max_epochs=3).fit(
            Crashing(crash_at=(1, 6)), loader(), loader(32)
        )
    assert first.epochs_completed == 1
    ckpt = tmp_path / "ckpt" / "epoch=1-step=10.ckpt"  # 8 batches per epoch: mid-epoch 1

    second = EnergyCallback(ledger=db)
    seen: list[tuple[int, int]] = []

    class EpochEnds(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append((trainer.current_epoch, second.epochs_completed))

    again = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    guard = BudgetGuard(max_kwh=1e6, action="warn")
    fit = trainer(tmp_path, [second, guard, EpochEnds(), again], max_epochs=3)
    fit.fit(TinyModel(), loader(), loader(32), ckpt_path=ckpt)
    # Lightning ended epochs 1 and 2 in this process; each was counted when it ended
    assert seen == [(1, 2), (2, 3)]
    run = Ledger(db).get_run(second.run_id)
    assert second.run_id == first.run_id and run.epochs == 3 == second.epochs_completed
    assert len(second.epoch_energy_j) == len(second.epoch_train_samples) == 3
    assert all(j > 0 for j in second.epoch_energy_j)
    assert len(guard.epoch_growth_j) == 2 and min(guard.epoch_growth_j) > 0
    rows = phase_rows(Ledger(db), run.run_id)
    for epoch in (1, 2):  # one training stretch per epoch, none merged into the next
        train = {r["start_s"] for r in rows if r["epoch"] == epoch and r["stage"] == "train"}
        assert len(train) == 1, epoch


def test_a_resume_in_a_later_process_counts_only_the_time_spent_fitting(
    tmp_path,
    replay,  # noqa: F811
):
    """Regression: a fit that crashed and was resumed later (a fresh process) kept its run's
    start, so the run's duration (and the rental cost the report makes of it) counted the time
    between the two processes: a 13.9 s run for 0.79 s of fitting."""
    db = tmp_path / "w.db"
    first = EnergyCallback(ledger=db)

    class SlowEpochEnd(pl.Callback):  # the first process fits for over a second
        def on_train_epoch_end(self, trainer, pl_module):
            time.sleep(1.0)

    class Stamps(pl.Callback):
        """Monotonic stamps inside the span the ledger records for a fit() call: listed after
        the EnergyCallback, its on_fit_start comes after the run is opened (or reopened); its
        on_fit_end and the crash come before the run is closed."""

        def __init__(self) -> None:
            self.at: dict[str, float] = {}

        def on_fit_start(self, trainer, pl_module):
            self.at["fit_start"] = time.monotonic()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.at["last_batch"] = time.monotonic()  # the crash's batch: it raises next

        def on_fit_end(self, trainer, pl_module):
            self.at["fit_end"] = time.monotonic()

    stamps1 = Stamps()
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="crash"):
        trainer(
            tmp_path, [first, checkpointing(tmp_path), SlowEpochEnd(), stamps1], max_epochs=2
        ).fit(Crashing(crash_at=(1, 0)), loader(), loader(32))
    fit1_s = time.monotonic() - t0
    crashed = Ledger(db).get_run(first.run_id)
    assert crashed.status == "failed"
    ckpt = tmp_path / "ckpt" / "epoch=0-step=8.ckpt"
    carried_s = torch.load(ckpt, map_location="cpu", weights_only=False)["callbacks"][
        first.state_key
    ]["duration_s"]
    time.sleep(2.0)  # the next process starts later

    second = EnergyCallback(ledger=db)
    stamps2 = Stamps()
    resumed = trainer(tmp_path, [second, checkpointing(tmp_path), stamps2], max_epochs=2)
    t1 = time.monotonic()
    resumed.fit(TinyModel(), loader(), loader(32), ckpt_path=ckpt)
    t2 = time.monotonic()
    run = Ledger(db).get_run(second.run_id)
    assert second.run_id == first.run_id and run.status == "finished" and run.epochs == 2
    # The run lasted as long as the two fits measured it (the first whole, crash included):
    # the ledger's span of each call holds the stamps taken inside it and lies inside its
    # fit() call (bounds that hold however loaded the machine); the pause is left out. The
    # resumed callback continues from the ledger's figure (its checkpoint carried only
    # `carried_s`, none of the crashed call's time), so its summary says the same: the
    # crashed call's span plus its own call's, which holds the same inner stamps.
    inner1_s = stamps1.at["last_batch"] - stamps1.at["fit_start"]
    inner2_s = stamps2.at["fit_end"] - stamps2.at["fit_start"]
    span1_s = crashed.duration_s
    assert carried_s < first.duration_s - 1.0
    assert inner1_s <= span1_s <= fit1_s
    assert inner1_s <= first.duration_s <= fit1_s
    assert inner2_s <= run.duration_s - span1_s <= t2 - t1
    assert inner2_s <= second.duration_s - span1_s <= t2 - t1
    assert second.summary["duration_s"] == second.duration_s
    assert run.duration_s < (t2 - t0) - 1.5
    assert run.paused_s >= 2.0
