"""Facts about the current process and host that a run record keeps.

Host name, boot id and process start time let the ledger tell a live run from one whose process
is gone, even when the pid has been reused. Versions come from package metadata (torch is never
imported); the git commit from ``git rev-parse HEAD`` with a short timeout.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import pathlib
import platform
import socket
import subprocess
from collections.abc import Callable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")

_GIT_TIMEOUT_S = 2.0
_BOOT_ID_PATH = pathlib.Path("/proc/sys/kernel/random/boot_id")
# Two readings of one process's start time agree to the clock tick; a reused pid differs by more.
_START_TIME_TOLERANCE_S = 0.5


@functools.cache
def host() -> str:
    return socket.gethostname()


@functools.cache
def boot_id() -> str | None:
    """Linux's per-boot random id; None elsewhere (then only pid and start time are compared)."""
    try:
        return _BOOT_ID_PATH.read_text().strip() or None
    except OSError:
        return None


def process_start_time(pid: int) -> float | None:
    """Start time of ``pid`` in seconds since the epoch, None if there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def tree_figures(read: Callable[[Any], T]) -> dict[int, T]:
    """``read(process)`` for this process and each live descendant, by pid; a process that ends
    or denies access meanwhile is left out (the CPU and RAM estimates' process mode)."""
    import psutil

    me = psutil.Process(os.getpid())
    out = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            out[proc.pid] = read(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def process_alive(pid: int, start_time: float | None) -> bool:
    """Whether the process ``pid`` that started at ``start_time`` still runs on this host.

    A zombie counts as gone; a pid now held by a process that started at another time is a
    reused pid, so the original process is gone too.
    """
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        now_start = proc.create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # it exists; we cannot tell more
    return start_time is None or abs(now_start - start_time) <= _START_TIME_TOLERANCE_S


@functools.cache
def _versions() -> tuple[tuple[str, str | None], ...]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for key, dists in (
        ("torch", ("torch",)),
        ("lightning", ("lightning", "pytorch-lightning")),
        ("wattwise", ("wattwise",)),
    ):
        found[key] = None
        for dist in dists:
            try:
                found[key] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return tuple(found.items())


def versions() -> dict[str, str | None]:
    """Versions of python, torch, lightning and wattwise, from metadata (nothing is imported)."""
    return dict(_versions())


def git_commit(cwd: str | os.PathLike[str] | None = None) -> str | None:
    """HEAD commit of the git work tree at ``cwd`` (default: the current directory), else None.

    Read from the ``.git`` files (no process started); layouts it does not know (e.g. the
    reftable format) fall back to ``git rev-parse HEAD`` with a short timeout.
    """
    start = pathlib.Path(cwd or os.getcwd()).absolute()
    for folder in (start, *start.parents):
        dot_git = folder / ".git"
        if dot_git.exists():
            try:
                return _read_head(dot_git) or _git_rev_parse(folder)
            except (OSError, ValueError) as err:
                logger.debug("cannot read %s: %s", dot_git, err)
                return _git_rev_parse(folder)
    return None


def _read_head(dot_git: pathlib.Path) -> str | None:
    git_dir = dot_git
    if dot_git.is_file():  # a worktree or submodule: "gitdir: <path>"
        text = dot_git.read_text().strip()
        if not text.startswith("gitdir:"):
            raise ValueError(f"unexpected .git file: {text[:40]!r}")
        git_dir = (dot_git.parent / text.removeprefix("gitdir:").strip()).resolve()
    head = (git_dir / "HEAD").read_text().strip()
    if not head.startswith("ref:"):
        return head if _is_sha(head) else None  # detached HEAD
    ref = head.removeprefix("ref:").strip()
    common = git_dir
    commondir = git_dir / "commondir"
    if commondir.is_file():
        common = (git_dir / commondir.read_text().strip()).resolve()
    for base in (git_dir, common):
        ref_file = base / ref
        if ref_file.is_file():
            sha = ref_file.read_text().strip()
            return sha if _is_sha(sha) else None
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            sha, _, name = line.partition(" ")
            if name == ref and _is_sha(sha):
                return sha
    return None  # a branch with no commit yet, or a layout we do not read


def _is_sha(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)


def _git_rev_parse(folder: pathlib.Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        logger.debug("no git commit recorded: %s", err)
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and _is_sha(commit) else None
