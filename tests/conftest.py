"""Shared test helpers. Tests never read outside tests/ (fixtures live in tests/fixtures)."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from _require import REQUIRE_ENV, missing

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


# -- the stand-in libnvidia-ml.so.1 (tests/nvml_standin) -----------------------------------------

STANDIN_DIR_ENV = "WATTWISE_NVML_STANDIN_DIR"
"""A folder holding a prebuilt stand-in (``bash tests/nvml_standin/build.sh DIR``); unset: the
tests build it once per session into a temporary folder."""
STANDIN_SRC = pathlib.Path(__file__).parent / "nvml_standin"
STANDIN_TRACE = NVML_FIXTURES / "h200-lightning-fit-50hz.csv"
STANDIN_VARS = (
    "NVML_STANDIN_TRACE",
    "NVML_STANDIN_DEVICES",
    "NVML_STANDIN_NAME",
    "NVML_STANDIN_ARCH",
    "NVML_STANDIN_MIG",
    "NVML_STANDIN_PROCS",
    "NVML_STANDIN_FAULTS",
    "NVML_STANDIN_READ_COST_MS",
    "NVML_STANDIN_LOG",
    "NVML_STANDIN_T0",
)
_REAL_GPU: bool | None = None


def _standin_buildable() -> bool:
    prebuilt = os.environ.get(STANDIN_DIR_ENV)
    if prebuilt:
        return (pathlib.Path(prebuilt) / "libnvidia-ml.so.1").is_file()
    import shutil

    return sys.platform.startswith("linux") and shutil.which("gcc") is not None


def _build_standin(folder: pathlib.Path, driver: str = "") -> pathlib.Path:
    if not _standin_buildable():
        missing("the NVML stand-in needs Linux and gcc")
    build = subprocess.run(
        ["bash", str(STANDIN_SRC / "build.sh"), str(folder)],
        capture_output=True,
        text=True,
        env={**os.environ, "STANDIN_DRIVER": driver},
    )
    if build.returncode != 0:
        pytest.fail(f"building the NVML stand-in failed:\n{build.stderr}")
    return folder


@pytest.fixture(scope="session")
def standin_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The folder of the stand-in ``libnvidia-ml.so.1``: $WATTWISE_NVML_STANDIN_DIR, or built
    here once per session (skips where neither works)."""
    prebuilt = os.environ.get(STANDIN_DIR_ENV)
    if prebuilt:
        folder = pathlib.Path(prebuilt)
        if not (folder / "libnvidia-ml.so.1").is_file():
            pytest.fail(f"{STANDIN_DIR_ENV}={prebuilt} holds no libnvidia-ml.so.1")
        return folder
    return _build_standin(tmp_path_factory.mktemp("nvml-standin"))


@pytest.fixture(scope="session")
def standin_r470_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The stand-in built as an R470 driver (no ``_v3`` running-process calls), once per
    session."""
    return _build_standin(tmp_path_factory.mktemp("nvml-standin-r470"), "r470")


@dataclasses.dataclass
class Standin:
    """The stand-in, loaded as this process's NVML and named by LD_LIBRARY_PATH for children.
    ``set(trace=..., devices=..., faults=...)`` sets its NVML_STANDIN_* variables (read at the
    next first nvmlInit)."""

    folder: pathlib.Path
    lib: ctypes.CDLL
    monkeypatch: pytest.MonkeyPatch

    def set(self, **values: object) -> None:
        for key, value in values.items():
            var = f"NVML_STANDIN_{key.upper()}"
            assert var in STANDIN_VARS, var
            if value is None:
                self.monkeypatch.delenv(var, raising=False)
            else:
                self.monkeypatch.setenv(var, str(value))

    def init_count(self) -> int:
        return self.lib.nvmlStandinInitCount()


def _use_standin(folder: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Standin]:
    import pynvml

    lib = ctypes.CDLL(str(folder / "libnvidia-ml.so.1"), mode=ctypes.RTLD_GLOBAL)
    lib.nvmlStandinVersion.restype = ctypes.c_char_p
    assert lib.nvmlStandinVersion().startswith(b"wattwise-nvml-standin")
    lib.nvmlStandinReset()
    for var in STANDIN_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("WATTWISE_REPLAY_NVML", raising=False)
    old = os.environ.get("LD_LIBRARY_PATH")
    monkeypatch.setenv("LD_LIBRARY_PATH", f"{folder}:{old}" if old else str(folder))
    monkeypatch.setenv("NVML_STANDIN_TRACE", str(STANDIN_TRACE))
    monkeypatch.setattr(pynvml, "nvmlLib", lib)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    monkeypatch.setattr(pynvml, "_nvmlLib_refcount", 0)
    standin = Standin(folder, lib, monkeypatch)
    yield standin
    gc.collect()  # sensors dropped without close() shut NVML down in their finalizers
    left = standin.init_count()
    lib.nvmlStandinReset()
    assert left == 0, f"the test left NVML initialised {left} time(s) more than shut down"


@pytest.fixture
def nvml_standin(standin_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Standin]:
    """The unmodified pynvml talking to the stand-in: in this process (its ``nvmlLib`` is the
    stand-in, as after its own ``CDLL("libnvidia-ml.so.1")``) and in subprocesses (through
    LD_LIBRARY_PATH), replaying tests/fixtures/nvml/h200-lightning-fit-50hz.csv on one GPU
    until ``set()`` says otherwise. Fails a test that leaves NVML initialised."""
    yield from _use_standin(standin_dir, monkeypatch)


@pytest.fixture
def nvml_standin_r470(
    standin_r470_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Standin]:
    """``nvml_standin`` as an R470 driver (older than nvidia-ml-py's ``_v3`` calls)."""
    yield from _use_standin(standin_r470_dir, monkeypatch)


@pytest.fixture(autouse=True)
def _gpu_tests_use_the_standin(request: pytest.FixtureRequest) -> None:
    """``gpu`` tests run against the real driver where there is a GPU, else the stand-in."""
    if "gpu" in request.keywords and not _REAL_GPU:
        request.getfixturevalue("nvml_standin")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    global _REAL_GPU
    if not any("gpu" in item.keywords for item in items):
        return
    _REAL_GPU = _has_gpu()
    # where CI requires the stand-in, a gpu test runs and fails in the stand-in's fixture instead
    if not _REAL_GPU and not _standin_buildable() and not os.environ.get(REQUIRE_ENV):
        skip = pytest.mark.skip(reason="needs a real NVIDIA GPU or the NVML stand-in (gcc)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


# ---------------------------------------------------------------- PostgreSQL (issue 15)


@pytest.fixture(scope="session")
def pg_cluster():
    """A throw-away PostgreSQL cluster for the session (tests/_postgres.py); tests that need it
    skip with the reason when PostgreSQL is not installed (in CI, where it is installed and
    WATTWISE_TEST_REQUIRE_SERVERS is set, they fail instead: tests/_require.py)."""
    import _postgres

    with _postgres.cluster() as box:
        yield box


@pytest.fixture
def pg_url(pg_cluster, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A URL (password in it) of a fresh, empty database on the session's cluster; the
    spool goes under tmp_path."""
    if isinstance(pg_cluster, str):
        missing(pg_cluster)
    monkeypatch.setenv("WATTWISE_SPOOL", str(tmp_path / "spool"))
    return pg_cluster.url(pg_cluster.new_database())


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_location(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """Where a ledger lives, once per backend: a file path, then a postgresql:// URL."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    return request.getfixturevalue("pg_url")
