"""EnergyCallback and BudgetGuard under Lightning's real ``strategy="ddp"`` launcher.

The ``ddp`` launcher starts the other ranks by running the user's script again, so each test runs
tests/scripts/ddp_fit.py in a subprocess (2 CPU ranks over gloo, the GPU replayed from the real
H200 trace through ``WATTWISE_REPLAY_NVML``, which every rank inherits) and then reads the
ledger and what each rank wrote about itself. The contract (DESIGN.md "Runs and their numbers"):
one run, written by rank 0 under an id every rank agrees on; a GPU no rank trains on measured once
per node by local rank 0 and counted once by UUID; the node's CPU and RAM once; BudgetGuard stops
every rank at the same epoch.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import types

import pytest
from test_callback import TRACE, assert_tiled, pd_isna, phase_rows, trace_energy_j

from wattwise.integrate import integrate_phases
from wattwise.ledger import Ledger
from wattwise.sensors.replay import load_trace, replay_device
from wattwise.units import J_PER_KWH

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "scripts" / "ddp_fit.py"
FIT_TIMEOUT_S = 150
"""A fit takes 10-20 s here (most of it two processes importing torch); a hang ends at this."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_fit(tmp_path: pathlib.Path, trace: pathlib.Path | None, *args: str, nodes: int = 1):
    """Run ddp_fit.py (``nodes`` node processes on this machine, NODE_RANK 0..nodes-1) and return
    (ledger, {global rank: what that rank wrote}). ``trace``: the replayed GPU; None: NVML (the
    stand-in of tests/test_nvml_standin.py)."""
    # no wattwise settings, and nothing that makes Lightning think a cluster launched the ranks
    # (a CI job under SLURM or torchrun): the ddp launcher itself must start them
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WATTWISE_", "SLURM_", "TORCHELASTIC_", "LSB_"))
        and k not in {"RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"}
    }
    env.update(
        # the script must import this checkout (its own directory comes first on sys.path)
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )
    if trace is not None:
        env["WATTWISE_REPLAY_NVML"] = str(trace)
    db, out_dir = tmp_path / "w.db", tmp_path / "ranks"
    out_dir.mkdir()
    command = [sys.executable, str(SCRIPT), str(db), str(out_dir), *args]
    logs, procs = [], []
    for node in range(nodes):
        logs.append(tmp_path / f"node{node}.log")
        with logs[-1].open("w") as log:
            procs.append(
                subprocess.Popen(
                    command,
                    cwd=tmp_path,
                    env={**env, "NODE_RANK": str(node)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # the launcher's children share the group: kill all
                )
            )
    deadline = time.monotonic() + FIT_TIMEOUT_S
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        pytest.fail(f"ddp fit still running after {FIT_TIMEOUT_S} s:\n{logs_text(logs)}")
    assert [proc.returncode for proc in procs] == [0] * nodes, logs_text(logs)
    ranks = {}
    for path in out_dir.glob("rank*.json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        ranks[data["global_rank"]] = data
    return Ledger(db), ranks


def logs_text(logs: list[pathlib.Path]) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-4000:]}" for log in logs)


def check_one_gpu_counted_once(rows: list[dict], trace_path: pathlib.Path, t_open_s: float):
    """The GPU rows hold one device's replayed energy over the fit (rank 0's replay sensor,
    opened at ``t_open_s``): a GPU counted by two ranks would hold about twice as much."""
    trace = load_trace(trace_path)
    info = replay_device(trace)
    gpu_rows = [r for r in rows if r["kind"] == "gpu"]
    assert {r["device_id"] for r in gpu_rows} == {info.device_id}
    first, last = min(r["start_s"] for r in gpu_rows), max(r["end_s"] for r in gpu_rows)
    assert t_open_s <= first
    gpu_j = sum(r["energy_j"] for r in gpu_rows)
    # Same yardsticks as test_callback's single-process fit: the whole span integrated as one
    # phase from the trace's rows, and the trace's own power over it, each within what one
    # 0.1 s counter update leaves unresolved at the span's ends.
    samples = trace.samples(info.device_id, offset_s=t_open_s - trace.t_s[0])
    (whole,) = integrate_phases(samples, [info], [("fit", first)], end_s=last)
    peak_w = max(s.power_w for s in samples if first - 1 <= s.t_s <= last + 1)
    assert gpu_j == pytest.approx(whole.energy_j, rel=0.01, abs=info.update_period_s * peak_w)
    sensor = types.SimpleNamespace(trace=trace, t_open_s=t_open_s)
    expected_j = trace_energy_j(sensor, first, last)
    assert gpu_j == pytest.approx(expected_j, abs=2 * info.update_period_s * peak_w)
    return gpu_j, expected_j


def check_rows_per_phase(rows: list[dict], device_ids: set[str]) -> None:
    """The devices of one Meter (``device_ids``: they share its phase boundaries) have exactly
    one row each in every phase: no device counted twice, none missing."""
    mine = [r for r in rows if r["device_id"] in device_ids]
    assert {r["device_id"] for r in mine} == device_ids
    per_phase = collections.Counter((r["start_s"], r["end_s"]) for r in mine)
    assert set(per_phase.values()) == {len(device_ids)}, per_phase
    assert len({(r["device_id"], r["start_s"]) for r in mine}) == len(mine)
    assert_tiled(mine)


def check_ranks_agree(ranks: dict[int, dict], world_size: int, run_id: str) -> None:
    assert sorted(ranks) == list(range(world_size))
    for rank in ranks.values():
        assert rank["world_size"] == world_size
        assert rank["run_id"] == run_id  # rank 0 opened the run; the others got its id
        assert "callback_error" not in rank["flags"], rank  # rank > 0 faults are never logged
    for name in ("epochs_completed", "current_epoch", "energy_j", "guard_reason"):
        assert len({json.dumps(rank[name]) for rank in ranks.values()}) == 1, name


def test_ddp_launcher_one_node_writes_one_run_and_counts_the_shared_gpu_and_cpu_once(
    tmp_path, nvml_fixtures
):
    """Two ranks on one machine see the same replayed GPU (no rank trains on it): local rank 0
    measures it and the host, rank 1 measures nothing, and the run holds each device once.
    Each rank reports its (faked) CUDA peak memory with its epoch report: rank 1's larger
    figure is the run's."""
    trace_path = nvml_fixtures / TRACE
    ledger, ranks = run_fit(
        tmp_path,
        trace_path,
        *("--epochs", "2", "--step-s", "0.1", "--fake-peak-gib", "0=2.5,1=7.5"),
    )

    (run,) = ledger.list_runs()
    check_ranks_agree(ranks, 2, run.run_id)
    zero, one = ranks[0], ranks[1]
    assert (zero["local_rank"], one["local_rank"]) == (0, 1)
    assert zero["epochs_completed"] == zero["current_epoch"] == 2
    assert run.status == "finished" and run.epochs == 2 and run.reason is None
    assert run.settings["world_size"] == 2 and run.settings["strategy"] == "DDPStrategy"
    assert "callback_error" not in run.flags
    assert (run.settings["peak_mem_gib"], run.settings["peak_mem_reserved_gib"]) == (7.5, 9.375)
    # 32 samples split over 2 ranks, batches of 8: 2 batches (and optimizer steps) per epoch
    assert (run.settings["batches_per_epoch"], run.settings["steps_per_epoch"]) == (2, 2)
    measured = {d["device_id"] for d in run.devices}
    assert len(measured) == len(run.devices)  # each device once
    assert [d["kind"] for d in run.devices].count("gpu") == 1
    assert {d["kind"] for d in run.devices} == {"cpu", "gpu", "ram"}
    assert not [d for d in measured if "@node" in d]  # one node

    rows = phase_rows(ledger, run.run_id)
    check_rows_per_phase(rows, measured)
    assert sorted({r["epoch"] for r in rows if not pd_isna(r["epoch"])}) == [0, 1]
    # one row a phase per CPU device (one, or one per RAPL package), as many as the GPU's
    n_cpus = [d["kind"] for d in run.devices].count("cpu")
    n_gpu_rows = len([r for r in rows if r["kind"] == "gpu"])
    assert len([r for r in rows if r["kind"] == "cpu"]) == n_cpus * n_gpu_rows
    (opened,) = zero["replay_opens"]
    first = min(r["start_s"] for r in rows)
    last = max(r["end_s"] for r in rows)
    assert zero["fit_started_s"] <= first and last <= zero["fit_ended_s"]
    check_one_gpu_counted_once(rows, trace_path, opened["t_open_s"])
    # ledger, and every rank's totals, agree
    assert run.energy_j == pytest.approx(sum(r["energy_j"] for r in rows), rel=1e-9)
    assert zero["energy_j"] == pytest.approx(run.energy_j, rel=1e-9)
    # who measured what: one Meter, on local rank 0; rank 1 measured nothing
    assert [set(ids) for ids in zero["meters"]] == [measured]
    assert one["meters"] == [] and one["replay_opens"] == []


def test_ddp_launcher_budget_guard_stops_every_rank_at_the_same_epoch(tmp_path, nvml_fixtures):
    """A budget crossed after a few epochs (the replayed GPU idles at ~120 W, so ~300 J is a
    couple of seconds of fit, however fast the epochs are): every rank stops after the same
    epoch, the fit ends cleanly (no rank left waiting in a collective) and the run says why."""
    budget_j, max_epochs = 300.0, 40
    ledger, ranks = run_fit(
        tmp_path,
        nvml_fixtures / TRACE,
        *("--epochs", str(max_epochs), "--step-s", "0.1"),
        *("--budget-kwh", repr(budget_j / J_PER_KWH)),
    )

    (run,) = ledger.list_runs()
    check_ranks_agree(ranks, 2, run.run_id)
    stopped = ranks[0]["epochs_completed"]
    assert 1 <= stopped < max_epochs
    for rank in ranks.values():
        assert rank["should_stop"] and rank["current_epoch"] == stopped
    assert run.status == "finished" and run.epochs == stopped
    assert run.reason == ranks[0]["guard_reason"]
    assert re.match(rf"BudgetGuard stopped after epoch {stopped}: .* kWh > max ", run.reason)
    rows = phase_rows(ledger, run.run_id)
    epochs = sorted({r["epoch"] for r in rows if not pd_isna(r["epoch"])})
    assert epochs == list(range(stopped))


def test_ddp_launcher_two_nodes_replaying_one_gpu_count_it_once(tmp_path, nvml_fixtures):
    """Two node processes on this machine (NODE_RANK 0 and 1, one rank each) both replay the same
    trace: each local rank 0 measures the GPU and its host. The GPU has one UUID in every
    process, so it is counted once; each node's CPU and RAM are kept apart (``@node1``)."""
    trace_path = nvml_fixtures / TRACE
    ledger, ranks = run_fit(
        tmp_path,
        trace_path,
        *("--epochs", "2", "--step-s", "0.1", "--devices", "1", "--num-nodes", "2"),
        nodes=2,
    )

    (run,) = ledger.list_runs()
    check_ranks_agree(ranks, 2, run.run_id)
    assert [ranks[r]["node_rank"] for r in (0, 1)] == [0, 1]
    assert run.status == "finished" and run.epochs == 2
    assert run.settings["num_nodes"] == 2
    (node0,), (node1,) = ranks[0]["meters"], ranks[1]["meters"]
    gpu = replay_device(load_trace(trace_path)).device_id
    assert gpu in node0 and gpu in node1  # both measured it: one GPU seen by two processes
    hosts = [d for d in node0 if d != gpu]
    expected = {gpu, *hosts, *(f"{d}@node1" for d in hosts)}
    assert sorted(d["device_id"] for d in run.devices) == sorted(expected)

    rows = phase_rows(ledger, run.run_id)
    assert {r["device_id"] for r in rows} == expected
    check_rows_per_phase(rows, set(node0))  # node 0's Meter: the GPU and node 0's host
    check_rows_per_phase(rows, {f"{d}@node1" for d in hosts})  # node 1's host, its own phases
    # counted once, from global rank 0's sensor
    check_one_gpu_counted_once(rows, trace_path, ranks[0]["replay_opens"][0]["t_open_s"])


def test_ddp_launcher_a_fault_on_rank_1_reaches_rank_0s_log_and_the_run(tmp_path, nvml_fixtures):
    """A guarded failure inside the callback on rank 1 (which writes nothing and logs nothing
    itself) travels with rank 1's epoch report: rank 0 logs it once, naming the rank, and the
    run is flagged ``callback_error``; training finishes on both ranks."""
    trace_path = nvml_fixtures / TRACE
    ledger, ranks = run_fit(tmp_path, trace_path, "--epochs", "2", "--fault-rank", "1")
    (run,) = ledger.list_runs()
    assert run.status == "finished" and run.epochs == 2
    assert "callback_error" in run.flags
    assert all("callback_error" in ranks[r]["flags"] for r in (0, 1))
    log = (tmp_path / "node0.log").read_text()
    assert (
        log.count("rank 1: wattwise: metrics failed (RuntimeError: injected fault on rank 1)") == 1
    )
