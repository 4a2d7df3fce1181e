"""`wattwise run -- COMMAND` and signals, with real processes and real signals.

Regressions (issue 14, item 3): SIGTERM to `wattwise run` killed it, left the command running
as an orphan and recorded the run with 0 Wh; SIGINT sent to `wattwise run` alone was ignored
and the command ran to its end, recorded `finished`. Every wait here is on a condition (a file
the command writes, a line on wattwise's stderr, a process gone), never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from wattwise.ledger import Ledger

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(signal, "sigtimedwait"), reason="Linux signal handling"),
]

WAIT_S = 60.0  # generous: the machine may be loaded

# The measured command: sets up its signal handling (mode), then writes "PID MONOTONIC" to
# `pid` (atomically) and runs until the file `release` appears. Signals it handles are noted,
# one line each, in `got`; "released" is noted when it ends by itself.
COMMAND = r"""
import os, pathlib, signal, sys, time
here, mode = pathlib.Path(sys.argv[1]), sys.argv[2]

def note(line):
    with open(here / "got", "a") as f:
        f.write(line + "\n")

def on_signal(signum, frame):
    note(signal.Signals(signum).name)
    if mode == "trap-term-exit-0":
        sys.exit(0)

if mode == "trap-term-exit-0":
    signal.signal(signal.SIGTERM, on_signal)
elif mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif mode == "count-int":
    signal.signal(signal.SIGINT, on_signal)
(here / "pid.tmp").write_text(f"{os.getpid()} {time.monotonic()}")
(here / "pid.tmp").rename(here / "pid")
deadline = time.monotonic() + 120
while not (here / "release").exists() and time.monotonic() < deadline:
    time.sleep(0.02)
note("released")
"""

# Becomes `wattwise run ...` (argv[3:]) with SIGHUP, SIGINT and SIGTERM at their defaults and
# none blocked, whatever the test process inherited (run by `nohup`, or as a script's
# background job, it ignores SIGHUP or SIGINT), except those named in argv[2] (comma-separated),
# which are ignored; with argv[1] == "terminal", its stdin (a pty) becomes the controlling
# terminal of the new session it leads first: `wattwise run` typed in a shell.
LAUNCHER = r"""
import fcntl, os, signal, sys, termios
if sys.argv[1] == "terminal":
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
signal.pthread_sigmask(signal.SIG_SETMASK, [])
for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
    ignored = sig.name in sys.argv[2].split(",")
    signal.signal(sig, signal.SIG_IGN if ignored else signal.SIG_DFL)
os.execvp(sys.argv[3], sys.argv[3:])
"""


def launcher(terminal: bool = False, ignored: str = "") -> list[str]:
    return [sys.executable, "-c", LAUNCHER, "terminal" if terminal else "-", ignored or "-"]


def wait_for(
    condition: Callable[[], object],
    what: str,
    proc: subprocess.Popen,
    output: Callable[[], str] = lambda: "",
) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if proc.poll() is not None and not condition():
            raise AssertionError(f"wattwise ended ({proc.returncode}) before {what}: {output()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def gone(pid: int) -> bool:
    """No such process (or only a zombie waiting for init to reap it)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


class Launch:
    """`wattwise run --ledger L -- python COMMAND DIR MODE` in a process of its own."""

    def __init__(
        self, tmp_path: pathlib.Path, mode: str, *, terminal: bool, ignored: str = ""
    ) -> None:
        self.dir = tmp_path
        self.ledger = tmp_path / "ledger.db"
        (tmp_path / "command.py").write_text(COMMAND)
        argv = [sys.executable, "-m", "wattwise", "run", "--ledger", str(self.ledger), "--"]
        argv += [sys.executable, str(tmp_path / "command.py"), str(tmp_path), mode]
        argv = [*launcher(terminal, ignored), *argv]
        self.output = bytearray()
        self._master: int | None = None
        self._reader: threading.Thread | None = None
        self.t_launch = time.monotonic()
        if terminal:
            master, slave = os.openpty()
            self.proc = subprocess.Popen(
                argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
                cwd=tmp_path,
            )
            os.close(slave)
            self._master = master
            self._reader = threading.Thread(target=self._read_terminal, daemon=True)
            self._reader.start()
        else:  # a new session: no controlling terminal, as in a batch job or a container
            self._err = open(tmp_path / "stderr.txt", "wb")  # noqa: SIM115
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._err,
                start_new_session=True,
                cwd=tmp_path,
            )
        self.t_end: float | None = None

    def _read_terminal(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 4096)
            except OSError:  # EIO: every process holding the terminal ended
                return
            if not chunk:
                return
            self.output += chunk

    def stderr(self) -> str:
        if self._master is not None:
            return self.output.decode(errors="replace")
        return (self.dir / "stderr.txt").read_text(errors="replace")

    def command_pid(self) -> tuple[int, float]:
        """The command's pid and its monotonic time when it was ready, once it is."""
        pid_file = self.dir / "pid"
        wait_for(pid_file.exists, "the command to start", self.proc, self.stderr)
        pid, stamp = pid_file.read_text().split()
        return int(pid), float(stamp)

    def got(self) -> list[str]:
        path = self.dir / "got"
        return path.read_text().splitlines() if path.exists() else []

    def type_on_terminal(self, data: bytes) -> None:
        assert self._master is not None
        os.write(self._master, data)

    def wait(self) -> int:
        code = self.proc.wait(timeout=WAIT_S)
        self.t_end = time.monotonic()
        return code

    def run(self):
        with Ledger(self.ledger) as book:
            (rec,) = book.list_runs()
        return rec

    def close(self) -> None:
        (self.dir / "release").touch()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        pid_file = self.dir / "pid"
        if pid_file.exists():  # never leave the command behind, even when a test failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        if self._master is not None:
            with contextlib.suppress(OSError):
                os.close(self._master)
        else:
            self._err.close()


@pytest.fixture
def launch(tmp_path) -> Iterator[Callable[..., Launch]]:
    started: list[Launch] = []

    def start(mode: str = "plain", *, terminal: bool = False, ignored: str = "") -> Launch:
        started.append(Launch(tmp_path, mode, terminal=terminal, ignored=ignored))
        return started[-1]

    yield start
    for item in started:
        item.close()


def assert_interrupted(run, signum: int, launched: Launch, ready_s: float, signal_s: float):
    """Recorded `interrupted`, the signal named, energy measured, the duration that of the
    span measured: at least from the command being ready to the signal sent (it was still
    running then), at most the whole life of the wattwise process."""
    assert run.status == "interrupted"
    assert signal.Signals(signum).name in (run.reason or ""), run.reason
    assert run.ended_at is not None
    assert run.energy_j > 0
    assert signal_s - ready_s <= run.duration_s <= launched.t_end - launched.t_launch


@pytest.mark.parametrize(
    ("signum", "mode", "exit_code", "child_said"),
    [
        (signal.SIGTERM, "plain", 128 + signal.SIGTERM, []),
        (signal.SIGINT, "plain", 128 + signal.SIGINT, []),
        (signal.SIGHUP, "plain", 128 + signal.SIGHUP, []),
        # the command handled the signal and ended well: the run was still asked to stop
        (signal.SIGTERM, "trap-term-exit-0", 0, ["SIGTERM"]),
    ],
    ids=["SIGTERM", "SIGINT", "SIGHUP", "SIGTERM-trapped-exit-0"],
)
def test_a_signal_to_wattwise_reaches_the_command_and_the_run_is_interrupted(
    launch, signum, mode, exit_code, child_said
):
    """No terminal (a batch job, a container): the command leads its own process group."""
    launched = launch(mode)
    pid, ready_s = launched.command_pid()
    signal_s = time.monotonic()
    launched.proc.send_signal(signum)
    assert launched.wait() == exit_code, launched.stderr()
    assert gone(pid), "the command outlived wattwise"
    assert launched.got() == child_said
    assert_interrupted(launched.run(), signum, launched, ready_s, signal_s)
    assert f"{signal.Signals(signum).name} passed on to the command" in launched.stderr()


def test_a_command_that_ignores_sigterm_is_waited_for(launch):
    """Like a shell, wattwise neither kills the command nor leaves it running: it waits."""
    launched = launch("ignore-term")
    pid, ready_s = launched.command_pid()
    signal_s = time.monotonic()
    launched.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "SIGTERM passed on" in launched.stderr(), "wattwise's notice", launched.proc)
    assert "kill -KILL" in launched.stderr()  # how to stop it at once
    assert launched.proc.poll() is None and not gone(pid)
    (launched.dir / "release").touch()
    assert launched.wait() == 0, launched.stderr()
    assert launched.got() == ["released"]  # it ran on to its own end
    assert_interrupted(launched.run(), signal.SIGTERM, launched, ready_s, signal_s)
    assert launched.run().reason == "SIGTERM received; the command exited with code 0"


def test_the_signal_reaches_the_processes_the_command_started(launch, tmp_path):
    """Without a terminal the command's whole process group gets the signal: a shell script's
    own child is not left running."""
    script = tmp_path / "script.sh"
    script.write_text(
        f'sleep 300 & echo "$!" > "{tmp_path}/grandchild"\n'
        f'echo "$$ 0" > "{tmp_path}/pid.tmp"; mv "{tmp_path}/pid.tmp" "{tmp_path}/pid"\n'
        "wait\n"
    )
    ledger = tmp_path / "ledger.db"
    argv = [sys.executable, "-m", "wattwise", "run", "--ledger", str(ledger), "--"]
    proc = subprocess.Popen(
        [*launcher(), *argv, "sh", str(script)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        cwd=tmp_path,
    )
    grandchild: int | None = None
    try:
        wait_for((tmp_path / "pid").exists, "the script to start", proc)
        grandchild = int((tmp_path / "grandchild").read_text())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=WAIT_S)
        assert proc.returncode == 128 + signal.SIGTERM, err
        wait_for(lambda: gone(grandchild), "the script's child to end", proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if grandchild is not None and not gone(grandchild):
            os.kill(grandchild, signal.SIGKILL)
    with Ledger(ledger) as book:
        (run,) = book.list_runs()
    assert (run.status, run.reason) == (
        "interrupted",
        "SIGTERM received; the command was killed by SIGTERM",
    )


def test_ctrl_c_on_the_terminal_reaches_the_command_once(launch):
    """In a terminal, Ctrl+C goes to the whole foreground process group, the command included:
    wattwise must not send it a second SIGINT (a program that stops at its second Ctrl+C would
    stop at once). Two SIGINTs that are both pending before the command runs merge into one,
    so wattwise's notice of what it did is checked as well as the count."""
    launched = launch("count-int", terminal=True)
    pid, ready_s = launched.command_pid()
    signal_s = time.monotonic()
    launched.type_on_terminal(b"\x03")  # Ctrl+C
    wait_for(lambda: "wattwise: SIGINT" in launched.stderr(), "wattwise's notice", launched.proc)
    wait_for(lambda: "SIGINT" in launched.got(), "the command's SIGINT", launched.proc)
    (launched.dir / "release").touch()
    assert launched.wait() == 0, launched.stderr()
    assert launched.got() == ["SIGINT", "released"], launched.stderr()
    assert "SIGINT from the terminal reached the command" in launched.stderr()
    assert gone(pid)
    assert_interrupted(launched.run(), signal.SIGINT, launched, ready_s, signal_s)


def test_in_a_terminal_a_signal_sent_to_wattwise_alone_is_passed_on(launch):
    """`kill PID` of wattwise run from a terminal: the command shares wattwise's process group
    (it may read the terminal) and gets the signal from wattwise."""
    launched = launch("plain", terminal=True)
    pid, ready_s = launched.command_pid()
    signal_s = time.monotonic()
    launched.proc.send_signal(signal.SIGTERM)
    assert launched.wait() == 128 + signal.SIGTERM, launched.stderr()
    assert gone(pid)
    assert f"SIGTERM passed on to the command (pid {pid})" in launched.stderr()
    assert_interrupted(launched.run(), signal.SIGTERM, launched, ready_s, signal_s)


def test_a_signal_as_soon_as_the_run_is_recorded_leaves_nothing_running(launch):
    """The signal may come before the command started (while the sensors open and the run is
    recorded): then the command is not started; after, it is passed on (a Python command still
    starting up ends with code 1 on it). Either way the run ends `interrupted` naming the
    signal, wattwise exits as its reason says, and nothing is left running."""
    launched = launch("plain")
    wait_for(
        lambda: launched.ledger.exists() and Ledger(launched.ledger).list_runs(),
        "the run to be recorded",
        launched.proc,
        launched.stderr,
    )
    launched.proc.send_signal(signal.SIGINT)
    code = launched.wait()
    run = launched.run()
    assert run.status == "interrupted" and run.ended_at is not None
    expected = {
        "SIGINT received; the command was not started": 128 + signal.SIGINT,
        "SIGINT received; the command was killed by SIGINT": 128 + signal.SIGINT,
        "SIGINT received; the command exited with code 1": 1,
    }
    assert run.reason in expected, run.reason
    assert code == expected[run.reason], launched.stderr()
    if (launched.dir / "pid").exists():
        assert gone(int((launched.dir / "pid").read_text().split()[0]))


def test_a_signal_ignored_when_wattwise_started_stays_ignored(launch):
    """`nohup wattwise run ...` (SIGHUP ignored): as a shell does, wattwise and the command keep
    ignoring SIGHUP (blocking it to wait for it would have queued it instead); SIGTERM still
    works, and the run's reason names it."""
    launched = launch("plain", ignored="SIGHUP")
    pid, ready_s = launched.command_pid()
    launched.proc.send_signal(signal.SIGHUP)
    signal_s = time.monotonic()
    launched.proc.send_signal(signal.SIGTERM)
    assert launched.wait() == 128 + signal.SIGTERM, launched.stderr()
    assert gone(pid)
    assert "SIGHUP" not in launched.stderr()
    assert_interrupted(launched.run(), signal.SIGTERM, launched, ready_s, signal_s)
    assert launched.run().reason == "SIGTERM received; the command was killed by SIGTERM"
