"""Facts about the current process and host that a run record keeps.

Host name, boot id and process start time let the ledger tell a live run from one whose process
is gone, even when the pid has been reused. Versions come from package metadata (torch is never
imported); the git commit from ``git rev-parse HEAD`` with a short timeout.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import pathlib
import platform
import socket
import subprocess

logger = logging.getLogger(__name__)

_GIT_TIMEOUT_S = 2.0
_BOOT_ID_PATH = pathlib.Path("/proc/sys/kernel/random/boot_id")
# Two readings of one process's start time agree to the clock tick; a reused pid differs by more.
_START_TIME_TOLERANCE_S = 0.5


def host() -> str:
    return socket.gethostname()


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


def versions() -> dict[str, str | None]:
    """Versions of python, torch, lightning and wattwise, from metadata (nothing is imported)."""
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
    return found


def git_commit(cwd: str | os.PathLike[str] | None = None) -> str | None:
    """HEAD commit of the git work tree at ``cwd`` (default: the current directory), else None."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        logger.debug("no git commit recorded: %s", err)
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None
