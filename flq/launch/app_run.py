"""Run the app on a running deployment and say whether the run succeeded.

    FLWR_HOME=... python -m flq.launch.app_run --app APP --run-config FILE --nodes N [--rounds-file F]

``flwr run`` exits 0 even when the ServerApp fails, so success is Flower's own status of the run
(``flwr ls --run-id``: ``finished:completed``). Steps: wait until N SuperNodes are online
(``flwr supernode ls``), ``flwr run APP CONNECTION --stream -c FILE`` (its output passed through),
the run id from that output, then its status. Exit 0 only for a completed run. ``flq launch``
runs this as a process, and the Slurm and Compose renderings run the same command.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .commands import CONNECTION
from .progress import Progress, RoundWatcher, format_round

RUN_STARTED = re.compile(r"Successfully started run (\d+)")
COMPLETED = "finished:completed"


def flwr_program() -> str:
    """The ``flwr`` beside this interpreter (a virtualenv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "flwr"
    return str(beside) if beside.exists() else "flwr"


def _flwr_json(*args: str, timeout: float = 60.0) -> dict | None:
    try:
        proc = subprocess.run(
            [flwr_program(), *args, "--format", "json"], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        return None


def online_nodes(connection: str) -> int | None:
    """How many SuperNodes the SuperLink sees online (None: it could not be asked)."""
    out = _flwr_json("supernode", "ls", connection)
    if not out or not out.get("success"):
        return None
    return sum(1 for n in out.get("nodes", []) if n.get("status") == "online")


def run_status(connection: str, run_id: int) -> str | None:
    """Flower's status of one run, e.g. ``finished:completed`` or ``finished:failed``."""
    out = _flwr_json("ls", connection, "--run-id", str(run_id))
    runs = (out or {}).get("runs") or []
    return runs[0].get("status") if runs else None


def wait_for_nodes(connection: str, count: int, timeout: float, say) -> None:
    deadline, seen = time.monotonic() + timeout, None
    while True:
        online = online_nodes(connection)
        if online is not None and online != seen:
            say(f"{online}/{count} SuperNodes online")
            seen = online
        if online is not None and online >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {online or 0} of {count} SuperNodes came online within {timeout:.0f} s")
        time.sleep(2.0)


def _watch_rounds(path: Path, say, stop: threading.Event) -> None:
    watcher = RoundWatcher(path)
    while not stop.wait(1.0):
        for record in watcher.poll():
            say(format_round(record))
    for record in watcher.poll():
        say(format_round(record))


def run_app(args: argparse.Namespace, result: dict) -> None:
    """Everything after the deployment is up; fills ``result`` (what the status file holds) as it goes."""
    say = Progress().say
    if args.nodes:
        wait_for_nodes(args.connection, args.nodes, args.nodes_timeout, say)
    cmd = [flwr_program(), "run", args.app, args.connection, "--stream", "-c", args.run_config]
    say("$ " + " ".join(cmd))
    stop = threading.Event()
    watcher = None
    if args.rounds_file:
        watcher = threading.Thread(target=_watch_rounds, args=(Path(args.rounds_file), say, stop), daemon=True)
        watcher.start()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=args.app)
    timed_out = threading.Event()

    def hang_guard() -> None:  # a run past --timeout has failed
        timed_out.set()
        proc.kill()

    timer = threading.Timer(args.timeout, hang_guard)
    timer.daemon = True
    timer.start()
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            match = RUN_STARTED.search(line)
            if match and result["run_id"] is None:
                result["run_id"] = int(match.group(1))
        result["flwr_run_exit"] = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stop.set()
        if watcher is not None:
            watcher.join(5)
    if timed_out.is_set():
        result["status"] = f"timed out after {args.timeout:g} s"
        if result["run_id"] is not None:
            _flwr_json("stop", str(result["run_id"]), args.connection)
        return
    if result["run_id"] is None:
        result["status"] = "not started"
        return
    # `--stream` returns once the run has ended; the status may trail the log by a moment.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        result["status"] = run_status(args.connection, result["run_id"])
        if result["status"] and result["status"].startswith("finished"):
            break
        time.sleep(1.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app", required=True, help="the Flower app's folder")
    parser.add_argument("--run-config", required=True, help="TOML file of run-config overrides (flwr run -c)")
    parser.add_argument("--connection", default=CONNECTION, help=f"connection in $FLWR_HOME/config.toml ({CONNECTION})")
    parser.add_argument("--nodes", type=int, default=0, help="wait until this many SuperNodes are online (0: don't)")
    parser.add_argument("--nodes-timeout", type=float, default=300.0, help="seconds to wait for them")
    parser.add_argument("--rounds-file", default="", help="the run's rounds.jsonl: print each round as it completes")
    parser.add_argument("--timeout", type=float, default=3600.0, help="hang guard for the whole run, seconds")
    parser.add_argument("--status-file", default="", help="write the run id and status here as JSON")


def _terminate(signum, frame):  # SIGTERM (scancel, docker stop, flq launch's stop) unwinds like Ctrl-C
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flq.launch.app_run", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    result: dict = {"run_id": None, "status": None, "flwr_run_exit": None}
    try:
        run_app(args, result)
    except TimeoutError as exc:
        result["status"] = f"no run: {exc}"
    except KeyboardInterrupt:
        result["status"] = "interrupted"
    ok = result["status"] == COMPLETED and result["flwr_run_exit"] == 0
    result["ok"] = ok
    if args.status_file:
        Path(args.status_file).write_text(json.dumps(result, indent=2) + "\n")
    print(f"run {result['run_id']}: {result['status']} ({'ok' if ok else 'FAILED'})", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
