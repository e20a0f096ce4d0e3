"""Real subprocesses for tests and benchmarks: free ports, Flower's environment, ``Proc``.

Every process is started in its own session (so its own process group) with its output in a
log file, and stopped by its own pid and group, plus any process Flower detached from it (found
by parent pid while it ran), never by name. Timeouts are hang guards, never measurements.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from flq.launch.processes import descendants  # one owner: the launcher ships it

BIN = Path(sys.executable).parent  # the virtualenv's commands: flwr, flower-superlink, flq-superlink, ...
T = TypeVar("T")


class HarnessError(RuntimeError):
    """A process exited, or did not get ready, while the harness waited for it."""


def free_port() -> int:
    """A port number free on 127.0.0.1 for TCP and UDP at once (HTTP APIs and QUIC share one number)."""
    for _ in range(100):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise HarnessError("no free port")


def flower_env(flwr_home: Path, **extra: str | None) -> dict[str, str]:
    """This process's environment for Flower's commands: their own ``FLWR_HOME``, no update check,
    telemetry or runtime dependency installation, unbuffered output, this virtualenv first on PATH.
    ``extra`` adds variables; a value of None removes one."""
    env = {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def wait_for(predicate: Callable[[], T], what: str, timeout: float = 120.0, proc: Proc | None = None) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; fail past the hang
    guard, or at once if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and not proc.alive():
            raise HarnessError(f"{proc.name} exited while waiting for {what}:\n{proc.text()[-3000:]}")
        time.sleep(0.3)
    raise HarnessError(
        f"timed out after {timeout:.0f}s waiting for {what}"
        + (f"; {proc.name} said:\n{proc.text()[-3000:]}" if proc is not None else "")
    )


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class Proc:
    """A subprocess in its own session, its stdout and stderr appended to ``log``."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> None:
        self.name, self.log = name, Path(log)
        self._fh = open(self.log, "ab")
        self.popen = subprocess.Popen(
            cmd, env=env, stdout=self._fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd
        )
        self.known: set[int] = set()  # descendants seen while it ran

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_until(self, predicate: Callable[[], T], what: str, timeout: float = 120.0) -> T:
        return wait_for(predicate, what, timeout, proc=self)

    def wait_for_line(self, needle: str, timeout: float = 120.0) -> None:
        """Wait until ``needle`` appears in the log."""
        self.wait_until(lambda: needle in self.text(), f"{needle!r} in {self.name}'s log", timeout)

    def wait_for_port(self, port: int, host: str = "127.0.0.1", timeout: float = 120.0) -> None:
        """Wait until something accepts TCP connections on ``host:port``."""
        self.wait_until(lambda: port_open(port, host), f"{self.name} on {host}:{port}", timeout)

    def _signal_all(self, sig: int) -> None:
        if self.alive():  # once reaped, its pid may belong to someone else: keep the children we saw
            self.known.update(descendants(self.popen.pid))
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass
        for pid in self.known:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL: a crash, no goodbye."""
        self._signal_all(signal.SIGKILL)
        self.popen.wait(30)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM, then SIGKILL to whatever is left (Flower's detached children included)."""
        if self.alive():
            self._signal_all(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self._signal_all(signal.SIGKILL)
        self.popen.wait(30)
        self._fh.close()

    def wait(self, timeout: float) -> str:
        """Wait for the process to exit by itself (SIGKILL past the hang guard); return its log."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(
                f"{self.name} still running after {timeout:.0f}s (hang guard):\n{self.text()[-3000:]}"
            ) from None
        finally:
            if self.alive():
                self.kill()
            self._fh.close()
        return self.text()

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
