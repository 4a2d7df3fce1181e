"""Run the command of ``wattwise run -- COMMAND`` the way a shell would, signals included.

While wattwise measures a command, SIGHUP, SIGINT and SIGTERM are blocked in every wattwise
thread and taken with ``sigtimedwait``, which says who sent each one (``si_code``). Each is
passed on to the command, except where the command has it already:

- With a controlling terminal, the command shares wattwise's process group, as a command run
  from the shell does, so it can read the terminal and Ctrl+C / Ctrl+Z reach it as usual. A
  signal the terminal sends (Ctrl+C, hang-up: ``si_code == SI_KERNEL``) goes to that whole
  group and so reached the command already: it is not sent again. A signal a process sends to
  wattwise (``kill PID``, a container runtime's SIGTERM) is passed to the command's pid.
- Without one (batch jobs, containers, services), the command leads a process group of its own
  and every signal is passed to that group, so the processes it started get it too.

A signal a process sends to every process of a job (``kill -TERM -PGID`` with a terminal, a
cgroup kill such as Slurm's at its time limit) reaches the command directly and once more
through wattwise: there is no telling those apart from a signal sent to wattwise alone.

wattwise then waits for the command to end, like a shell: it never kills it, nor leaves it
running. A second signal is handled as the first (a program that ends at its second Ctrl+C
still does); a command that ignores SIGTERM is waited for; the message on stderr tells how to
stop it at once (``kill -KILL``). A signal that arrives before the command started (while the
sensors open) means the command is not started at all. A signal ignored when wattwise started
(``nohup``, a script's background job) stays ignored, as a shell leaves it.

Platforms without ``sigtimedwait`` (macOS) only get the terminal's Ctrl+C: the command, in
wattwise's process group, has it too; wattwise waits for it to end.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

FORWARDED = tuple(
    getattr(signal, name) for name in ("SIGHUP", "SIGINT", "SIGTERM") if hasattr(signal, name)
)
"""The signals passed on to the command."""
SI_KERNEL = 0x80
"""Linux ``si_code`` of a signal the kernel sent, e.g. the terminal to its foreground group."""
POLL_S = 0.25
"""Longest wait between two looks at the command (SIGCHLD usually wakes the wait at once)."""
# Python ignores these at start-up; the command gets them back at their default, as
# subprocess's restore_signals does.
_RESTORED = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@dataclass
class Outcome:
    """How the command ended and what wattwise received meanwhile."""

    returncode: int | None
    """As ``subprocess`` gives it: the exit code, or -N when signal N killed the command; None
    when it was not started (a signal came first)."""
    signals: list[int] = field(default_factory=list)
    """The signals wattwise received, in order of arrival."""

    @property
    def exit_code(self) -> int:
        """What a shell reports: the command's exit code, 128 + N when signal N killed it (or,
        not started, the signal that stopped wattwise)."""
        if self.returncode is None:
            return 128 + self.signals[0]
        return 128 - self.returncode if self.returncode < 0 else self.returncode

    @property
    def killed_by(self) -> int | None:
        """The signal that killed the command, if one did."""
        return -self.returncode if self.returncode is not None and self.returncode < 0 else None

    def ended(self) -> str:
        """How the command ended, in words."""
        if self.returncode is None:
            return "was not started"
        if self.killed_by is not None:
            return f"was killed by {signal_name(self.killed_by)}"
        return f"exited with code {self.returncode}"


def has_controlling_terminal() -> bool:
    """Whether this process has a controlling terminal (``/dev/tty`` opens)."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


class Supervisor:
    """``with Supervisor() as sup:`` holds the forwarded signals (blocked in this thread and in
    the threads it starts meanwhile, e.g. the Meter's sampler) until :meth:`run` takes them;
    leaving restores the signal mask. Enter it before any thread that must not take these
    signals is started."""

    def __init__(self, notify: Callable[[str], None] = lambda message: None) -> None:
        self.notify = notify
        self.held = hasattr(signal, "sigtimedwait") and hasattr(os, "posix_spawnp")
        # A signal ignored when wattwise started (`nohup`; a background job of a script, whose
        # shell ignores SIGINT) stays ignored, for the command too, as a shell leaves it:
        # blocking it would make the kernel queue it instead of discarding it.
        self.forwarded = tuple(s for s in FORWARDED if signal.getsignal(s) != signal.SIG_IGN)
        self._old_mask: set[int] | None = None

    def __enter__(self) -> Supervisor:
        if self.held:
            self._old_mask = set(
                signal.pthread_sigmask(signal.SIG_BLOCK, {*self.forwarded, signal.SIGCHLD})
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
            self._old_mask = None

    def run(self, argv: Sequence[str]) -> Outcome:
        """Start ``argv``, pass signals on as the module docstring says, wait for it to end.

        OSError when it cannot be started."""
        if self._old_mask is None:
            return _run_plain(argv)
        early = signal.sigtimedwait(self.forwarded, 0)
        if early is not None:  # before the command started: do not start it
            self.notify(
                f"wattwise: {signal_name(early.si_signo)} received before the command "
                "started; not starting it"
            )
            return Outcome(None, [early.si_signo])
        own_group = not has_controlling_terminal()
        group = {"setpgroup": 0} if own_group else {}
        pid = os.posix_spawnp(
            argv[0],
            list(argv),
            os.environ,
            setsigmask=self._old_mask,
            setsigdef=_RESTORED,
            **group,
        )
        outcome = Outcome(None)
        waiting_for = {*self.forwarded, signal.SIGCHLD}
        while True:
            info = signal.sigtimedwait(waiting_for, POLL_S)
            if info is not None and info.si_signo in self.forwarded:
                outcome.signals.append(info.si_signo)
                self._pass_on(info, pid, own_group, first=len(outcome.signals) == 1)
                continue  # take every signal pending before looking at the command
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                outcome.returncode = os.waitstatus_to_exitcode(status)
                break
        # signals that came with the command's end (a terminal's Ctrl+C that killed it)
        while (info := signal.sigtimedwait(self.forwarded, 0)) is not None:
            outcome.signals.append(info.si_signo)
        return outcome

    def _pass_on(self, info: signal.struct_siginfo, pid: int, own_group: bool, first: bool):
        name = signal_name(info.si_signo)
        if not own_group and info.si_code == SI_KERNEL:
            # the terminal sent it to its foreground process group, the command included
            what = f"{name} from the terminal reached the command (pid {pid}) too"
        else:
            try:
                if own_group:
                    os.killpg(pid, info.si_signo)
                else:
                    os.kill(pid, info.si_signo)
            except ProcessLookupError:  # ended meanwhile: reaped below
                pass
            what = (
                f"{name} passed on to the command ({'process group' if own_group else 'pid'} {pid})"
            )
        force = f"kill -KILL {'-' if own_group else ''}{pid}"
        hint = f"; waiting for it to end (to stop it at once: {force})" if first else ""
        self.notify(f"wattwise: {what}{hint}")


def _run_plain(argv: Sequence[str]) -> Outcome:
    """Without ``sigtimedwait``: the command in wattwise's group; Ctrl+C reaches both, and
    wattwise waits for the command to end."""
    proc = subprocess.Popen(list(argv))
    outcome = Outcome(None)
    while outcome.returncode is None:
        try:
            outcome.returncode = proc.wait()
        except KeyboardInterrupt:
            outcome.signals.append(signal.SIGINT)
    return outcome
