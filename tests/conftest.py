"""Shared test helpers. Tests never read outside tests/ (fixtures live in tests/fixtures)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
from collections.abc import Callable, Iterator

import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
NVML_FIXTURES = FIXTURES / "nvml"


@pytest.fixture
def nvml_fixtures() -> pathlib.Path:
    return NVML_FIXTURES


@pytest.fixture
def bare_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """No NVML library, no RAPL, no replay: what this CI machine has, whatever runs the tests
    (discovery and ``wattwise devices`` tests start from it)."""
    import sys

    from tests.fake_pynvml import FakeNvml
    from wattwise.sensors import rapl

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(driver_loaded=False))
    monkeypatch.setattr(rapl, "POWERCAP_ROOT", str(tmp_path / "no-powercap"))
    monkeypatch.delenv("WATTWISE_REPLAY_NVML", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@contextlib.contextmanager
def _read_only_folder(folder: pathlib.Path) -> Iterator[None]:
    """``folder`` made read-only, the files in it left writable (chmod for a user; root, who
    ignores modes, gets the immutable attribute where the file system has one; skipped where
    neither works)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.fixture
def read_only() -> Callable[[pathlib.Path], contextlib.AbstractContextManager[None]]:
    """``with read_only(folder):`` the folder cannot be written (nor files made in it)."""
    return _read_only_folder


@pytest.fixture
def no_wattwise_env(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in the empty ``tmp_path`` with no ``WATTWISE_*`` variable: the defaults, whatever the
    shell that runs the tests has set (CLI tests, which load the configuration themselves)."""
    from wattwise import config

    monkeypatch.chdir(tmp_path)
    for var in config.ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def settings(tmp_path):
    """The defaults: settings loaded in an empty directory, with no environment."""
    from wattwise import config

    return config.load(cwd=tmp_path, env={})


@pytest.fixture
def settings_from(tmp_path):
    """``settings_from(text)``: write ``text`` as ``tmp_path/wattwise.toml`` and load it."""
    from wattwise import config

    def load(text: str):
        (tmp_path / "wattwise.toml").write_text(text, encoding="utf-8")
        return config.load(cwd=tmp_path, env={})

    return load


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models: one torch thread is faster than two and spares the shared cores."""
    from wattwise.zoo.demo import one_cpu_thread

    with one_cpu_thread():
        yield


def _has_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any("gpu" in item.keywords for item in items) and not _has_gpu():
        skip = pytest.mark.skip(reason="needs a real NVIDIA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


# ---------------------------------------------------------------- PostgreSQL (issue 15)


@pytest.fixture(scope="session")
def pg_cluster():
    """A throw-away PostgreSQL cluster for the session (tests/_postgres.py); tests that need it
    skip with the reason when PostgreSQL is not installed (CI installs it and fails on the
    skip: WATTWISE_REQUIRE_POSTGRES=1)."""
    import _postgres

    with _postgres.cluster() as box:
        if isinstance(box, str) and os.environ.get("WATTWISE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"WATTWISE_REQUIRE_POSTGRES=1 but {box}")
        yield box


@pytest.fixture
def pg_url(pg_cluster, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A URL (password in it) of a fresh, empty database on the session's cluster; the
    spool goes under tmp_path."""
    if isinstance(pg_cluster, str):
        pytest.skip(pg_cluster)
    monkeypatch.setenv("WATTWISE_SPOOL", str(tmp_path / "spool"))
    return pg_cluster.url(pg_cluster.new_database())


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_location(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """Where a ledger lives, once per backend: a file path, then a postgresql:// URL."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    return request.getfixturevalue("pg_url")
