"""`import wattwise` must stay cheap and free of side effects."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = (
    "pynvml",
    "torch",
    "codecarbon",
    "lightning",
    "pytorch_lightning",
    "pandas",
    "prometheus_client",
    "psycopg",
)


def test_import_is_light_and_fast() -> None:
    code = (
        "import json, sys, time\n"
        "t0 = time.process_time()\n"
        "import wattwise\n"
        "dt = time.process_time() - t0\n"
        f"print(json.dumps({{'dt': dt, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    # CPU time, not wall time: a loaded machine stretches the wall time of any import (best of
    # three all the same: the first may pay more for a cold cache)
    results = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(3)
    ]
    assert all(r["heavy"] == [] for r in results), results
    assert min(r["dt"] for r in results) < 0.100, results


def test_version_flag() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "wattwise", "--version"], capture_output=True, text=True, check=True
    ).stdout
    import wattwise

    assert out.strip() == f"wattwise {wattwise.__version__}"
