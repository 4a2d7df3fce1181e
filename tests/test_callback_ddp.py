"""Distributed fits: each GPU counted once (by UUID), each node's CPU and RAM once, one run."""

from __future__ import annotations

import pytest
from test_callback import TinyModel, loader, phase_rows, trainer

from lightning_callbacks import EnergyCallback
from lightning_callbacks.energy import _Entry, _merge, _RankReport
from wattwise.ledger import Ledger
from wattwise.types import DeviceInfo, PhaseEnergy

GPU = "gpu:GPU-6c1d9a3e-0000-4000-8000-000000000001"
GPU2 = "gpu:GPU-6c1d9a3e-0000-4000-8000-000000000002"


def device(device_id: str, kind: str) -> DeviceInfo:
    return DeviceInfo(device_id, kind, device_id, "counter" if kind == "gpu" else "estimate")


def phase(device_id: str, kind: str, index: int, energy_j: float) -> PhaseEnergy:
    return PhaseEnergy(
        "train", index, device_id, kind, float(index), index + 1.0, energy_j, "power"
    )


def report(node: int, devices: list[tuple[str, str]], energy_j: float) -> _RankReport:
    return _RankReport(
        node_rank=node,
        # index 0: before the training epoch started; index 1 inside it (the last one provisional)
        phases=tuple(
            _Entry(phase(d, k, i, energy_j), 0, i >= 1, provisional=i == 1)
            for d, k in devices
            for i in (0, 1)
        ),
        devices=tuple(device(d, k) for d, k in devices),
    )


def test_merge_counts_a_gpu_once_and_names_host_devices_per_node():
    reports = [
        report(0, [(GPU, "gpu"), ("cpu:machine", "cpu"), ("ram", "ram")], 10.0),
        report(0, [(GPU, "gpu")], 10.0),  # a second rank on the same GPU: dropped
        report(0, [(GPU2, "gpu")], 7.0),
        None,  # a rank that measures nothing
        report(1, [("cpu:machine", "cpu"), ("ram", "ram")], 3.0),  # node 1's host
    ]
    entries, devices = _merge(reports)
    phases = [e.phase for e in entries]
    in_epoch = [e.phase for e in entries if e.in_epoch]
    ids = [d.device_id for d in devices]
    assert ids == [GPU, "cpu:machine", "ram", GPU2, "cpu:machine@node1", "ram@node1"]
    assert sum(p.energy_j for p in phases) == pytest.approx(2 * (10 * 3 + 7 + 3 * 2))
    assert {p.device_id for p in phases} == set(ids)
    # where each phase belongs travels with it, renamed or not
    assert all(p.index >= 1 for p in in_epoch)
    assert [e.provisional for e in entries] == [e.phase.index == 1 for e in entries]
    assert sum(p.energy_j for p in in_epoch) == pytest.approx(10 * 3 + 7 + 3 * 2)


@pytest.mark.slow
@pytest.mark.timeout(600)  # it took 135 s with two CPU-bound processes beside the suite
def test_ddp_spawn_two_processes_count_the_replayed_gpu_and_the_cpu_once(
    tmp_path, monkeypatch, nvml_fixtures
):
    monkeypatch.setenv("WATTWISE_REPLAY_NVML", str(nvml_fixtures / "h200-lightning-fit-50hz.csv"))
    db = tmp_path / "w.db"
    cb = EnergyCallback(ledger=db)
    fit = trainer(
        tmp_path, [cb], max_epochs=2, strategy="ddp_spawn", devices=2, num_sanity_val_steps=0
    )
    fit.fit(TinyModel(), loader(), loader(32))

    ledger = Ledger(db)
    (run,) = ledger.list_runs()  # one run, written by global rank 0
    assert run.status == "finished" and run.epochs == 2
    assert run.settings["world_size"] == 2 and run.settings["strategy"] == "DDPStrategy"
    kinds = sorted(d["kind"] for d in run.devices)
    assert kinds == ["cpu", "gpu", "ram"]  # the GPU once, the node's CPU and RAM once
    rows = phase_rows(ledger, run.run_id)
    assert {r["device_id"] for r in rows} == {d["device_id"] for d in run.devices}
    gpu_rows = [r for r in rows if r["kind"] == "gpu"]
    span_s = max(r["end_s"] for r in gpu_rows) - min(r["start_s"] for r in gpu_rows)
    assert sum(r["duration_s"] for r in gpu_rows) == pytest.approx(span_s, rel=1e-6)
    # the replayed H200 idles at ~120 W for the first seconds: counted twice it would be ~240 W
    mean_w = sum(r["energy_j"] for r in gpu_rows) / span_s
    assert 100 < mean_w < 160
    # training samples are summed over both ranks (rank 1 measures nothing but still trains):
    # the sampler gives each rank 32 of the 64 samples per epoch
    assert list(ledger.snapshots(run.run_id)["train_samples"]) == [64, 64]
    # the main process reads the logged totals back from rank 0 (callback_metrics travel back)
    assert float(fit.callback_metrics["energy/total_wh"]) > 0
