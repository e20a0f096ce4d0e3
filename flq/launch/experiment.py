"""The experiment file of ``flq launch``: read once, checked whole, every error naming its key.

Layout (docs/launch.md has the commented version; experiments/tiered-local.toml is an example):

    [experiment]   name, app, results, timeout-s, nodes-timeout-s
    [superlink]    host, port, args
    [run]          run-config overrides for the app (keys of its [tool.flwr.app.config])
    [[supernodes]] tier, count, cpus, gpus, memory-mb, jitter-ms, args   (one table per group)
    [network]      emulate, link, queue-ms, jitter-ms
    [slurm]        partition, account, time, setup, sbatch-args, port, superlink-cpus
    [compose]      image, build, port

Paths are relative to the experiment file's folder. Nodes get partition ids in file order.
Nothing here starts a process or imports torch: a bad file fails at once.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..sim.tiers import TierError, TierProfile, load_tiers

# Keys the launcher owns in the run config: it puts the run directory inside the results folder.
RESERVED_RUN_KEYS = ("output-dir", "run-name")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")  # used in paths, job and service names


class ExperimentError(ValueError):
    """The experiment file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class NodeGroup:
    """``count`` SuperNodes of one tier, with the same limits."""

    tier: TierProfile
    count: int
    cpus: int | None  # cores each node may run on (None: no limit)
    gpus: int  # GPUs each node asks for on a cluster (a local launch leaves devices alone)
    memory_mb: int | None  # address-space / container memory limit per node (None: none)
    jitter_ms: float  # with [network] emulate: +- per packet on this group's link
    args: tuple[str, ...] = ()  # extra flq-supernode flags


@dataclass(frozen=True)
class Node:
    """One SuperNode: its group and its share of the data."""

    group: NodeGroup
    group_index: int  # which [[supernodes]] table
    partition_id: int
    num_partitions: int
    link_index: int = 0  # which emulated link it is behind (Experiment.links())

    @property
    def name(self) -> str:
        return f"supernode-{self.partition_id:02d}-{self.group.tier.name}"

    @property
    def node_config(self) -> str:
        return node_config(self.partition_id, self.num_partitions, self.group.tier.name)


def node_config(partition_id: int | str, num_partitions: int, tier: str) -> str:
    """What ``--node-config`` gets: the keys the FLQ ClientApp reads (docs/deployment.md).
    ``partition_id`` may be a shell expression where a script computes it."""
    return f'partition-id={partition_id} num-partitions={num_partitions} tier="{tier}"'


@dataclass(frozen=True)
class SuperLinkSpec:
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port (local launch)
    args: tuple[str, ...] = ()


LINK_MODES = ("group", "node")  # [network] link: who shares an emulated link


@dataclass(frozen=True)
class NetworkSpec:
    emulate: bool = False
    link: str = "group"  # one emulated link per [[supernodes]] group (a site's shared uplink), or per node
    queue_ms: float = 100.0
    jitter_ms: float = 0.0


@dataclass(frozen=True)
class SlurmSpec:
    partition: str = ""
    account: str = ""
    time: str = "01:00:00"
    setup: tuple[str, ...] = ("source .venv/bin/activate",)  # run in the app folder before each command
    sbatch_args: tuple[str, ...] = ()  # extra #SBATCH lines, e.g. "--qos=normal"
    port: int = 9093
    superlink_cpus: int = 2


@dataclass(frozen=True)
class ComposeSpec:
    image: str = "flq:latest"
    build: bool = True  # build the image from the app folder (a Dockerfile is rendered beside the compose file)
    port: int = 9093


@dataclass(frozen=True)
class Experiment:
    path: Path
    name: str
    app: Path
    results: Path
    timeout_s: float
    nodes_timeout_s: float
    superlink: SuperLinkSpec
    run_config: dict[str, Any]  # overrides, checked against the app's run config; tier-file made absolute
    groups: tuple[NodeGroup, ...]
    network: NetworkSpec = field(default_factory=NetworkSpec)
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    compose: ComposeSpec = field(default_factory=ComposeSpec)

    def nodes(self) -> list[Node]:
        total = sum(g.count for g in self.groups)
        per_node = self.network.link == "node"
        out = []
        for gi, group in enumerate(self.groups):
            for _ in range(group.count):
                out.append(Node(group, gi, len(out), total, link_index=len(out) if per_node else gi))
        return out

    def links(self) -> list[NodeGroup]:
        """The group whose tier each emulated link has: one per group, or one per node (``link = "node"``)."""
        return [n.group for n in self.nodes()] if self.network.link == "node" else list(self.groups)

    def run_config_for(self, output_dir: str) -> dict[str, Any]:
        """The run config ``flwr run`` gets: the overrides, and where the run directory goes."""
        return {**self.run_config, "output-dir": output_dir, "run-name": self.name}


# -- reading ------------------------------------------------------------------------------------


_TYPE_NAMES = {
    str: "text",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "a table",
}


class _Table:
    """One table of the file: typed reads that name the key on error, and no unknown keys left."""

    def __init__(self, where: str, key: str, data: Any) -> None:
        self.where, self.key = where, key
        if not isinstance(data, dict):
            raise ExperimentError(f"{where}: {key} must be a table, got {data!r}")
        self.data = dict(data)
        self.seen: set[str] = set()

    def fail(self, key: str, problem: str) -> ExperimentError:
        return ExperimentError(f"{self.where}: {self.key}.{key}: {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.seen.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        names = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        if float in kinds:
            kinds = (*kinds, int)  # TOML's 3 is a fine 3.0
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise self.fail(key, f"must be {names}, got {value!r}")
        return value

    def number(self, key: str, default: float, minimum: float = 0.0, above: bool = False) -> float:
        value = float(self.get(key, float, default))
        if value < minimum or (above and value == minimum):
            raise self.fail(key, f"must be {'>' if above else '>='} {minimum:g}, got {value!r}")
        return value

    def integer(self, key: str, default: int | None, minimum: int) -> int | None:
        value = self.get(key, int, default)
        if value is not None and value < minimum:
            raise self.fail(key, f"must be an integer >= {minimum}, got {value!r}")
        return value

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(key, list, list(default))
        if not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"must be a list of strings, got {value!r}")
        return tuple(value)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            known = ", ".join(sorted(self.seen))
            raise self.fail(unknown[0], f"unknown key (known here: {known})")


TOP_LEVEL = ("experiment", "superlink", "run", "supernodes", "network", "slurm", "compose")


def load_experiment(path: str | Path) -> Experiment:
    """Read and check ``path``; raise ExperimentError naming the first bad key."""
    path = Path(path).resolve()
    where = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ExperimentError(f"{where}: no such experiment file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentError(f"{where}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - set(TOP_LEVEL))
    if unknown:
        raise ExperimentError(f"{where}: {unknown[0]}: unknown table (known: {', '.join(TOP_LEVEL)})")
    base = path.parent

    exp = _Table(where, "experiment", data.get("experiment", {}))
    if "name" not in exp.data:
        raise exp.fail("name", "required (it names the run and the results folder)")
    name = exp.get("name", str, "")
    if not NAME_RE.match(name):
        raise exp.fail("name", f"letters, digits, '.', '_' and '-' only (at most 63), got {name!r}")
    app = (base / exp.get("app", str, ".")).resolve()
    app_config = _app_run_config(app, exp)
    results = (base / exp.get("results", str, "runs/launch")).resolve()
    timeout_s = exp.number("timeout-s", 3600.0, above=True)
    nodes_timeout_s = exp.number("nodes-timeout-s", 300.0, above=True)
    exp.done()

    sl = _Table(where, "superlink", data.get("superlink", {}))
    superlink = SuperLinkSpec(
        host=sl.get("host", str, "127.0.0.1"), port=_port(sl, "port", 0), args=sl.strings("args", ())
    )
    sl.done()

    run_config = _run_config(where, base, data.get("run", {}), app_config)
    try:
        tiers = load_tiers(run_config.get("tier-file") or None)
    except TierError as exc:
        raise ExperimentError(f"{where}: run.tier-file: {exc}") from None

    net = _Table(where, "network", data.get("network", {}))
    network = NetworkSpec(
        emulate=net.get("emulate", bool, False),
        link=net.get("link", str, "group"),
        queue_ms=net.number("queue-ms", 100.0, above=True),
        jitter_ms=net.number("jitter-ms", 0.0),
    )
    if network.link not in LINK_MODES:
        raise net.fail("link", f"must be one of {', '.join(map(repr, LINK_MODES))}, got {network.link!r}")
    net.done()

    groups = _groups(where, data.get("supernodes"), tiers, network)
    total = sum(g.count for g in groups)
    cpr = run_config.get("clients-per-round")
    if cpr is None:
        run_config["clients-per-round"] = total  # the app's default (4) may exceed the nodes started
    elif cpr > total:
        raise ExperimentError(
            f"{where}: run.clients-per-round: {cpr} exceeds the {total} SuperNodes started "
            "(the ServerApp would wait for nodes that never come)"
        )

    sm = _Table(where, "slurm", data.get("slurm", {}))
    slurm = SlurmSpec(
        partition=sm.get("partition", str, ""),
        account=sm.get("account", str, ""),
        time=sm.get("time", str, "01:00:00"),
        setup=sm.strings("setup", SlurmSpec.setup),
        sbatch_args=sm.strings("sbatch-args", ()),
        port=_port(sm, "port", 9093, minimum=1),
        superlink_cpus=sm.integer("superlink-cpus", 2, 1),
    )
    if not re.fullmatch(r"(\d+-)?\d+(:\d\d){0,2}", slurm.time):
        raise sm.fail("time", f"a Slurm time limit such as 01:00:00 or 1-00:00:00, got {slurm.time!r}")
    for arg in slurm.sbatch_args:
        if not arg.startswith("--"):
            raise sm.fail("sbatch-args", f"each entry is one long sbatch option such as '--qos=normal', got {arg!r}")
    sm.done()

    cp = _Table(where, "compose", data.get("compose", {}))
    compose = ComposeSpec(
        image=cp.get("image", str, "flq:latest"), build=cp.get("build", bool, True), port=_port(cp, "port", 9093, 1)
    )
    cp.done()

    return Experiment(
        path=path,
        name=name,
        app=app,
        results=results,
        timeout_s=timeout_s,
        nodes_timeout_s=nodes_timeout_s,
        superlink=superlink,
        run_config=run_config,
        groups=groups,
        network=network,
        slurm=slurm,
        compose=compose,
    )


def _port(table: _Table, key: str, default: int, minimum: int = 0) -> int:
    port = table.integer(key, default, minimum)
    if port > 65535:
        raise table.fail(key, f"must be a port number <= 65535, got {port}")
    return port


def _app_run_config(app: Path, exp: _Table) -> dict[str, Any]:
    """The app's run-config defaults: what [run] may override, and with which types."""
    pyproject = app / "pyproject.toml"
    try:
        with open(pyproject, "rb") as fh:
            config = tomllib.load(fh).get("tool", {}).get("flwr", {}).get("app", {}).get("config")
    except FileNotFoundError:
        raise exp.fail("app", f"{app} has no pyproject.toml (the Flower app's folder)") from None
    except tomllib.TOMLDecodeError as exc:
        raise exp.fail("app", f"{pyproject}: not valid TOML ({exc})") from None
    if not isinstance(config, dict):
        raise exp.fail("app", f"{pyproject} has no [tool.flwr.app.config]: not a Flower app")
    return config


def _run_config(where: str, base: Path, data: Any, app_config: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ExperimentError(f"{where}: run must be a table of run-config keys, got {data!r}")
    out = {}
    for key, value in data.items():
        if key in RESERVED_RUN_KEYS:
            raise ExperimentError(
                f"{where}: run.{key}: set by flq launch (the run directory goes into the results folder)"
            )
        if key not in app_config:
            raise ExperimentError(f"{where}: run.{key}: not a run-config key of the app ([tool.flwr.app.config])")
        default = app_config[key]
        same = type(value) is type(default) or (type(default) is float and type(value) is int)
        if not same:
            raise ExperimentError(
                f"{where}: run.{key}: must be {type(default).__name__} like the app's default {default!r}, "
                f"got {value!r}"
            )
        out[key] = value
    if out.get("tier-file"):
        tier_file = (base / out["tier-file"]).resolve()
        if not tier_file.is_file():
            raise ExperimentError(f"{where}: run.tier-file: {tier_file} not found")
        out["tier-file"] = str(tier_file)  # the nodes read it from their own working directory
    return out


def _groups(where: str, data: Any, tiers: dict[str, TierProfile], network: NetworkSpec) -> tuple[NodeGroup, ...]:
    if not isinstance(data, list) or not data:
        raise ExperimentError(f"{where}: supernodes: at least one [[supernodes]] table (tier, count) is required")
    groups = []
    for i, raw in enumerate(data):
        t = _Table(where, f"supernodes[{i}]", raw)
        if "tier" not in t.data:
            raise t.fail("tier", f"required: a tier name ({', '.join(sorted(tiers))})")
        tier_name = t.get("tier", str, "")
        if tier_name not in tiers:
            raise t.fail("tier", f"unknown tier {tier_name!r}; known: {', '.join(sorted(tiers))} (or run.tier-file)")
        tier = tiers[tier_name]
        count = t.integer("count", 1, 1)
        # A tier with torch threads is a CPU tier: its nodes get that many cores by default.
        cpus = t.integer("cpus", tier.threads, 1)
        gpus = t.integer("gpus", 0 if tier.threads else 1, 0)
        memory = t.get("memory-mb", (int, str), 0)
        if isinstance(memory, str):
            if memory != "tier":
                raise t.fail("memory-mb", f'a number of MiB, 0 (no limit) or "tier", got {memory!r}')
            if tier.memory_limit_mb is None or tier.threads is None:
                # A GPU tier's memory_limit_mb is GPU memory: no limit on the host's memory.
                raise t.fail("memory-mb", f'"tier" takes a CPU tier\'s memory_limit_mb; {tier_name!r} has none')
            memory = int(tier.memory_limit_mb)
        elif memory < 0:
            raise t.fail("memory-mb", f"must be >= 0 (0: no limit), got {memory}")
        jitter = t.number("jitter-ms", network.jitter_ms)
        args = t.strings("args", ())
        t.done()
        groups.append(NodeGroup(tier, count, cpus, gpus, memory or None, jitter, args))
    return tuple(groups)
