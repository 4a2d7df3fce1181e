"""Which runs of a (lab-sized) ledger a command works on: ``--user --job --tag --architecture
--since --until --status``.

A :class:`RunFilter` is made from the command line's strings by :meth:`RunFilter.from_cli`,
which checks each (BadInput naming the bad value and what is accepted). ``Ledger.list_runs``
narrows in SQL with :meth:`RunFilter.sql` (the indexed ``runs.user_name``, ``runs.job_id`` and
``runs.started_at``) and then applies :meth:`RunFilter.matches` to what it read, which settles the
one thing SQL cannot know: whether a ``running`` run's process is gone (``interrupted``).

Meaning of each field (all given fields must hold):

- ``user``: the run's user (``SLURM_JOB_USER``, else the OS user; see ``wattwise.scheduler``).
- ``job``: the run's job id, or an array job's id, which matches all its tasks (``123`` matches
  ``123`` and ``123_4``, as ``sacct -j 123`` does).
- ``tag``: one of the run's tags. ``architecture``: the run's label, exactly.
- ``since`` / ``until``: the run *started* at or after / at or before that moment (UTC). A date
  alone means that whole day: ``--since 2026-11-02`` from its midnight, ``--until 2026-11-02``
  to its end. Relative forms (``90s``, ``30m``, ``12h``, ``7d``, ``2w``) count back from now.
- ``status``: ``running``, ``finished``, ``failed`` or ``interrupted`` (as ``wattwise runs``
  shows it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from datetime import UTC, datetime, time, timedelta
from typing import Any

from wattwise.errors import BadInput
from wattwise.ledger import STATUSES

__all__ = ["RunFilter"]

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIME_ACCEPTED = (
    "an ISO date (2026-11-02) or date and time (2026-11-02T09:30, UTC unless it has an offset), "
    "or a time back from now: a number and s, m, h, d or w (90s, 30m, 12h, 7d, 2w)"
)


@dataclass(frozen=True)
class RunFilter:
    """Conditions on runs; None means "any". ``since``/``until`` are aware datetimes (UTC)."""

    user: str | None = None
    job: str | None = None
    tag: str | None = None
    architecture: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    status: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise BadInput(f"--status {self.status!r} is not one of {', '.join(STATUSES)}")
        for name in ("since", "until"):
            moment = getattr(self, name)
            if moment is not None and (not isinstance(moment, datetime) or moment.tzinfo is None):
                raise BadInput(f"{name}={moment!r}: expected a datetime with a time zone")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise BadInput(
                f"--since {self.since.isoformat()} is after --until {self.until.isoformat()}: "
                "no run can match; accepted: a since at or before the until"
            )

    @classmethod
    def from_cli(
        cls,
        *,
        user: str | None = None,
        job: str | None = None,
        tag: str | None = None,
        architecture: str | None = None,
        since: str | None = None,
        until: str | None = None,
        status: str | None = None,
        now: datetime | None = None,
    ) -> RunFilter:
        """A filter from the command line's strings (None: not given), each checked."""
        now = now or datetime.now(UTC)
        texts = {"user": user, "job": job, "tag": tag, "architecture": architecture}
        for name, value in texts.items():
            if value is not None and not value.strip():
                raise BadInput(f"--{name} {value!r} is empty; accepted: a non-empty {name}")
        if status is not None:
            status = status.strip().lower()
            if status not in STATUSES:
                raise BadInput(f"--status {status!r} is not one of {', '.join(STATUSES)}")
        return cls(
            **{k: None if v is None else v.strip() for k, v in texts.items()},
            since=None if since is None else _moment("since", since, now, end_of_day=False),
            until=None if until is None else _moment("until", until, now, end_of_day=True),
            status=status,
        )

    @property
    def empty(self) -> bool:
        """True when no condition is set (every run matches)."""
        return all(getattr(self, f.name) is None for f in fields(self))

    def describe(self) -> str:
        """The conditions as command-line options (for messages), e.g. ``--user alice``."""
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                text = value.isoformat() if isinstance(value, datetime) else value
                parts.append(f"--{f.name} {text}")
        return " ".join(parts)

    def matches(self, record: Any) -> bool:
        """Whether a ``RunRecord`` (its status as listed: interrupted when its process is gone)
        meets every condition."""
        scheduler = getattr(record, "scheduler", None) or {}
        if self.user is not None and scheduler.get("user") != self.user:
            return False
        if self.job is not None and not _job_matches(scheduler.get("job_id"), self.job):
            return False
        if self.tag is not None and self.tag not in record.tags:
            return False
        if self.architecture is not None and record.architecture != self.architecture:
            return False
        if self.since is not None or self.until is not None:
            started = datetime.fromisoformat(record.started_at)
            if self.since is not None and started < self.since:
                return False
            if self.until is not None and started > self.until:
                return False
        return self.status is None or record.status == self.status

    def sql(self, alias: str = "") -> tuple[str, list[Any]]:
        """SQLite condition on the ``runs`` table (``alias``: e.g. ``"r."``) and its parameters.

        It selects a superset of the matching runs: for ``running`` and ``interrupted`` it keeps
        the ``running`` rows, whose process only :meth:`matches` can check (list_runs does)."""
        a = alias
        terms: list[str] = []
        params: list[Any] = []
        if self.user is not None:
            terms.append(f"{a}user_name = ?")
            params.append(self.user)
        if self.job is not None:
            # an array job's tasks are stored as <job>_<task>: the range [job_, job`) holds
            # exactly the ids that start with job_ ('`' follows '_'), and it uses the index
            terms.append(f"({a}job_id = ? OR ({a}job_id >= ? AND {a}job_id < ?))")
            params += [self.job, self.job + "_", self.job + "`"]
        if self.tag is not None:
            terms.append(f"EXISTS (SELECT 1 FROM json_each({a}tags) WHERE value = ?)")
            params.append(self.tag)
        if self.architecture is not None:
            terms.append(f"{a}architecture = ?")
            params.append(self.architecture)
        # started_at is stored as datetime.isoformat() in UTC, which sorts as time does
        if self.since is not None:
            terms.append(f"{a}started_at >= ?")
            params.append(self.since.astimezone(UTC).isoformat())
        if self.until is not None:
            terms.append(f"{a}started_at <= ?")
            params.append(self.until.astimezone(UTC).isoformat())
        if self.status in ("finished", "failed"):
            terms.append(f"{a}status = ?")
            params.append(self.status)
        elif self.status == "running":
            terms.append(f"{a}status = 'running'")
        elif self.status == "interrupted":
            terms.append(f"{a}status IN ('running', 'interrupted')")
        return (" AND ".join(terms) or "1"), params


def _job_matches(job_id: str | None, wanted: str) -> bool:
    return job_id is not None and (job_id == wanted or job_id.startswith(wanted + "_"))


def _moment(name: str, text: str, now: datetime, *, end_of_day: bool) -> datetime:
    """``--since``/``--until`` text -> an aware datetime (UTC)."""
    value = text.strip()
    relative = _RELATIVE.match(value)
    if relative:
        seconds = float(relative.group(1)) * _UNIT_S[relative.group(2).lower()]
        return now.astimezone(UTC) - timedelta(seconds=seconds)
    try:
        if _DATE_ONLY.match(value):
            day = datetime.fromisoformat(value).date()
            return datetime.combine(day, time.max if end_of_day else time.min, tzinfo=UTC)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadInput(f"--{name} {text!r} is not a time; accepted: {_TIME_ACCEPTED}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the ledger shows and stores UTC
    return moment.astimezone(UTC)
