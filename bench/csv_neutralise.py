"""What neutralising spreadsheet formulas costs the CSV writer (issue 14, item 1).

Builds a phase table shaped like the one of ``bench/report_scale.py`` (1,000 runs x 100 epochs
x 2 stages x 3 devices = 600,000 rows, its text columns as the report writes them) and times
``wattwise.report._data.csv_text`` on it with the neutralisation and, side by side in the same
run, with ``wattwise._safe_text.csv_column`` replaced by one that changes nothing (the writer as
it was before). Rounds alternate; the medians and their ratio are printed. A second table has a
hostile label in every text column (the slow path).

    python bench/csv_neutralise.py [--rows 600000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import pandas as pd

from wattwise import _safe_text
from wattwise.report._data import csv_text

DEVICES = (
    (
        "gpu:GPU-5f0b2c1e-8d6a-4f3b-9e21-7c4d8a9b0e12",
        "gpu",
        "NVIDIA H200",
        "counter",
        "averaged_power",
    ),
    ("cpu:machine", "cpu", "AMD EPYC 9454", "estimate", "estimated"),
    ("ram", "ram", "DRAM 512 GiB", "estimate", "estimated"),
)


def phase_table(rows: int, hostile: bool) -> pd.DataFrame:
    per_run = 100 * 2 * len(DEVICES)
    runs = [str(uuid.UUID(int=i)) for i in range(-(-rows // per_run))]
    stage = ("train", "validate")
    data: dict[str, list] = {k: [] for k in ("run_id", "stage", "device_id", "kind", "name")}
    data |= {"method": [], "flags": []}
    for i in range(rows):
        device = DEVICES[i % len(DEVICES)]
        data["run_id"].append(runs[i // per_run])
        data["stage"].append(("=HYPERLINK(1)" if hostile and i % 7 == 0 else "") + stage[i % 2])
        data["device_id"].append(device[0])
        data["kind"].append(device[1])
        data["name"].append(("@SUM(1)" if hostile and i % 5 == 0 else "") + device[2])
        data["method"].append(device[3])
        data["flags"].append(device[4])
    n = pd.Series(range(rows), dtype=float)
    return pd.DataFrame(
        {
            "run_id": data["run_id"],
            "epoch": pd.array([(i // 6) % 100 for i in range(rows)], dtype="Int64"),
            "stage": data["stage"],
            "device_id": data["device_id"],
            "kind": data["kind"],
            "device_name": data["name"],
            "start_s": n * 1.5,
            "end_s": n * 1.5 + 1.25,
            "duration_s": 1.25,
            "energy_j": n * 0.731,
            "mean_power_w": 310.25,
            "peak_power_w": 640.5,
            "method": data["method"],
            "flags": data["flags"],
        }
    )


def _unchanged(values: list) -> tuple[list, bool]:
    return list(values), False


def timed(frame: pd.DataFrame) -> float:
    t0 = time.process_time()
    csv_text(frame)
    return time.process_time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    neutralising = _safe_text.csv_column
    for label, hostile in (("plain labels", False), ("hostile labels", True)):
        frame = phase_table(args.rows, hostile)
        with_s, without_s = [], []
        for _ in range(args.rounds):
            _safe_text.csv_column = neutralising
            with_s.append(timed(frame))
            _safe_text.csv_column = _unchanged
            without_s.append(timed(frame))
        _safe_text.csv_column = neutralising
        a, b = statistics.median(with_s), statistics.median(without_s)
        print(
            f"{label}: csv_text of {args.rows:,} rows, CPU s (median of {args.rounds}): "
            f"neutralised {a:.3f}, not {b:.3f}, ratio {a / b:.3f}"
        )


if __name__ == "__main__":
    main()
