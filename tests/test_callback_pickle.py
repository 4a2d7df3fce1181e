"""The callback pickles and deep-copies at any time: before, during (after set-up) and after a fit.

Lightning pickles callbacks for ddp_spawn, and users deep-copy configurations; no thread, lock or
connection may travel, and a copy keeps the numbers and the run id.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import pytorch_lightning as pl
from test_callback import TinyModel, loader, phase_rows, replay, trainer  # noqa: F401

from lightning_callbacks import EnergyCallback
from wattwise.ledger import Ledger


def round_trips(cb: EnergyCallback) -> list[EnergyCallback]:
    return [pickle.loads(pickle.dumps(cb)), copy.deepcopy(cb)]


def test_before_a_fit_copies_keep_the_configuration(tmp_path):
    cb = EnergyCallback(
        ledger=Ledger(tmp_path / "w.db"),
        architecture="mlp",
        sample_hz=25,
        region="FRA",
        pricing="onprem",
        cpu_mode="process",
        sync_cuda=True,
        log_metrics=False,
        baseline="idle",
        tags=("a", "b"),
    )
    for clone in round_trips(cb):
        assert clone is not cb and clone.state_key == cb.state_key
        assert clone.state_dict() == cb.state_dict()
        assert (clone.architecture, clone.sample_hz, clone.region, clone.pricing) == (
            "mlp",
            25.0,
            "FRA",
            "onprem",
        )
        assert (clone.cpu_mode, clone.sync_cuda, clone.log_metrics) == ("process", True, False)
        assert clone.baseline == "idle" and clone.tags == ("a", "b")
        assert clone._ledger is None and clone._ledger_path == str(tmp_path / "w.db")


class CopyProbe(pl.Callback):
    """Pickles and deep-copies the EnergyCallback in the middle of a fit."""

    def __init__(self, target: EnergyCallback) -> None:
        self.target = target
        self.copies: dict[str, list[EnergyCallback]] = {}

    def setup(self, trainer, pl_module, stage):
        self.copies["setup"] = round_trips(self.target)

    def on_train_epoch_end(self, trainer, pl_module):
        self.copies["epoch"] = round_trips(self.target)


@pytest.mark.slow
def test_during_and_after_a_fit(tmp_path, replay):  # noqa: F811
    # serving live metrics the while: the server and its thread never travel either
    cb = EnergyCallback(ledger=tmp_path / "w.db", metrics_port="127.0.0.1:0")
    probe = CopyProbe(cb)
    trainer(tmp_path, [cb, probe], max_epochs=2).fit(TinyModel(), loader(), loader(32))
    assert cb.metrics_url is not None
    for moment, clones in probe.copies.items():
        for clone in clones:
            assert clone._meter is None and clone._ledger is None, moment
            assert clone._metrics is None and clone.metrics_port == "127.0.0.1:0", moment
    assert cb._meter is None  # stopped at teardown
    # a copy taken after epoch 1 was committed carries its numbers and the run id
    mid = probe.copies["epoch"][0]
    assert mid.run_id == cb.run_id and mid.epochs_completed == 2
    # (phases the counter had not passed yet are provisional in the copy and settled later in
    # the original: one counter update, 0.1 s at up to 200 W, apart at most)
    assert mid.epoch_energy_j == pytest.approx(cb.epoch_energy_j, abs=0.1 * 200.0)
    assert cb.epochs_completed == 2 and cb.energy_j > mid.energy_j > 0  # the tail came later

    after = round_trips(cb)
    for clone in after:
        assert clone.summary == cb.summary and clone.energy_j == cb.energy_j
    # a copy made after the fit goes on recording into the same run
    clone = after[1]
    trainer(tmp_path, [clone]).test(TinyModel(), loader(32))
    ledger = Ledger(tmp_path / "w.db")
    assert len(ledger.list_runs()) == 1
    assert "test" in {r["stage"] for r in phase_rows(ledger, cb.run_id)}
