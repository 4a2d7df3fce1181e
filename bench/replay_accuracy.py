"""Replay accuracy: `wattwise replay` phase energies against the H200's own energy counter.

For each recorded trace and each method (counter; power = instantaneous power where the trace has
it), integrates the phases between the recorded marks and compares them with the reference the
issue fixes: the hardware counter, its change points joined linearly. Prints the worst error per
band (phases of 2 s or longer, of 0.4-2 s) and the error of the sum of the phases, with the
acceptance bounds beside them.

    python bench/replay_accuracy.py
"""

from __future__ import annotations

import pathlib

from wattwise.integrate import integrate_phases
from wattwise.sensors.replay import counter_reference, load_marks, load_trace, replay_device

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "nvml"
TRACES = ("h200-lightning-fit-50hz", "h200-mlp6144-8epochs-20hz")
BOUNDS = {"counter": (1.0, 5.0, 1.0), "power": (3.0, 8.0, 3.0)}  # >=2 s, 0.4-2 s, sum (in %)


def main() -> None:
    print(f"{'trace':28} {'method':8} {'>=2 s worst':>12} {'0.4-2 s worst':>14} {'sum':>8}  bounds")
    for name in TRACES:
        trace = load_trace(FIXTURES / f"{name}.csv")
        marks = load_marks(next(FIXTURES.glob(f"{name.rsplit('-', 1)[0]}*marks.json")))
        info = replay_device(trace, marks.gpu)
        ref = counter_reference(trace.t_s, trace.energy_j)
        boundaries = marks.marks
        for method in ("counter", "power"):
            phases = integrate_phases(
                trace.samples(info.device_id), [info], boundaries, boundaries[-1][1], method
            )
            worst = {"long": None, "mid": None}
            for p in phases:
                band = "long" if p.duration_s >= 2 else "mid" if p.duration_s >= 0.4 else None
                if band:
                    truth = ref(p.end_s) - ref(p.start_s)
                    err = abs(p.energy_j - truth) / truth * 100
                    worst[band] = max(worst[band] or 0.0, err)
            total = sum(p.energy_j for p in phases)
            truth = ref(phases[-1].end_s) - ref(phases[0].start_s)
            sum_err = abs(total - truth) / truth * 100

            def pct(v: float | None) -> str:
                return "n/a" if v is None else f"{v:.2f}%"

            lo, mid, s = BOUNDS[method]
            print(
                f"{name:28} {method:8} {pct(worst['long']):>12} {pct(worst['mid']):>14} "
                f"{sum_err:7.3f}%  <= {lo}% / {mid}% / {s}%"
            )


if __name__ == "__main__":
    main()
