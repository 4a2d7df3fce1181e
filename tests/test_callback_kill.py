"""A fit killed with SIGKILL right after an epoch end: every committed epoch is in the ledger,
and a phase the counter had not settled yet is there too, flagged ``provisional`` (never lost,
never silently presented as settled). A real subprocess, the H200 trace replayed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from wattwise.ledger import Ledger
from wattwise.sampler import RESOLVE_WAIT_S

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import pytorch_lightning as pl
    from test_callback import TinyModel, loader, trainer
    from lightning_callbacks import EnergyCallback

    class KillAfterEpoch(pl.Callback):  # runs after EnergyCallback's epoch end (added later)
        def on_train_epoch_end(self, trainer, pl_module):
            # the first epoch end from epoch 1 on that left a phase unsettled (almost always
            # epoch 1: the counter updates every 0.1 s, the epoch end takes a few ms)
            if trainer.current_epoch >= 1 and cb._provisional:
                print("RUN", cb.run_id, trainer.current_epoch, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

    import pathlib
    cb = EnergyCallback(ledger={db!r})
    fit = trainer(pathlib.Path({tmp!r}), [cb, KillAfterEpoch()], max_epochs=8)
    fit.fit(TinyModel(step_s=0.03), loader(), loader(32))
    """
)


def test_sigkill_after_an_epoch_end_keeps_both_epochs_and_flags_what_was_unsettled(
    tmp_path, nvml_fixtures
):
    db = tmp_path / "w.db"
    tests = os.path.dirname(__file__)
    env = dict(os.environ, WATTWISE_REPLAY_NVML=str(nvml_fixtures / "h200-lightning-fit-50hz.csv"))
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(tests), env.get("PYTHONPATH", "")])
    code = SCRIPT.format(tests=tests, db=str(db), tmp=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    run_id, last = done.stdout.split("RUN ", 1)[1].split()[:2]
    last = int(last)

    ledger = Ledger(db)
    run = ledger.get_run(run_id)
    assert run.epochs == last + 1 and run.status == "interrupted"  # its process is gone
    rows = ledger.phases(run_id).to_dict("records")
    assert {int(r["epoch"]) for r in rows} == set(range(last + 1))
    assert {r["stage"] for r in rows if r["epoch"] == last} >= {"train", "validate"}
    # earlier epochs were settled by the next commit; the last epoch's unsettled phases are
    # in the ledger, and say so on their rows
    provisional = [r for r in rows if "provisional" in r["flags"].split(",")]
    assert provisional
    assert all(r["epoch"] == last for r in provisional)
    # ...and only phases that ended within the sampler's resolve limit of the epoch end
    last_end = max(r["end_s"] for r in rows)
    assert all(r["end_s"] >= last_end - RESOLVE_WAIT_S for r in provisional)
    assert run.energy_j == pytest.approx(sum(r["energy_j"] for r in rows), rel=1e-9)
