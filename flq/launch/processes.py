"""The launcher's child processes: each in its own session, its output in a log file, stopped by pid.

Flower's SuperLink and SuperNodes start ServerApp and ClientApp processes of their own, some in
new sessions, so a child's process group is not all of its tree: ``refresh`` records every
descendant while the child runs (by parent pid, from /proc) and ``stop`` signals the group and
each recorded pid, never a process found by name. A recorded pid is only signalled while it is
the same process (its start time in /proc is unchanged), so a reused pid is left alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def is_running(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` is a live process (not a zombie), and the same one if ``started`` is given."""
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cpus_allowed(pid: int) -> frozenset[int] | None:
    """The CPUs ``pid`` may run on, as the kernel enforces them (None: gone)."""
    try:
        return frozenset(os.sched_getaffinity(pid))
    except OSError:
        return None


class Child:
    """One started process: ``cmd`` in its own session, stdout and stderr appended to ``log``."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> None:
        self.name, self.cmd, self.log = name, list(cmd), Path(log)
        self._fh = open(self.log, "ab")
        self.popen = subprocess.Popen(
            self.cmd, env=env, cwd=cwd, stdout=self._fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started = start_time(self.popen.pid)
        self.known: dict[int, int | None] = {}  # descendant pid -> its start time
        self.cpus_seen: set[int] = set()  # union of the CPUs its processes were allowed, while watched

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def refresh(self) -> None:
        """Record the descendants it has now, and the CPUs its whole tree may use."""
        if not self.alive():
            return  # once reaped its pid may be someone else's: keep what was seen
        for pid in [self.pid, *descendants(self.pid)]:
            if pid != self.pid and pid not in self.known:
                self.known[pid] = start_time(pid)
            cpus = cpus_allowed(pid)
            if cpus:
                self.cpus_seen |= cpus

    def pids(self) -> dict[int, int | None]:
        """Every pid this child was seen with (itself first), and its start time."""
        return {self.pid: self.started, **self.known}

    def leftovers(self) -> list[int]:
        return [pid for pid, started in self.pids().items() if is_running(pid, started)]

    def _signal(self, sig: int) -> None:
        self.refresh()
        if self.alive():
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
        for pid, started in self.known.items():
            if is_running(pid, started):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM to its group and every recorded descendant, SIGKILL to whatever is left after ``grace``."""
        stop_all([self], grace)

    def _busy(self) -> bool:
        return self.alive() or bool(self.leftovers())

    def _reap(self) -> None:
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            pass
        self._fh.close()

    def wait_for(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``ready`` until true; raise if the child exits first or past ``timeout`` (a hang guard)."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.alive():
                raise ChildFailed(f"{self.name} exited ({self.returncode}) before {what}; see {self.log}")
            if time.monotonic() > deadline:
                raise ChildFailed(f"{self.name}: no {what} within {timeout:.0f} s; see {self.log}")
            time.sleep(0.3)

    def wait_for_line(self, needle: str, timeout: float) -> None:
        self.wait_for(lambda: needle in self.text(), timeout, repr(needle))


def stop_all(children: list[Child], grace: float = 15.0) -> None:
    """Stop several children at once, in the order given (SIGTERM each, then wait for all):
    a deployment's processes wind down together instead of one grace period after another."""
    for child in children:
        child._signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(c._busy() for c in children):
        time.sleep(0.2)
    for child in children:
        if child._busy():
            child._signal(signal.SIGKILL)
        child._reap()


class ChildFailed(RuntimeError):
    """A child exited, or did not get ready, while the launcher waited for it."""
