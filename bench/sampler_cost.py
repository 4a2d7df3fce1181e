"""What the sampler costs: CPU time per wall second, and memory over a simulated hour.

    python bench/sampler_cost.py [--seconds 5] [--json] [--standin-dir DIR]

1. CPU: the real sampler thread replaying the recorded H200 trace (tests/fixtures/nvml) at
   10 Hz and 100 Hz, and at 10 Hz with a boundary every second (short epochs: each boundary
   triggers a short burst of counter reads). The sampler thread's own CPU clock is read
   (``pthread_getcpuclockid``), so other threads do not count. The replay sensor's counter read
   is cheap; the estimate for a real H200 adds the measured NVML cost per read
   (h200-nvml-read-cost.json: ~4 ms of CPU per counter read, ~9 us per instant-power read).
   Target: <= 1% of one core at 10 Hz.
   Then the same cases through the real path: NvmlSensor and the unmodified pynvml over the
   stand-in libnvidia-ml.so.1 (tests/nvml_standin; built here with gcc unless --standin-dir
   names a built one), which spends the measured CPU time of each counter read
   (NVML_STANDIN_READ_COST_MS, default 4 ms): a measurement, not an estimate.
2. Memory: a simulated clock drives ``Sampler.step`` through one simulated hour at 10 Hz (36,000
   ticks) with a boundary every simulated minute and a collect every ten; RSS is compared after
   a warm-up minute and at the end. Target: < 5 MB of growth.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading
import time

import psutil

from wattwise.sampler import Sampler
from wattwise.sensors.nvml import NvmlSensor
from wattwise.sensors.replay import ReplayNvmlSensor

ROOT = pathlib.Path(__file__).resolve().parent.parent
NVML = ROOT / "tests" / "fixtures" / "nvml"
TRACE = NVML / "h200-lightning-fit-50hz.csv"


class CountingReplay(ReplayNvmlSensor):
    """The replay sensor, counting its reads (to price them at real NVML costs)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reads = 0
        self.counter_reads = 0

    def read(self, t_s, *, counter):
        self.reads += 1
        self.counter_reads += counter
        return super().read(t_s, counter=counter)


class CountingNvml(NvmlSensor):
    """NvmlSensor (over the stand-in), counting its reads."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.counter_reads = 0

    def read(self, t_s, *, counter):
        self.reads += 1
        self.counter_reads += counter
        return super().read(t_s, counter=counter)


def load_standin(folder: str | None) -> str | None:
    """Make the stand-in this process's libnvidia-ml.so.1 (before pynvml loads one): glibc's
    dlopen of that name then returns the library already loaded under that SONAME. Returns
    why not, or None."""
    if not folder:
        if shutil.which("gcc") is None:
            return "no gcc to build the NVML stand-in"
        folder = tempfile.mkdtemp(prefix="nvml-standin-")
        build = ROOT / "tests" / "nvml_standin" / "build.sh"
        done = subprocess.run(["bash", str(build), folder], capture_output=True, text=True)
        if done.returncode != 0:
            return f"building the NVML stand-in failed: {done.stderr.strip()}"
    os.environ.setdefault("NVML_STANDIN_TRACE", str(TRACE))
    ctypes.CDLL(str(pathlib.Path(folder) / "libnvidia-ml.so.1"), mode=ctypes.RTLD_GLOBAL)
    return None


def thread_cpu_s(thread: threading.Thread) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def cpu_cost(
    sample_hz: float, seconds: float, boundary_every_s: float | None, nvml: bool = False
) -> dict:
    sensor = CountingNvml() if nvml else CountingReplay(TRACE)
    sampler = Sampler([sensor], sensor.open(), sample_hz=sample_hz)
    sampler.boundary("run")
    sampler.start()
    (thread,) = [t for t in threading.enumerate() if t.name == "wattwise-sampler"]
    time.sleep(0.5)  # settle: first counter reads, first boundary resolved
    cpu0, wall0, reads0, counter0 = thread_cpu_s(thread), time.monotonic(), 0, 0
    reads0, counter0 = sensor.reads, sensor.counter_reads
    next_boundary = wall0 + (boundary_every_s or seconds + 1)
    while (now := time.monotonic()) < wall0 + seconds:
        if now >= next_boundary:
            sampler.boundary("epoch")
            next_boundary += boundary_every_s
        time.sleep(min(0.05, max(0.0, next_boundary - now)))
    cpu_s, wall_s = thread_cpu_s(thread) - cpu0, time.monotonic() - wall0
    reads, counter_reads = sensor.reads - reads0, sensor.counter_reads - counter0
    sampler.collect(timeout_s=1.0)
    sampler.stop()
    sensor.close()
    cost = json.loads((NVML / "h200-nvml-read-cost.json").read_text())["load"]
    nvml_s = (
        counter_reads * cost["GetTotalEnergyConsumption"]["cpu_us"]
        + reads * cost["field186_instant"]["cpu_us"]
    ) / 1e6
    return {
        "sample_hz": sample_hz,
        "boundary_every_s": boundary_every_s,
        "wall_s": wall_s,
        "reads_per_s": reads / wall_s,
        "counter_reads_per_s": counter_reads / wall_s,
        "sampler_cpu_pct_of_core": 100 * cpu_s / wall_s,
        "h200_estimate_cpu_pct_of_core": 100 * (cpu_s + nvml_s) / wall_s,
    }


def memory_growth(hours: float = 1.0, sample_hz: float = 10.0) -> dict:
    now_s = [0.0]  # a simulated clock: moved by hand, one tick at a time

    def clock() -> float:
        return now_s[0]

    sensor = ReplayNvmlSensor(TRACE, clock=clock)
    sampler = Sampler([sensor], sensor.open(), sample_hz=sample_hz, clock=clock)
    process = psutil.Process()
    ticks = int(hours * 3600 * sample_hz)
    per_minute = int(60 * sample_hz)
    sampler.boundary("epoch")
    rss0 = None
    phases = 0
    for i in range(1, ticks + 1):
        now_s[0] += 1.0 / sample_hz
        sampler.step()
        if i % per_minute == 0:
            sampler.boundary("epoch")
        if i % (10 * per_minute) == 0:
            phases += len(sampler.collect(timeout_s=0))
        if i == per_minute:
            gc.collect()
            rss0 = process.memory_info().rss
    gc.collect()
    rss1 = process.memory_info().rss
    history = sum(len(points) for points in sampler.history().values())
    return {
        "simulated_s": ticks / sample_hz,
        "ticks": ticks,
        "phases_collected": phases,
        "history_points": history,
        "rss_growth_mb": (rss1 - rss0) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="wall seconds per CPU case")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--standin-dir", help="a folder holding the built NVML stand-in")
    args = parser.parse_args()
    cases = [(10.0, None), (100.0, None), (10.0, 1.0)]
    cpu = [cpu_cost(hz, args.seconds, every) for hz, every in cases]
    standin_skipped = load_standin(args.standin_dir)
    nvml = [] if standin_skipped else [cpu_cost(hz, args.seconds, e, True) for hz, e in cases]
    memory = memory_growth()
    if args.json:
        print(
            json.dumps(
                {
                    "cpu": cpu,
                    "nvml_standin": nvml,
                    "nvml_standin_skipped": standin_skipped,
                    "memory": memory,
                },
                indent=2,
            )
        )
        return
    print(f"sampler CPU (replay sensor, {args.seconds:g} s each; thread CPU clock):")
    for c in cpu:
        label = f"{c['sample_hz']:>5g} Hz" + (
            f", boundary every {c['boundary_every_s']:g} s" if c["boundary_every_s"] else ""
        )
        print(
            f"  {label:<32} {c['sampler_cpu_pct_of_core']:6.3f}% of a core "
            f"({c['reads_per_s']:.1f} reads/s, {c['counter_reads_per_s']:.2f} counter reads/s); "
            f"on a real H200 with NVML's read costs ~{c['h200_estimate_cpu_pct_of_core']:.2f}%"
        )
    cost_ms = os.environ.get("NVML_STANDIN_READ_COST_MS", "4 (default)")
    if standin_skipped:
        print(f"through NVML: skipped ({standin_skipped})")
    else:
        print(
            "sampler CPU through NvmlSensor, pynvml and the stand-in "
            f"({cost_ms} ms per counter read):"
        )
    for c in nvml:
        label = f"{c['sample_hz']:>5g} Hz" + (
            f", boundary every {c['boundary_every_s']:g} s" if c["boundary_every_s"] else ""
        )
        print(
            f"  {label:<32} {c['sampler_cpu_pct_of_core']:6.3f}% of a core "
            f"({c['reads_per_s']:.1f} reads/s, {c['counter_reads_per_s']:.2f} counter reads/s)"
        )
    print(
        f"memory: {memory['ticks']:,} ticks ({memory['simulated_s'] / 3600:g} simulated hour, "
        f"{memory['phases_collected']} phases collected, {memory['history_points']} history "
        f"points kept): RSS growth {memory['rss_growth_mb']:.2f} MB"
    )


if __name__ == "__main__":
    main()
