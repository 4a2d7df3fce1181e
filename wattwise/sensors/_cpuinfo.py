"""What the CPU is, read from ``/proc/cpuinfo`` (no subprocess, unlike py-cpuinfo)."""

from __future__ import annotations

import os
import pathlib
import platform

CPUINFO = pathlib.Path("/proc/cpuinfo")


def read_cpuinfo(path: pathlib.Path = CPUINFO) -> str:
    """The text of ``/proc/cpuinfo``; empty where it does not exist (macOS, Windows)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _field_values(text: str, key: str) -> list[str]:
    values = []
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == key:
            values.append(value.strip())
    return values


def model_name(text: str) -> str:
    """The CPU brand string, e.g. ``Intel(R) Xeon(R) Platinum 8480+``; a fallback where absent."""
    names = _field_values(text, "model name") or _field_values(text, "Processor")
    return names[0] if names else (platform.processor() or platform.machine() or "unknown CPU")


def socket_count(text: str) -> int:
    """Number of physical packages (distinct ``physical id`` values); 1 where unknown."""
    return max(1, len(set(_field_values(text, "physical id"))))


def logical_cpus() -> int:
    return os.cpu_count() or 1
