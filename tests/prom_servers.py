"""Real Prometheus and Pushgateway servers for the live-metrics tests (Debian's ``prometheus`` and
``prometheus-pushgateway``), each on a free localhost port with its data in a temp folder.

Nothing sleeps a fixed time: :func:`wait_for` polls a condition with a generous timeout.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from _require import missing

T = TypeVar("T")
READY_TIMEOUT_S = 60.0


def free_port() -> int:
    """A localhost port nothing listens on now (the system's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(get: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Poll ``get`` until it returns something truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = get()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


def get_json(url: str, timeout_s: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def _server(argv: list[str], base: str, log: pathlib.Path) -> Iterator[str]:
    binary = shutil.which(argv[0])
    if binary is None:
        missing(f"{argv[0]} is not installed")
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, *argv[1:]], stdout=out, stderr=subprocess.STDOUT)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"{argv[0]} exited ({proc.returncode}): {log.read_text()[-2000:]}")
            return _ready(f"{base}/-/ready")

        wait_for(ready, READY_TIMEOUT_S, f"{argv[0]} to be ready on {base}")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def prometheus(target: str, folder: pathlib.Path) -> Iterator[str]:
    """Prometheus scraping ``target`` (``HOST:PORT``) every second; yields its base URL."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: wattwise\n"
        f"    static_configs:\n      - targets: ['{target}']\n",
        encoding="utf-8",
    )
    port = free_port()
    argv = [
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with _server(argv, f"http://127.0.0.1:{port}", folder / "prometheus.log") as base:
        yield base


@contextlib.contextmanager
def pushgateway(folder: pathlib.Path) -> Iterator[str]:
    """A Pushgateway keeping what is pushed in memory; yields its base URL."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        "prometheus-pushgateway",
        f"--web.listen-address=127.0.0.1:{port}",
        "--persistence.file=",
    ]
    with _server(argv, f"http://127.0.0.1:{port}", folder / "pushgateway.log") as base:
        yield base


def query(base: str, promql: str) -> list[dict[str, Any]]:
    """The result of an instant query (Prometheus HTTP API /api/v1/query)."""
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    answer = get_json(url)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def latest_scrape_s(base: str, metric: str) -> float:
    """Wall-clock time of the newest sample of ``metric`` Prometheus holds (0 before any)."""
    result = query(base, f"max(timestamp({metric}))")
    return float(result[0]["value"][1]) if result else 0.0


def sums_by_scrape(base: str, selector: str, window: str = "1h") -> list[tuple[float, float]]:
    """``[(scrape time, sum over every series)]`` of the raw samples of ``selector`` (one
    scrape stamps every series of the target with the same time), in time order."""
    series = query(base, f"{selector}[{window}]")
    totals: dict[float, float] = {}
    for s in series:
        for stamp, value in s["values"]:
            totals[float(stamp)] = totals.get(float(stamp), 0.0) + float(value)
    return sorted(totals.items())


def raw_series(base: str, selector: str, window: str = "1h") -> list[list[float]]:
    """Each series' raw sample values in time order."""
    return [[float(v) for _, v in s["values"]] for s in query(base, f"{selector}[{window}]")]
