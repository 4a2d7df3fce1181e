"""What shipping a run to a server ledger costs as the run grows.

The spool's shipper sends the whole run each time (its row upserted, its child rows replaced in
one server transaction): simple and idempotent, but each epoch's ship grows with the run. This
measures one ship of a run with N epochs (EnergyCallback's rows: per epoch train and validate
on 3 devices, a snapshot, the power timeline) into a real PostgreSQL server, and from it the
shipping work over a whole run shipped once per epoch (about N/2 times the last ship).

    python bench/ship_cost.py [--epochs 10,100,1000] [--url postgresql://...]

Without ``--url`` it starts a throw-away cluster (tests/_postgres.py; Debian's postgresql).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from wattwise.ledger import Ledger  # noqa: E402
from wattwise.types import ArchSnapshot, DeviceInfo, PhaseEnergy  # noqa: E402

DEVICES = [
    DeviceInfo("gpu:GPU-0", "gpu", "NVIDIA H200", "counter"),
    DeviceInfo("cpu:machine", "cpu", "Xeon", "estimate"),
    DeviceInfo("ram:machine", "ram", "RAM", "estimate"),
]


def spooled_run(url: str, epochs: int) -> tuple[Ledger, str]:
    """A run of ``epochs`` epochs written to the spool, not shipped yet."""
    book = Ledger(url)
    book._spool._start = lambda: None  # ship by hand, timed
    run_id = book.begin_run(architecture=f"ship{epochs}", devices=DEVICES)
    t = 0.0
    for epoch in range(epochs):
        phases = []
        for stage, seconds in (("train", 60.0), ("validate", 6.0)):
            for d in DEVICES:
                phases.append(
                    PhaseEnergy(
                        stage, 0, d.device_id, d.kind, t, t + seconds, 300.0 * seconds, d.method
                    )
                )
            t += seconds
        book.add_phases(
            run_id,
            phases,
            epoch=epoch,
            snapshot=ArchSnapshot(10_000, 10_000, "ResNet", "r"),
            epochs_completed=epoch + 1,
        )
    return book, run_id


def one_ship(url: str, epochs: int, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of shipping the run once (it stays in the spool: running)."""
    book, run_id = spooled_run(url, epochs)
    walls, cpus = [], []
    for _ in range(repeats):
        book._spool.ledger._write(  # marked for shipping again, as the next epoch's write does
            lambda conn: conn.execute(
                "INSERT INTO ship_queue (run_id, seq) VALUES (?, abs(random())) "
                "ON CONFLICT (run_id) DO UPDATE SET seq = abs(random())",
                (run_id,),
            )
        )
        w0, c0 = time.perf_counter(), time.process_time()
        shipped, _waiting = book.sync()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        assert shipped == 1
    book.close()
    return statistics.median(walls), statistics.median(cpus)


def bench(url: str, sizes: list[int], repeats: int) -> None:
    print(f"{'epochs':>7} {'phase rows':>10} {'one ship':>10} {'CPU':>9} {'all ships (est.)':>17}")
    for n in sizes:
        wall, cpu = one_ship(url, n, repeats)
        total = wall * n / 2  # ships of 1..n epochs, each about proportional to its size
        print(
            f"{n:>7} {n * 2 * len(DEVICES):>10} {1000 * wall:>8.1f}ms {1000 * cpu:>7.1f}ms "
            f"{total:>15.1f}s"
        )
    print(f"load average (1 min): {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", default="10,100,1000", help="run sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--url", default=None, help="a database (default: own cluster)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.epochs.split(",")]
    os.environ["WATTWISE_SPOOL"] = tempfile.mkdtemp(prefix="wattwise-spool-")
    if args.url:
        bench(args.url, sizes, args.repeats)
        return
    import _postgres

    with _postgres.cluster() as box:
        if isinstance(box, str):
            raise SystemExit(box)
        bench(box.url(box.new_database()), sizes, args.repeats)


if __name__ == "__main__":
    main()
