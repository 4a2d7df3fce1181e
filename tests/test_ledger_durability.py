"""Durability: a writer killed with SIGKILL mid-training loses at most the epoch in flight."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from wattwise.ledger import Ledger

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

PHASES_PER_EPOCH = 8  # 4 stages x 2 devices

# Writes epochs through the public API as fast as it can, printing each epoch once committed.
WRITER = """
import sys
from wattwise.ledger import Ledger
from wattwise.types import ArchSnapshot, PhaseEnergy

book = Ledger(sys.argv[1])
run_id = book.begin_run(architecture="killed")
print(run_id, flush=True)
for epoch in range(100_000):
    phases = [
        PhaseEnergy(stage, i, device, device[:3], 10.0 * epoch, 10.0 * epoch + 10.0,
                    1.0 + epoch, "counter" if device.startswith("gpu") else "estimate")
        for i, stage in enumerate(("train", "validate", "test", "predict"))
        for device in ("gpu:GPU-0", "cpu:machine")
    ]
    book.add_phases(run_id, phases, epoch=epoch, snapshot=ArchSnapshot(epoch, epoch, "M", "m"),
                    epochs_completed=epoch + 1)
    print(epoch, flush=True)
"""


@pytest.mark.parametrize("delay_s", [0.0, 0.0007, 0.003])
def test_sigkill_keeps_every_committed_epoch(tmp_path, delay_s):
    path = tmp_path / "ledger.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        run_id = proc.stdout.readline().strip()
        last_reported = -1
        while last_reported < 30:
            line = proc.stdout.readline()
            assert line, f"writer ended early with code {proc.poll()}"
            last_reported = int(line)
        time.sleep(delay_s)  # land the kill at different points of the next write
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    with Ledger(path) as book:
        phases = book.phases(run_id)
        per_epoch = phases.groupby("epoch").size()
        epochs = sorted(per_epoch.index)
        # Every epoch reported committed is there; at most the ones in flight after it too.
        assert epochs == list(range(len(epochs)))
        assert len(epochs) >= last_reported + 1
        # Each epoch is all or nothing, and the run's counter was committed with its rows.
        assert (per_epoch == PHASES_PER_EPOCH).all()
        rec = book.get_run(run_id)
        assert rec.epochs == len(epochs)
        assert len(book.snapshots(run_id)) == len(epochs)
        assert rec.energy_j == pytest.approx(
            PHASES_PER_EPOCH * sum(1.0 + e for e in range(len(epochs)))
        )
        # Left "running" in the file; shown as interrupted since its process is gone.
        assert book._read("SELECT status FROM runs")[0][0] == "running"
        assert rec.status == "interrupted"
        assert [r.status for r in book.list_runs()] == ["interrupted"]
