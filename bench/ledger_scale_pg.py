"""Ledger scale on PostgreSQL: 100,000 runs x 20 epochs, then `wattwise runs --user X --since D`
and a report over 1,000 runs, each timed (target: under 10 s each).

The schema is the real one (created by ``Ledger`` on first use, as any client would); the bulk
load is generated on the server (``INSERT ... SELECT FROM generate_series``, one statement per
table) with the columns EnergyCallback writes: per run 2 devices (GPU counter, CPU estimate),
per epoch train and validate on each (80 phase rows a run, 8 M in all) and a snapshot; 100
users, one run every 30 s. Timed: both commands as a user runs them (a fresh
``python -m wattwise`` process each, so the times include its start-up), plus the load.

    python bench/ledger_scale_pg.py [--runs 100000] [--epochs 20] [--url postgresql://...]

Without ``--url`` it starts a throw-away cluster (tests/_postgres.py; Debian's postgresql).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from wattwise.ledger import Ledger  # noqa: E402

USERS = 100
T0 = "2026-01-01T00:00:00+00:00"


def load(url: str, runs: int, epochs: int) -> float:
    """Create the schema through Ledger, then generate the rows on the server; seconds."""
    book = Ledger._direct(url)
    book.ensure_writable()  # the real schema, at the current version
    conn = book._connection().raw
    has_user = conn.execute(
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_name = 'runs' AND column_name = 'user_name'"
    ).fetchone()[0]
    user_cols = ", scheduler, user_name, job_id" if has_user else ""
    user_vals = (
        ", json_build_object('user', 'u' || (g %% 100), 'job_id', (1000000 + g)::text)::text, "
        "'u' || (g %% 100), (1000000 + g)::text"
        if has_user
        else ""
    )
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    conn.execute(
        "INSERT INTO runs (key, run_id, architecture, status, started_at, ended_at, host, pid, "
        "tags, settings, region, pricing, versions, metrics, epochs, updated_at, paused_s"
        f"{user_cols}) "
        "SELECT g, md5(g::text)::uuid::text, 'arch-' || (g %% 7), 'finished', "
        "to_char((%s::timestamptz + g * interval '30 seconds') AT TIME ZONE 'UTC', "
        "'YYYY-MM-DD\"T\"HH24:MI:SS.US') || '+00:00', "
        "to_char((%s::timestamptz + g * interval '30 seconds' + interval '20 minutes') "
        "AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') || '+00:00', "
        "'node' || (g %% 64), 1000 + g, '[\"sweep\"]', '{\"sample_hz\": 10}', 'FRA', 'onprem', "
        "'{}', '{\"val_loss\": 0.1}', %s, "
        "to_char((%s::timestamptz + g * interval '30 seconds' + interval '20 minutes') "
        "AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') || '+00:00', 0"
        f"{user_vals} FROM generate_series(1, %s) g",
        (T0, T0, epochs, T0, runs),
    )
    conn.execute(
        "INSERT INTO devices (key, run_key, device_id, kind, name, method, details, flags) "
        "SELECT 2 * g - 1, g, 'gpu:GPU-5f0b2c1e-8d6a-4f3b-9e21-' || lpad(g::text, 12, '0'), "
        "'gpu', 'NVIDIA H200', 'counter', '{}', '' FROM generate_series(1, %s) g "
        "UNION ALL SELECT 2 * g, g, 'cpu:machine', 'cpu', 'Intel Xeon', 'estimate', '{}', "
        "'estimated' FROM generate_series(1, %s) g",
        (runs, runs),
    )
    conn.execute(
        "INSERT INTO phases (run_key, device_key, epoch, stage, start_s, end_s, energy_j, "
        "mean_power_w, peak_power_w, method, flags) "
        "SELECT g, 2 * g - d, e, s.stage, e * 60.0 + s.off, e * 60.0 + s.off + s.len, "
        "CASE d WHEN 1 THEN 650.0 ELSE 45.0 END * s.len, "
        "CASE d WHEN 1 THEN 650.0 ELSE 45.0 END, CASE d WHEN 1 THEN 690.0 ELSE 47.0 END, "
        "CASE d WHEN 1 THEN 'counter' ELSE 'estimate' END, "
        "CASE d WHEN 1 THEN '' ELSE 'estimated' END "
        "FROM generate_series(1, %s) g, generate_series(0, %s - 1) e, (VALUES (1), (0)) dd(d), "
        "(VALUES ('train', 0.0, 50.0), ('validate', 50.0, 10.0)) s(stage, off, len) "
        "ORDER BY g, e, s.off, d DESC",
        (runs, epochs),
    )
    conn.execute(
        "INSERT INTO snapshots (run_key, epoch, trainable_params, total_params, model_class, "
        "label, metrics, train_samples) SELECT g, e, 1000000, 1000000, 'MLP', 'arch', "
        "'{\"val_loss\": 0.1}', 50000 FROM generate_series(1, %s) g, "
        "generate_series(0, %s - 1) e",
        (runs, epochs),
    )
    for table in ("runs", "devices", "phases"):
        column = "id" if table == "phases" else "key"
        conn.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
            f"(SELECT max({column}) FROM {table}))"
        )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    elapsed = time.perf_counter() - t0
    book.close()
    return elapsed


def timed_cli(*argv: str) -> tuple[float, float, str]:
    """(wall s, CPU s of the wattwise process, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "wattwise", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"wattwise {' '.join(argv[:2])} failed: {proc.stderr[-2000:]}")
    return elapsed, cpu_s, proc.stdout


def report(ledger: str) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        wall_s, cpu_s, out = timed_cli(
            "report",
            "--ledger",
            ledger,
            "--user",
            "u7",
            "--html",
            f"{tmp}/report.html",
            "--csv",
            tmp,
            "--json",
        )
    return wall_s, cpu_s, json.loads(out)["n_runs"]


def bench(url: str, runs: int, epochs: int) -> None:
    load_s = load(url, runs, epochs)
    n_phases = runs * epochs * 2 * 2
    print(f"{runs} runs x {epochs} epochs x 2 stages x 2 devices = {n_phases} phase rows")
    print(f"bulk load on the server (generate_series into the real schema): {load_s:.1f} s")
    # u7 has runs 7, 107, 207, ...; since day 10 at 00:00 UTC (run 28800 on)
    since = "2026-01-11"
    runs_s, runs_cpu_s, out = timed_cli(
        "runs", "--ledger", url, "--user", "u7", "--since", since, "--json"
    )
    print(
        f"wattwise runs --user u7 --since {since} --json: {len(json.loads(out))} runs in "
        f"{runs_s:.2f} s wall ({runs_cpu_s:.2f} s CPU in the wattwise process)"
    )
    wall_s, cpu_s, n = report(url)
    print(
        f"wattwise report --user u7 (HTML + CSV), postgresql: {n} runs in {wall_s:.2f} s wall "
        f"({cpu_s:.2f} s CPU in the wattwise process)"
    )
    # the same runs in a SQLite file, the same command, right after: what the server adds
    from wattwise.ledger.copy import copy_runs
    from wattwise.runfilter import RunFilter

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/u7.db"
        with Ledger._direct(url) as source, Ledger(path) as target:
            ids = [rec.run_id for rec in source.list_runs(RunFilter(user="u7"))]
            copy_runs(source, target, ids)
        wall_s, cpu_s, n = report(path)
        print(
            f"wattwise report --user u7 (HTML + CSV), sqlite copy of those runs: {n} runs in "
            f"{wall_s:.2f} s wall ({cpu_s:.2f} s CPU)"
        )
        for name, where in (("postgresql", url), ("sqlite", path)):
            with Ledger._direct(where) as book:
                t0, c0 = time.perf_counter(), time.process_time()
                flt = RunFilter(user="u7")
                book.list_runs(flt), book.phases(filter=flt), book.snapshots(filter=flt)
                print(
                    f"  reading those runs in-process ({name}: list_runs + phases + snapshots): "
                    f"{time.perf_counter() - t0:.2f} s wall, {time.process_time() - c0:.2f} s CPU"
                )
    print(f"load average (1 min): {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--url", default=None, help="an empty database (default: own cluster)")
    args = parser.parse_args()
    if args.url:
        bench(args.url, args.runs, args.epochs)
        return
    import _postgres

    with _postgres.cluster() as box:
        if isinstance(box, str):
            raise SystemExit(box)
        bench(box.url(box.new_database()), args.runs, args.epochs)


if __name__ == "__main__":
    main()
