"""GPU check: on a real NVIDIA GPU, do the counter and power methods agree, and does replaying
what was recorded reproduce the counter?

Runs idle -> a matrix-product load -> idle on the first visible GPU while (a) a wattwise Meter
measures the phases live and (b) a recorder thread writes a trace in the fixture format
(``t_s, energy_mJ, power_mW, instant_mW``; both power columns hold the sensor's best power, the
instantaneous field where the driver has it). Then the recorded trace is integrated offline with
both methods. Prints each phase's energy from the live Meter, the replayed counter and the replayed
power, and their differences (targets: counter vs power within 3% over the load; replay of the
counter within 1% of the live counter).

    python bench/gpu_check.py [--load-s 20] [--out DIR]

Dry run on a machine without a GPU (``bash bench/gpu_check.sh --dry-run``): NVML is the stand-in
libnvidia-ml.so.1 of tests/nvml_standin replaying a real H200 recording, and the "load" a CPU
matrix product, so the GPU figures follow the recording, not the load; the Meter and the recorder
read one NVML timeline, so the live-vs-counter column is meaningful there too. With
``WATTWISE_REPLAY_NVML=trace.csv`` the replay sensor stands in instead (then the Meter's and the
recorder's replays start at different instants and live-vs-replay means nothing).
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import threading
import time

from wattwise.integrate import integrate_phases
from wattwise.meter import Meter
from wattwise.sensors.discovery import discover
from wattwise.sensors.replay import load_trace, replay_device


def record(
    sensor, device_id: str, rows: list, stop: threading.Event, period_s: float, t0: float
) -> None:
    """Read the counter and power every ``period_s`` (a separate sensor from the Meter's)."""
    while not stop.wait(period_s):
        for s in sensor.read(time.monotonic() - t0, counter=True):
            if s.device_id == device_id and s.energy_j is not None and s.power_w is not None:
                rows.append((s.t_s, s.energy_j * 1000.0, s.power_w * 1000.0))


def load(seconds: float) -> None:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    size = 8192 if device == "cuda" else 512
    a = torch.randn(size, size, device=device, dtype=dtype)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)
        if device == "cuda":
            torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load-s", type=float, default=20.0)
    parser.add_argument("--idle-s", type=float, default=3.0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench/results/tmp"))
    parser.add_argument("--json", type=pathlib.Path, help="also write the table to this file")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    found = discover(gpus="visible", measure_host=False)
    gpus = [d for d in found.devices if d.kind == "gpu"]
    if not gpus:
        raise SystemExit(f"no GPU to check: {'; '.join(found.notes)}")
    gpu = gpus[0]
    print(f"GPU: {gpu.name} ({gpu.device_id}), method {gpu.method}, flags {sorted(gpu.flags)}")

    rows: list[tuple[float, float, float]] = []
    stop = threading.Event()
    marks: list[tuple[str, float]] = []
    t_rec = time.monotonic()
    recorder = threading.Thread(
        target=record, args=(found.sensors[0], gpu.device_id, rows, stop, 0.02, t_rec), daemon=True
    )
    recorder.start()
    with Meter(gpus="visible", measure_host=False) as meter:
        for label, seconds, work in (
            ("idle_before", args.idle_s, time.sleep),
            ("load", args.load_s, load),
            ("idle_after", args.idle_s, time.sleep),
        ):
            meter.mark(label)
            marks.append((label, time.monotonic() - t_rec))
            work(seconds)
        marks.append(("end", time.monotonic() - t_rec))
    stop.set()
    recorder.join()
    found.close()
    live = {p.name: p for p in meter.stop().phases if p.device_id == gpu.device_id}

    trace_path = args.out / "gpu-check-trace.csv"
    with trace_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t_s", "energy_mJ", "power_mW", "instant_mW"])
        writer.writerows((f"{t:.4f}", round(e), round(p), round(p)) for t, e, p in rows)
    (args.out / "gpu-check-marks.json").write_text(
        json.dumps({"gpu": gpu.name, "marks": marks}, indent=1)
    )

    trace = load_trace(trace_path)
    info = replay_device(trace, gpu.name)
    replayed = {
        method: {
            p.name: p
            for p in integrate_phases(
                trace.samples(info.device_id), [info], marks[:-1], marks[-1][1], method
            )
        }
        for method in ("counter", "power")
    }
    print(
        f"{'phase':12} {'s':>6} {'live J':>10} {'replay J':>10} {'power J':>10} "
        f"{'replay-live':>12} {'power-counter':>14}"
    )
    table = []
    for name, _ in marks[:-1]:
        lv, rc, rp = live.get(name), replayed["counter"][name], replayed["power"][name]
        live_j = lv.energy_j if lv else float("nan")
        table.append(
            {
                "phase": name,
                "seconds": rc.duration_s,
                "live_j": live_j,
                "live_method": lv.method if lv else None,
                "counter_j": rc.energy_j,
                "power_j": rp.energy_j,
                "live_vs_counter_pct": (live_j - rc.energy_j) / rc.energy_j * 100,
                "power_vs_counter_pct": (rp.energy_j - rc.energy_j) / rc.energy_j * 100,
            }
        )
        print(
            f"{name:12} {rc.duration_s:6.2f} {live_j:10.1f} {rc.energy_j:10.1f} "
            f"{rp.energy_j:10.1f} {(rc.energy_j - live_j) / live_j * 100:+11.2f}% "
            f"{(rp.energy_j - rc.energy_j) / rc.energy_j * 100:+13.2f}%"
        )
    print(f"trace: {trace_path} ({len(rows)} rows)")
    if args.json:
        gpu_info = {"name": gpu.name, "method": gpu.method, "flags": sorted(gpu.flags)}
        args.json.write_text(json.dumps({"gpu": gpu_info, "phases": table}, indent=1))


if __name__ == "__main__":
    main()
