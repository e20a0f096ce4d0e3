"""``flq launch EXPERIMENT.toml`` on this host: real processes, limits, optional tier links.

Order: certificates and the launch's own FLWR_HOME in the results folder; the per-tier network
(if asked for); one ``flq-superlink``; every ``flq-supernode`` (CPU tiers on their own cores,
optionally under a memory limit); ``python -m flq.launch.app_run`` (waits for the nodes, runs the
app, checks Flower's status of the run); then everything is stopped by pid and ``launch.json``
says what ran where and how it ended. Ctrl-C or SIGTERM at any point stops everything it started.

The results folder holds it all: the run directory (the ServerApp writes it there), ``logs/``
(one log per process), ``launch.json``, ``app-run.json``, the experiment file and the run config.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from ..transport.certs import make_certificates
from . import commands
from .app_run import RUN_STARTED
from .commands import CA_CERT, NODE_READY, SUPERLINK_READY
from .experiment import Experiment, Node
from .limits import allot_cpus, format_cpus, prefix
from .network import describe, group_links
from .processes import Child, ChildFailed, stop_all
from .progress import Progress, RoundWatcher, format_round

BIN = Path(sys.executable).parent  # flq-superlink, flq-supernode and flwr beside this interpreter
EXIT_OK, EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _program(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for TCP and UDP at once (the SuperLink's HTTP APIs and QUIC share one number)."""
    for _ in range(100):
        with socket.socket() as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise OSError("no free port")


def address_space_limit(pid: int) -> int | None:
    """RLIMIT_AS of ``pid`` in bytes as the kernel holds it (None: unlimited or gone)."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max address space"):
                value = line.split()[3]
                return None if value == "unlimited" else int(value)
    except (OSError, IndexError, ValueError):
        pass
    return None


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


class LocalLaunch:
    def __init__(self, exp: Experiment, folder: Path, emulate_network: bool, progress: Progress | None = None) -> None:
        self.exp, self.folder = exp, Path(folder)
        self.emulate = emulate_network
        self.progress = progress or Progress()
        self.logs = self.folder / "logs"
        self.nodes = exp.nodes()
        self.children: list[Child] = []
        self.node_children: dict[str, Child] = {}
        self.superlink: Child | None = None
        self.app_run: Child | None = None
        self.star = None
        self.info: dict = {"experiment": exp.name, "folder": str(self.folder), "processes": []}
        self.run_dir = self.folder / exp.name

    def say(self, text: str) -> None:
        self.progress.say(text)

    # -- the whole launch ---------------------------------------------------------------------

    def run(self) -> int:
        old = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
        code = EXIT_FAILED
        started = time.time()
        try:
            with ExitStack() as stack:
                self._prepare()
                if self.emulate:
                    self._start_network(stack)
                try:
                    self._start_superlink()
                    self._start_nodes()
                    code = self._run_app()
                finally:
                    # No second Ctrl-C may cut the cleanup short: it would leave processes behind.
                    for sig in old:
                        signal.signal(sig, signal.SIG_IGN)
                    self._stop_all()
        except KeyboardInterrupt:
            self.say("interrupted: everything started has been stopped")
            code = EXIT_INTERRUPTED
        except ChildFailed as exc:
            self.say(f"FAILED: {exc}")
            code = EXIT_FAILED
        except Exception as exc:  # e.g. no free port, an unwritable folder: everything started is stopped
            self.say(f"FAILED: {type(exc).__name__}: {exc}")
            code = EXIT_FAILED
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        self.info.update(exit_code=code, wall_s=round(time.time() - started, 3))
        self._write_info()
        self.say(f"results in {self.folder} (exit {code})")
        return code

    def _prepare(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.exp.path, self.folder / "experiment.toml")
        self.run_config = commands.write_run_config(
            self.folder / "run-config.toml", self.exp.run_config_for(str(self.folder))
        )
        self.home = self.folder / "flwr-home"
        self.home.mkdir(exist_ok=True)
        self.env = {
            **os.environ,
            **commands.FLOWER_ENV,
            "FLWR_HOME": str(self.home),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.info["nodes_planned"] = len(self.nodes)

    def _start_network(self, stack: ExitStack) -> None:
        from ..netem.star import StarNetwork, unavailable_reason

        reason = unavailable_reason()
        if reason:  # checked by the CLI before anything starts; kept for callers of this class
            raise ChildFailed(reason)
        owners = self.exp.links()
        links = [group_links(g, self.exp.network.queue_ms) for g in owners]
        self.star = stack.enter_context(StarNetwork(links))
        for i, (group, (up, down)) in enumerate(zip(owners, links, strict=True)):
            self.say(f"link for {group.tier.name} (namespace {self.star.spoke_ns[i]}): {describe(up, down)}")
        self.info["network"] = [
            {"tier": g.tier.name, "namespace": self.star.spoke_ns[i], "link": describe(*links[i])}
            for i, g in enumerate(owners)
        ]

    def _start(self, name: str, cmd: list[str], env: dict, cwd: Path | None = None, **extra) -> Child:
        child = Child(name, cmd, env, self.logs / f"{name}.log", cwd=cwd)
        self.children.append(child)
        self.info["processes"].append({"name": name, "pid": child.pid, "command": cmd, **extra})
        return child

    def _start_superlink(self) -> None:
        exp = self.exp
        host = "0.0.0.0" if self.star else exp.superlink.host
        self.port = exp.superlink.port or free_port("127.0.0.1" if host in ("0.0.0.0", "::") else host)
        # Nodes dial the SuperLink where they can reach it: over their tier's link, or its own host.
        self.dial_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        names = [self.dial_host, *(self.star.hub_addresses() if self.star else [])]
        certs = self.folder / "certs"
        make_certificates(certs, names=names)
        self.ca = str(certs / CA_CERT)
        # flwr (in the SuperLink's namespace) dials the Control API on the same port.
        (self.home / "config.toml").write_text(commands.connection_toml(f"{self.dial_host}:{self.port}", self.ca))
        cmd = commands.superlink_command(
            str(certs),
            host,
            self.port,
            str(self.folder / "superlink.db"),
            exp.superlink.args,
            _program("flq-superlink"),
        )
        self.superlink = self._start("superlink", [*self._hub_prefix(), *cmd], self.env, cwd=self.folder)
        self.superlink.wait_for_line(SUPERLINK_READY, 120)
        self.say(f"superlink up (pid {self.superlink.pid}) on {host}:{self.port} (HTTP on TCP, Fleet API over QUIC)")

    def _hub_prefix(self) -> list[str]:
        return self.star.hub_prefix() if self.star else []

    def _start_nodes(self) -> None:
        cores = allot_cpus([n.group.cpus for n in self.nodes], sorted(os.sched_getaffinity(0)))
        wanted = sum(n.group.cpus or 0 for n in self.nodes)
        if wanted > len(os.sched_getaffinity(0)):
            self.say(
                f"note: CPU tiers ask for {wanted} cores in all, this host has {len(os.sched_getaffinity(0))}: "
                "nodes share cores (each still runs on no more than its own)"
            )
        for node, node_cores in zip(self.nodes, cores, strict=True):
            self._start_node(node, node_cores)
        for node in self.nodes:
            child = self.node_children[node.name]
            child.wait_for_line(NODE_READY, self.exp.nodes_timeout_s)
            child.refresh()
            record = next(p for p in self.info["processes"] if p["name"] == node.name)
            record["cpus_allowed"] = format_cpus(child.cpus_seen)
            record["address_space_limit"] = address_space_limit(child.pid)
            limits = f"cores {format_cpus(child.cpus_seen)}" if node.group.cpus else "no core limit"
            if node.group.memory_mb:
                limits += f", memory {node.group.memory_mb} MiB"
            self.say(f"{node.name} up (pid {child.pid}, partition {node.partition_id}/{node.num_partitions}, {limits})")

    def _start_node(self, node: Node, cores: frozenset[int] | None) -> None:
        group = node.group
        if self.star:
            superlink = f"{self.star.hub_address(node.link_index)}:{self.port}"
            net = self.star.spoke_prefix(node.link_index)
        else:
            superlink, net = f"{self.dial_host}:{self.port}", []
        cmd = commands.supernode_command(
            superlink, self.ca, free_port(), node.node_config, group.args, _program("flq-supernode")
        )
        env = {**self.env, **commands.thread_env(group.cpus)}
        full = [*net, *prefix(cores, group.memory_mb), *cmd]
        child = self._start(
            node.name,
            full,
            env,
            tier=group.tier.name,
            partition_id=node.partition_id,
            cpus=format_cpus(cores) if cores else None,
            memory_mb=group.memory_mb,
        )
        self.node_children[node.name] = child

    def _run_app(self) -> int:
        exp = self.exp
        rounds = self.run_dir / "rounds.jsonl"
        status_file = self.folder / "app-run.json"
        cmd = commands.app_run_command(
            str(exp.app),
            str(self.run_config),
            len(self.nodes),
            str(rounds),
            exp.nodes_timeout_s,
            exp.timeout_s,
            python=sys.executable,
        ) + ["--status-file", str(status_file)]
        self.app_run = self._start("app-run", [*self._hub_prefix(), *cmd], self.env, cwd=exp.app)
        self.say(f"running the app (pid {self.app_run.pid}): {len(self.nodes)} nodes, run config {self.run_config}")
        watcher = RoundWatcher(rounds)
        gone: set[str] = set()
        run_id = None
        guard = time.monotonic() + exp.nodes_timeout_s + exp.timeout_s + 120  # app_run has its own guards
        while self.app_run.alive():
            for child in self.children:
                child.refresh()
            if run_id is None and (match := RUN_STARTED.search(self.app_run.text())):
                run_id = match.group(1)
                self.say(f"run {run_id} started (its log: {self.app_run.log})")
            for record in watcher.poll():
                self.say(format_round(record))
            for name, child in self.node_children.items():
                if not child.alive() and name not in gone:
                    gone.add(name)
                    self.say(f"WARNING: {name} exited ({child.returncode}); see {child.log}")
            if not self.superlink.alive():
                raise ChildFailed(f"the SuperLink exited ({self.superlink.returncode}); see {self.superlink.log}")
            if time.monotonic() > guard:
                raise ChildFailed("the run outlived its hang guard (experiment.timeout-s)")
            time.sleep(1.0)
        for record in watcher.poll():
            self.say(format_round(record))
        try:
            status = json.loads(status_file.read_text())
        except (OSError, json.JSONDecodeError):
            status = {"ok": False, "status": "no status (see logs/app-run.log)"}
        self.info["run"] = status
        summary = self.run_dir / "summary.json"
        ok = bool(status.get("ok")) and self.app_run.returncode == 0 and summary.is_file()
        self.say(f"run {status.get('run_id')}: {status.get('status')}" + ("" if ok else f"; see {self.app_run.log}"))
        if not ok:
            errors = [line for line in self.app_run.text().splitlines() if "ERROR" in line]
            for line in errors[:3]:
                self.say("  " + line.split("ERROR", 1)[1].strip(" :\x1b[0m"))
        return EXIT_OK if ok else EXIT_FAILED

    def _stop_all(self) -> None:
        if self.children:
            self.say(f"stopping {len(self.children)} processes")
        stop_all(list(reversed(self.children)))  # SIGTERM to the app run first, then nodes, then the SuperLink
        left = {c.name: c.leftovers() for c in self.children}
        left = {name: pids for name, pids in left.items() if pids}
        for record, child in zip(self.info["processes"], self.children, strict=True):
            record["exit_code"] = child.returncode
            record["pids_seen"] = [[pid, started] for pid, started in child.pids().items()]  # pid, /proc start time
            if child.cpus_seen:
                record["cpus_seen"] = format_cpus(child.cpus_seen)
        self.info["leftover_pids"] = left
        if left:
            self.say(f"WARNING: still running after stop: {left}")
        if self.star:
            self.info["network_counts"] = self.star.counts()

    def _write_info(self) -> None:
        (self.folder / "launch.json").write_text(json.dumps(self.info, indent=2, default=str) + "\n")
