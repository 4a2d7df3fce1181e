"""Scheduler metadata of this process: who runs it, and which job of which scheduler it belongs to.

``collect()`` reads the environment (and at most the Kubernetes service-account namespace file):
no subprocess, no network, nothing that can fail or take time. The ledger records its result with
every run (``Ledger.begin_run``), so a lab's ledger joins with the scheduler's own accounting,
e.g. ``sacct -j <job_id>``.

The variables read (names as SLURM's sbatch/srun, torchrun and the Kubernetes downward-API
conventions give them):

- SLURM (when ``SLURM_JOB_ID`` or the older ``SLURM_JOBID`` is set): ``SLURM_JOB_ID``,
  ``SLURM_ARRAY_JOB_ID``, ``SLURM_ARRAY_TASK_ID``, ``SLURM_JOB_ACCOUNT``, ``SLURM_JOB_PARTITION``,
  ``SLURM_JOB_NODELIST`` (else ``SLURM_NODELIST``), ``SLURM_JOB_USER``, ``SLURM_STEP_ID`` (else
  ``SLURM_STEPID``), ``SLURM_JOB_NAME``, ``SLURM_CLUSTER_NAME``, ``SLURMD_NODENAME``,
  ``SLURM_PROCID``.
- Kubernetes (only when ``KUBERNETES_SERVICE_HOST`` is set, as in every pod): the pod from
  ``POD_NAME`` (downward API) else ``HOSTNAME``; the namespace from ``POD_NAMESPACE`` else the
  service-account file; the node from ``NODE_NAME`` when the pod spec passes it.
- torchrun / torch elastic (when ``TORCHELASTIC_RUN_ID`` is set, or ``RANK``, ``GROUP_RANK``,
  ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` all are): ``TORCHELASTIC_RUN_ID``,
  ``TORCHELASTIC_RESTART_COUNT``, ``TORCHELASTIC_MAX_RESTARTS``, ``RANK``, ``LOCAL_RANK``,
  ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ``ROLE_NAME``, ``ROLE_RANK``.

The result::

    {"user": ..., "job_id": ..., "os_user": ...,
     "slurm": {...}, "kubernetes": {...}, "torchrun": {...}}   # sections only when present

``user`` is ``SLURM_JOB_USER``, else the OS user; ``job_id`` is SLURM's job as ``sacct -j``
takes it (``123``, or ``123_4`` for task 4 of array job 123), else the Kubernetes pod, else the
torchrun run id (not its default ``none``), else None.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["FIELDS", "NAMESPACE_FILE", "collect", "flatten"]

NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

# section -> field -> the variables read, first one set wins
_SLURM: dict[str, tuple[str, ...]] = {
    "job_id": ("SLURM_JOB_ID", "SLURM_JOBID"),
    "array_job_id": ("SLURM_ARRAY_JOB_ID",),
    "array_task_id": ("SLURM_ARRAY_TASK_ID",),
    "account": ("SLURM_JOB_ACCOUNT",),
    "partition": ("SLURM_JOB_PARTITION",),
    "node_list": ("SLURM_JOB_NODELIST", "SLURM_NODELIST"),
    "user": ("SLURM_JOB_USER",),
    "step_id": ("SLURM_STEP_ID", "SLURM_STEPID"),
    "job_name": ("SLURM_JOB_NAME",),
    "cluster": ("SLURM_CLUSTER_NAME",),
    "node_name": ("SLURMD_NODENAME",),
    "proc_id": ("SLURM_PROCID",),
}
_TORCHRUN: dict[str, tuple[str, ...]] = {
    "run_id": ("TORCHELASTIC_RUN_ID",),
    "restart_count": ("TORCHELASTIC_RESTART_COUNT",),
    "max_restarts": ("TORCHELASTIC_MAX_RESTARTS",),
    "rank": ("RANK",),
    "local_rank": ("LOCAL_RANK",),
    "world_size": ("WORLD_SIZE",),
    "local_world_size": ("LOCAL_WORLD_SIZE",),
    "group_rank": ("GROUP_RANK",),
    "role": ("ROLE_NAME",),
    "role_rank": ("ROLE_RANK",),
}
_TORCHRUN_TEXT = frozenset({"run_id", "role"})  # every other torchrun field is a whole number
_KUBERNETES = ("pod", "namespace", "node")

FIELDS: dict[str, tuple[str, ...]] = {
    "slurm": tuple(_SLURM),
    "kubernetes": _KUBERNETES,
    "torchrun": tuple(_TORCHRUN),
}
"""Every field a section may hold, in a fixed order (the flattened CSV columns)."""

_TORCHRUN_DEFAULT_RUN_ID = "none"  # torchrun's --rdzv-id when none is given: not an id


def collect(
    environ: Mapping[str, str] | None = None,
    *,
    namespace_file: str | os.PathLike[str] = NAMESPACE_FILE,
) -> dict[str, Any]:
    """The scheduler metadata of this process (``environ``: default ``os.environ``).

    Never raises: a value that cannot be read is left out (None)."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    slurm = _section(env, _SLURM) if _first(env, _SLURM["job_id"]) else None
    kubernetes = _kubernetes(env, namespace_file) if env.get("KUBERNETES_SERVICE_HOST") else None
    torchrun = _torchrun(env)
    os_user = _os_user(env)
    out["user"] = (slurm or {}).get("user") or os_user
    out["job_id"] = _job_id(slurm, kubernetes, torchrun)
    out["os_user"] = os_user
    for name, section in (("slurm", slurm), ("kubernetes", kubernetes), ("torchrun", torchrun)):
        if section is not None:
            out[name] = section
    return out


def flatten(scheduler: Mapping[str, Any]) -> dict[str, Any]:
    """Every field of every section as ``<section>_<field>`` (None where absent), in FIELDS
    order: the same columns whatever the run recorded (runs.csv)."""
    flat: dict[str, Any] = {}
    for section, names in FIELDS.items():
        values = scheduler.get(section) or {}
        for name in names:
            flat[f"{section}_{name}"] = values.get(name)
    return flat


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = env.get(name)
        if value is not None and value.strip():
            return value.strip()
    return None


def _section(env: Mapping[str, str], table: Mapping[str, tuple[str, ...]]) -> dict[str, Any]:
    return {field: _first(env, names) for field, names in table.items()}


def _torchrun(env: Mapping[str, str]) -> dict[str, Any] | None:
    launched = env.get("TORCHELASTIC_RUN_ID") is not None or all(
        env.get(name) is not None
        for name in ("RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    )
    if not launched:
        return None
    section = _section(env, _TORCHRUN)
    for field, value in section.items():
        if field not in _TORCHRUN_TEXT and value is not None:
            # a value that is no whole number is kept as given: an oddity beats a lost value
            with contextlib.suppress(ValueError):
                section[field] = int(value)
    return section


def _kubernetes(env: Mapping[str, str], namespace_file: str | os.PathLike[str]) -> dict[str, Any]:
    namespace = _first(env, ("POD_NAMESPACE",))
    if namespace is None:
        try:
            with open(namespace_file, encoding="utf-8") as handle:
                namespace = handle.read(256).strip() or None
        except (OSError, UnicodeDecodeError):
            namespace = None
    return {
        "pod": _first(env, ("POD_NAME", "HOSTNAME")),
        "namespace": namespace,
        "node": _first(env, ("NODE_NAME",)),
    }


def _job_id(
    slurm: dict[str, Any] | None,
    kubernetes: dict[str, Any] | None,
    torchrun: dict[str, Any] | None,
) -> str | None:
    if slurm is not None:
        array_job, task = slurm.get("array_job_id"), slurm.get("array_task_id")
        if array_job and task:
            return f"{array_job}_{task}"  # as sacct -j and squeue name an array task
        return slurm.get("job_id")
    if kubernetes is not None and kubernetes.get("pod"):
        return kubernetes["pod"]
    if torchrun is not None:
        run_id = torchrun.get("run_id")
        if run_id and run_id != _TORCHRUN_DEFAULT_RUN_ID:
            return str(run_id)
    return None


def _os_user(env: Mapping[str, str]) -> str | None:
    """The user this process runs as: the password database entry of its uid, else the
    login variables getpass reads; None when neither knows (a container's anonymous uid)."""
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError, OSError, AttributeError):
        pass
    return _first(env, ("LOGNAME", "USER", "LNAME", "USERNAME"))
