"""Fleet transport: QUIC (flq-supernode) vs Flower's stock HTTP/1.1 + TLS, side by side in one run.

What runs: one real `flq-superlink`, which serves Flower's one SuperLink app both ways (its Fleet
API over HTTPS on TCP, as Flower does, and over QUIC on UDP), and four real SuperNodes, one per
transport and connection mode:

* ``quic`` / ``http``: one connection kept for the whole run (the QUIC node resumes nothing);
* ``quic-reconnect`` / ``http-reconnect``: the node opens a new connection for every poll, so
  each round starts on a new connection, as for an intermittent node; QUIC resumes its TLS
  session and sends its first request as 0-RTT data, HTTP pays TCP + a full TLS 1.3 handshake
  (httpx does not resume TLS sessions).

The ServerApp (benchmarks/apps/fleet_bench) sends one node at a time an adapter of 0.1, 1 or
4 MB (random float32: LZ4 cannot shrink it, so this measures the transport, not compression) and
waits for a reply of the same size; node order rotates every repetition. Each SuperNode wraps its
Fleet httpx transport in a timer, so a round's Fleet time is the time during which at least one
of that node's Fleet requests for the round was in flight (pull-messages with the task, pull-object,
confirm, push-messages, push-object; the SuperNode pulls objects from several threads at once, so
overlapping requests count once), without Flower's 3 s poll sleeps or the ClientApp's start-up.
Throughput is adapter bytes moved (down + up) over the time pull-object + push-object requests were
in flight. Medians over the repetitions.

Links: ``loopback`` is 127.0.0.1. The emulated links put the SuperNodes and the SuperLink in two
network namespaces joined through a forwarder in this process (``flq.netem``: this kernel has no
netem qdisc): per direction, loss, a bottleneck rate with a drop-tail queue of 100 ms, and delay
with jitter that reorders packets. A link is named ``RTTms-LOSS%[-jJITTER][-rRATE]``, e.g.
``100ms-3%-j20-r20``; ``--grid`` runs a grid of them. ``--check-emulator`` measures the emulator
itself: a plain TCP bulk transfer's rate against the configured one. Needs root; traffic stays
inside the namespaces, which are removed afterwards.

    sudo .venv/bin/python benchmarks/transport_throughput.py            # all profiles -> results/transport_throughput.md
    .venv/bin/python benchmarks/transport_throughput.py --quick          # loopback only, 1 rep -> results/tmp/
    sudo .venv/bin/python benchmarks/transport_throughput.py --grid --sizes-mb 1 4 --reps 2 \\
        --out benchmarks/results/transport_links.md                       # the link grid, about an hour
    sudo .venv/bin/python benchmarks/transport_throughput.py --profiles loopback,50ms-1%,100ms-3%-j20-r20
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import ssl
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, sys.path[0] is benchmarks/, and `harness` (unlike `flq`) is not installed: add the project root.
sys.path.insert(0, str(ROOT))
from flq.netem.link import LinkDirection  # noqa: E402
from flq.netem.namespaces import EmulatedLink  # noqa: E402
from harness.deployment import superlink_command  # noqa: E402
from harness.processes import BIN, Proc, flower_env, free_port  # noqa: E402

APP = ROOT / "benchmarks" / "apps" / "fleet_bench"
RESULTS = ROOT / "benchmarks" / "results"
LABELS = ("http", "http-reconnect", "quic", "quic-reconnect")
SIZES = (100_000, 1_000_000, 4_000_000)


@dataclass(frozen=True)
class Profile:
    """A link between the SuperNodes and the SuperLink; the same in both directions."""

    name: str
    rtt_ms: float = 0.0
    loss: float = 0.0
    jitter_ms: float = 0.0  # +- per packet each way: packets reorder
    rate_mbps: float | None = None  # bottleneck each way, with a drop-tail queue
    queue_ms: float = 100.0  # the bottleneck's buffer in ms at its rate (a common access-router sizing)
    emulated: bool = True
    sizes: tuple[int, ...] = SIZES

    def direction(self) -> LinkDirection:
        return LinkDirection(
            delay_ms=self.rtt_ms / 2,
            jitter_ms=self.jitter_ms,
            loss=self.loss,
            rate_mbps=self.rate_mbps,
            queue_ms=self.queue_ms,
        )


def profile_named(name: str) -> Profile:
    """``RTTms-LOSS%[-jJITTER][-rRATE][-qQUEUE]``, e.g. ``100ms-3%-j20-r20`` (100 ms, 3 % loss,
    +-20 ms, 20 Mb/s; the queue 100 ms at the rate unless ``-qMS``)."""
    if name in PROFILES:
        return PROFILES[name]
    rtt, loss, *rest = name.split("-")
    fields: dict[str, Any] = {"rtt_ms": float(rtt.removesuffix("ms")), "loss": float(loss.removesuffix("%")) / 100}
    for part in rest:
        key = {"j": "jitter_ms", "r": "rate_mbps", "q": "queue_ms"}.get(part[:1])
        if key is None:
            raise ValueError(f"unknown link part {part!r} in {name!r}")
        fields[key] = float(part[1:])
    return Profile(name, **fields)


def grid_names(rtts, losses, jitters, rates) -> list[str]:
    def num(x: float) -> str:
        return f"{x:g}"

    return [
        f"{num(r)}ms-{num(l * 100)}%" + (f"-j{num(j)}" if j else "") + f"-r{num(b)}"
        for r in rtts
        for l in losses  # noqa: E741
        for j in jitters
        for b in rates
    ]


# The link grid (RTT x loss x jitter x rate), trimmed to about an hour here: every axis is varied
# around a middle link (100 ms, 1 %, 10 ms jitter, 20 Mb/s), plus RTT x jitter in full and the
# corners. `--grid` runs it.
GRID = [
    *grid_names((20, 50, 100, 200), (0.01,), (0, 10), (20,)),
    *grid_names((100,), (0.0, 0.03), (10,), (20,)),
    *grid_names((100,), (0.01,), (10,), (5, 100)),
    "100ms-3%-j20-r20",  # the link the issue reported QUIC 12x slower on (its queue was 0.5 s)
    "200ms-3%-j10-r5",
    "20ms-0%-r100",
]

PROFILES = {
    p.name: p
    for p in [
        Profile("loopback", emulated=False),
        Profile("50ms-0%", 50, 0.0),
        Profile("50ms-1%", 50, 0.01),
        Profile("50ms-5%", 50, 0.05),
        Profile("200ms-0%", 200, 0.0),
        Profile("200ms-1%", 200, 0.01),
        Profile("200ms-5%", 200, 0.05, sizes=(100_000, 1_000_000)),
    ]
}


# --- the emulated link: flq.netem (namespaces joined through a forwarder in this process) -------


class Loopback:
    def prefix(self, side: str) -> list[str]:
        return []

    @staticmethod
    def address(side: str) -> str:
        return "127.0.0.1"


# --- one profile: a deployment, a run, the timings --------------------------------------------


@dataclass
class RoundTiming:
    label: str
    size: int
    fleet_s: float
    object_s: float
    object_bytes: int
    first_s: float


@dataclass
class ProfileResult:
    profile: Profile
    rounds: list[RoundTiming] = field(default_factory=list)
    link: str = ""
    wall_s: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)  # 5-minute load average at start and end


def run_profile(profile: Profile, reps: int, workdir: Path, congestion: str, resume_paths: bool) -> ProfileResult:
    from flq.transport.certs import make_certificates

    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    certs = make_certificates(workdir / "certs", names=[EmulatedLink.address("b")])
    home = workdir / "flwr-home"
    home.mkdir()
    port = free_port()
    env = flower_env(home, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{certs["ca_cert"]}"\n'
    )
    link = EmulatedLink(up=profile.direction(), down=profile.direction()) if profile.emulated else None
    procs: list[Proc] = []
    started = time.monotonic()
    result = ProfileResult(profile)
    load_before = os.getloadavg()[1]
    with link or _null() as net:
        net = net or Loopback()
        try:
            superlink = Proc(
                "superlink",
                [
                    *net.prefix("b"),
                    *superlink_command(
                        certs,
                        "0.0.0.0" if link else "127.0.0.1",
                        port,
                        "--quic-congestion-control",
                        congestion,
                        "--quic-resume-paths" if resume_paths else "--no-quic-resume-paths",
                    ),
                ],
                env,
                workdir / "superlink.log",
            )
            procs.append(superlink)
            superlink.wait_for_line("Fleet QUIC API on", timeout=180.0)
            nodes = []
            for i, label in enumerate(LABELS):
                transport, _, mode = label.partition("-")
                cmd = [
                    *net.prefix("a"),
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "supernode",
                    "--transport",
                    transport,
                    "--timing-log",
                    str(workdir / f"timing-{label}.jsonl"),
                    "--congestion",
                    congestion,
                    *(["--reconnect"] if mode else []),
                    *([] if resume_paths else ["--no-resume-paths"]),
                    "--",
                    "--superlink",
                    f"{net.address('b')}:{port}",
                    "--root-certificates",
                    str(certs["ca_cert"]),
                    "--port",
                    str(free_port() if not link else 9100 + i),
                    "--node-config",
                    f'label="{label}"',
                ]
                nodes.append(Proc(f"supernode-{label}", cmd, env, workdir / f"supernode-{label}.log"))
                procs.append(nodes[-1])
            for node in nodes:
                node.wait_for_line("SuperNode ID:", timeout=180.0)
            result_file = workdir / "result.json"
            sizes = ",".join(str(s) for s in profile.sizes)
            flwr = Proc(
                "flwr-run",
                [
                    *net.prefix("b"),
                    str(BIN / "flwr"),
                    "run",
                    str(APP),
                    "bench",
                    "--stream",
                    "-c",
                    f'sizes-bytes="{sizes}" reps={reps} result-file="{result_file}"',
                ],
                env,
                workdir / "flwr-run.log",
                cwd=APP,
            )
            procs.append(flwr)
            flwr.wait(timeout=6 * 3600)
            if flwr.returncode != 0 or not result_file.is_file():
                raise RuntimeError(f"flwr run failed, see {workdir / 'flwr-run.log'}")
            record = json.loads(result_file.read_text())
            if record.get("status") != "ok" or not all(r["ok"] for r in record["rounds"]):
                raise RuntimeError(f"benchmark run incomplete: {result_file}")
            result.rounds = _timings(record, workdir)
            if link:
                result.link = link.counts()
        finally:
            for proc in reversed(procs):
                proc.stop()
    result.wall_s = time.monotonic() - started
    result.load = (load_before, os.getloadavg()[1])
    return result


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


_NOT_ROUND = ("/v1/fleet/send-node-heartbeat", "/v1/fleet/get-run", "/v1/fleet/get-fab")
_OBJECTS = ("/v1/fleet/pull-object", "/v1/fleet/push-object")


def busy_s(requests: list[dict]) -> float:
    """Seconds during which at least one of `requests` was in flight (the union of their intervals).

    Flower's SuperNode pulls a message's objects from several threads at once: summing the
    durations of overlapping requests would count the same wall time more than once.
    """
    total, busy_until = 0.0, -math.inf
    for start, end in sorted((r["at"] - r["dur"], r["at"]) for r in requests):
        if end > busy_until:
            total += end - max(start, busy_until)
            busy_until = end
    return total


def _timings(record: dict, workdir: Path) -> list[RoundTiming]:
    """Split each node's request log into rounds and pair them with the ServerApp's record."""
    out = []
    for label in LABELS:
        requests = [json.loads(line) for line in (workdir / f"timing-{label}.jsonl").read_text().splitlines()]
        rounds: list[list[dict]] = []
        for req in requests:
            if req["path"] == "/v1/fleet/pull-messages" and req["down"] > 0:
                rounds.append([req])  # a poll that brought a task opens a round
            elif rounds and req["path"] not in _NOT_ROUND and req["path"] != "/v1/fleet/pull-messages":
                rounds[-1].append(req)
        rounds = rounds[1:]  # the first task is the hello query
        sent = [r for r in record["rounds"] if r["label"] == label]
        if len(rounds) != len(sent):
            raise RuntimeError(f"{label}: {len(rounds)} rounds in the timing log, {len(sent)} sent")
        for reqs, meta in zip(rounds, sent):
            if label.endswith("reconnect") and not reqs[0].get("fresh"):
                raise RuntimeError(f"{label}: a round did not start on a new connection")
            objects = [r for r in reqs if r["path"] in _OBJECTS]
            out.append(
                RoundTiming(
                    label=label,
                    size=meta["size"],
                    fleet_s=busy_s(reqs),
                    object_s=busy_s(objects),
                    object_bytes=sum(r["down"] if r["path"].endswith("pull-object") else r["up"] for r in objects),
                    first_s=reqs[0]["dur"],
                )
            )
    return out


# --- the instrumented SuperNode (a subprocess of the benchmark) ----------------------------------


def supernode_main(args: argparse.Namespace, flower_args: list[str]) -> None:
    import httpx

    from flq.transport.cli import _route_logs_to_flower
    from flq.transport.flower_pins import (
        FLEET_CLIENT_GLOBAL,
        FLEET_CONNECTION_MODULE,
        FleetHttpClient,
        check_flower_version,
        flower_supernode,
    )
    from flq.transport.quic_settings import QuicSettings
    from flq.transport.supernode_quic import QuicClientOptions, make_quic_fleet_client_class

    check_flower_version()
    timing = TimingLog(Path(args.timing_log))
    if args.transport == "quic":
        session = Path(args.timing_log).with_suffix(".ticket.json")
        base = make_quic_fleet_client_class(
            QuicClientOptions(
                QuicSettings(congestion_control=args.congestion, resume_paths=args.resume_paths), session_file=session
            )
        )
    else:
        base = FleetHttpClient

    class TimedFleetClient(base):  # type: ignore[misc, valid-type]
        @classmethod
        def from_server_address(cls, server_address, insecure, root_certificates, interceptors, *, retry_invoker=None):
            client = super().from_server_address(
                server_address, insecure, root_certificates, interceptors, retry_invoker=retry_invoker
            )
            timeout = client._client.timeout
            if args.transport == "quic":
                quic = client.quic_transport
                inner = TimedTransport(lambda: quic, timing, args.reconnect, reconnect=quic.disconnect)
            else:
                # What Flower's ProtobufClient builds (httpx.Client(verify=CA)), with a timer around it.
                client._client.close()
                context = ssl.create_default_context(
                    **(
                        {"cadata": root_certificates.decode("ascii")}
                        if isinstance(root_certificates, bytes)
                        else {"cafile": root_certificates}
                    )
                )
                inner = TimedTransport(lambda: httpx.HTTPTransport(verify=context), timing, args.reconnect)
            client._client = httpx.Client(transport=inner, timeout=timeout, follow_redirects=True)
            return client

    setattr(FLEET_CONNECTION_MODULE, FLEET_CLIENT_GLOBAL, TimedFleetClient)
    _route_logs_to_flower()
    sys.argv = [sys.argv[0], *flower_args]
    flower_supernode()


class TimingLog:
    def __init__(self, path: Path) -> None:
        self._fh = open(path, "a", buffering=1)
        self._lock = threading.Lock()

    def write(self, record: dict) -> None:
        with self._lock:
            self._fh.write(json.dumps(record) + "\n")


def _timed_transport_class():
    import httpx

    class TimedTransport(httpx.BaseTransport):
        """Times each Fleet request; in reconnect mode every poll starts on a new connection."""

        def __init__(self, factory, log: TimingLog, reconnect_when_idle: bool, reconnect=None) -> None:
            self._factory, self._log = factory, log
            self._inner = factory()
            self._reconnect_when_idle = reconnect_when_idle
            self._reconnect = reconnect or self._replace
            self._lock = threading.Lock()
            self._in_flight: dict[int, int] = {}  # id(transport) -> requests using it
            self._retired: dict[int, Any] = {}  # replaced transports, closed once idle

        def _replace(self) -> None:
            # The heartbeat thread may be mid-request on the old transport: closing it under that
            # request broke its TLS record stream (measured: "bad record mac", and Flower's
            # SuperNode exits on TLS errors), so it is closed when its last request ends.
            with self._lock:
                old, self._inner = self._inner, self._factory()
                if self._in_flight.get(id(old)):
                    self._retired[id(old)] = old
                    return
            old.close()

        def _acquire(self):
            with self._lock:
                inner = self._inner
                self._in_flight[id(inner)] = self._in_flight.get(id(inner), 0) + 1
                return inner

        def _release(self, inner) -> None:
            with self._lock:
                self._in_flight[id(inner)] -= 1
                retired = None
                if not self._in_flight[id(inner)]:
                    del self._in_flight[id(inner)]  # an id may be reused once the transport is gone
                    retired = self._retired.pop(id(inner), None)
            if retired is not None:
                retired.close()

        def handle_request(self, request):
            up = len(request.read())
            fresh = self._reconnect_when_idle and request.url.path.endswith("/pull-messages")
            if fresh:  # an intermittent node: it wakes up, connects, polls
                self._reconnect()
            inner = self._acquire()
            try:
                started = time.perf_counter()
                response = inner.handle_request(request)
                raw = b"".join(response.iter_raw())
                response.close()
                duration = time.perf_counter() - started
            finally:
                self._release(inner)
            self._log.write(
                {
                    "path": request.url.path,
                    "dur": duration,
                    "up": up,
                    "down": len(raw),
                    "status": response.status_code,
                    "at": time.time(),
                    "fresh": fresh,
                }
            )
            return httpx.Response(
                response.status_code,
                headers=response.headers,
                stream=httpx.ByteStream(raw),
                extensions=response.extensions,
            )

        def close(self) -> None:
            self._inner.close()

    return TimedTransport


def TimedTransport(*args, **kwargs):  # noqa: N802  (httpx is imported only in the SuperNode)
    return _timed_transport_class()(*args, **kwargs)


# --- report ----------------------------------------------------------------------------------


def _median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def _fmt_s(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


# --- the emulator itself: does a plain TCP bulk transfer get the configured rate? ----------------

_TCP_RECEIVER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1)
print("ready", flush=True)
c, _ = s.accept(); n = 0; t0 = None
while (b := c.recv(1 << 16)):
    t0 = t0 or time.perf_counter(); n += len(b)
print(n, time.perf_counter() - t0, flush=True)
"""
_TCP_SENDER = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2]))); data = b"x" * (1 << 16); left = int(sys.argv[3])
while left > 0: c.sendall(data); left -= len(data)
c.close()
"""


def tcp_goodput_mbps(profile: Profile, size: int) -> tuple[float, str]:
    """A TCP bulk transfer of ``size`` bytes across the profile's link (a -> b): goodput and link counts."""
    import subprocess

    port = 5201
    with EmulatedLink(up=profile.direction(), down=profile.direction()) as link:
        receiver = subprocess.Popen(
            [*link.prefix("b"), sys.executable, "-c", _TCP_RECEIVER, str(port)], stdout=subprocess.PIPE, text=True
        )
        try:
            receiver.stdout.readline()
            subprocess.run(
                [*link.prefix("a"), sys.executable, "-c", _TCP_SENDER, link.address("b"), str(port), str(size)],
                check=True,
                timeout=600,
            )
            received, seconds = receiver.stdout.readline().split()
        finally:
            receiver.kill()
            receiver.wait()
        return int(received) * 8 / float(seconds) / 1e6, link.counts()


def check_emulator(names: list[str], size: int = 8_000_000) -> str:
    lines = [
        "# The link emulator (flq.netem) measured with a plain TCP bulk transfer",
        "",
        f"Written by `benchmarks/transport_throughput.py --check-emulator` on {time.strftime('%Y-%m-%d %H:%M')}: "
        f"{size / 1e6:g} MB over one Linux TCP connection (cubic) from namespace a to b; goodput from the first "
        "byte received to the last, so it includes slow start. Queue: 100 ms at the rate, drop-tail.",
        "",
        "| link | configured Mb/s | TCP goodput Mb/s | share | link counts (a->b; b->a) |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        profile = profile_named(name)
        goodput, counts = tcp_goodput_mbps(profile, size)
        rate = profile.rate_mbps
        share = f"{goodput / rate:.2f}" if rate else "-"
        lines.append(f"| {name} | {rate or 'no cap'} | {goodput:.1f} | {share} | {counts} |")
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def cell_ratios(results: list[ProfileResult]) -> list[tuple[str, int, float, float]]:
    """(link, size, QUIC/HTTP persistent, QUIC/HTTP reconnecting) per measured cell."""
    out = []
    for result in results:
        for size in result.profile.sizes:
            t = {
                label: _median(r.fleet_s for r in result.rounds if r.label == label and r.size == size)
                for label in LABELS
            }
            out.append((result.profile.name, size, t["quic"] / t["http"], t["quic-reconnect"] / t["http-reconnect"]))
    return out


def plot_ratios(results: list[ProfileResult], path: Path) -> None:
    from matplotlib.figure import Figure

    cells = cell_ratios(results)
    fig = Figure(figsize=(max(8.0, 0.45 * len(cells)), 4.8), layout="constrained")
    ax = fig.add_subplot()
    xs = range(len(cells))
    ax.bar([x - 0.2 for x in xs], [c[2] for c in cells], width=0.4, label="persistent")
    ax.bar([x + 0.2 for x in xs], [c[3] for c in cells], width=0.4, label="reconnecting")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(1.25, color="red", linewidth=0.8, linestyle="--", label="1.25x (target's ceiling)")
    ax.set_xticks(list(xs), [f"{c[0]} {c[1] / 1e6:g}MB" for c in cells], rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("QUIC round s / HTTP round s")
    ax.set_title("Fleet round time, QUIC over HTTP, per link and adapter size (below 1: QUIC faster)")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def ratio_summary(results: list[ProfileResult]) -> str:
    ratios = [r for c in cell_ratios(results) for r in c[2:]]
    if not ratios:
        return ""
    at_most_http = sum(r <= 1.0 for r in ratios)
    return (
        f"Across {len(ratios)} cells (links x sizes x persistent/reconnecting): QUIC at most HTTP's round time in "
        f"{at_most_http} ({100 * at_most_http / len(ratios):.0f}%), worst ratio {max(ratios):.2f}, "
        f"median {statistics.median(ratios):.2f}."
    )


def report(results: list[ProfileResult], reps: int, congestion: str, resume_paths: bool) -> str:
    import aioquic
    import flwr

    lines = [
        "# Fleet transport: QUIC (flq) vs Flower's HTTP/1.1 + TLS, side by side",
        "",
        f"Written by `benchmarks/transport_throughput.py` on {time.strftime('%Y-%m-%d %H:%M')}: "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), Python {platform.python_version()}, "
        f"flwr {flwr.__version__}, aioquic {aioquic.__version__}, QUIC congestion control `{congestion}`, "
        f"path resumption {'on' if resume_paths else 'off'}. "
        f"Medians of {reps} repetitions per cell. One real flq-superlink serving Flower's SuperLink app over "
        "HTTPS (TCP) and QUIC (UDP); four real SuperNodes (QUIC / HTTP, each with a persistent connection "
        "or reconnecting every round); adapters of random float32 (LZ4 cannot shrink them). "
        "Round = the time the node's Fleet requests for one task were in flight (pull-messages, pull-object, "
        "confirm, push-messages, push-object; overlapping requests count once), poll sleeps and ClientApp "
        "start-up excluded. MB/s = adapter bytes down + up over the time pull-object / push-object requests "
        "were in flight. *Ratio* = QUIC time / HTTP time (below 1: QUIC faster). "
        "*First request* = the round's first request, which in reconnect mode includes the handshake "
        "(QUIC resumes with 0-RTT; HTTP does TCP + full TLS 1.3).",
        "",
        "| link | adapter | QUIC round s | HTTP round s | ratio | QUIC MB/s | HTTP MB/s | QUIC reconnect round s "
        "| HTTP reconnect round s | ratio | first request, reconnecting: QUIC / HTTP ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        profile = result.profile
        for size in profile.sizes:
            cell = {label: [r for r in result.rounds if r.label == label and r.size == size] for label in LABELS}
            t = {label: _median(r.fleet_s for r in rows) for label, rows in cell.items()}
            mbs = {
                label: _median(r.object_bytes / r.object_s / 1e6 for r in rows if r.object_s > 0)
                for label, rows in cell.items()
            }
            first = {label: _median(r.first_s for r in rows) * 1000 for label, rows in cell.items()}
            rtt = (
                f" ({first['quic-reconnect'] / profile.rtt_ms:.1f} / {first['http-reconnect'] / profile.rtt_ms:.1f} RTT)"
                if profile.rtt_ms
                else ""
            )
            lines.append(
                f"| {profile.name} | {size / 1e6:g} MB | {_fmt_s(t['quic'])} | {_fmt_s(t['http'])} | "
                f"{t['quic'] / t['http']:.2f} | {mbs['quic']:.1f} | {mbs['http']:.1f} | "
                f"{_fmt_s(t['quic-reconnect'])} | {_fmt_s(t['http-reconnect'])} | "
                f"{t['quic-reconnect'] / t['http-reconnect']:.2f} | "
                f"{first['quic-reconnect']:.0f} / {first['http-reconnect']:.0f}{rtt} |"
            )
    skipped = [r.profile.name for r in results if 4_000_000 not in r.profile.sizes]
    lines += ["", ratio_summary(results)]
    lines += [
        "",
        (
            f"Not measured: 4 MB adapters on {', '.join(skipped)} (left out to bound the run time; see PROFILES). "
            if skipped
            else ""
        )
        + "Each cell is a median of few rounds on a shared 2-CPU machine: read ratios, and only "
        "differences well beyond a few tens of percent.",
    ]
    lines += [
        "",
        "Per profile: forwarder counts, wall time, and the machine's 5-minute load average at start/end "
        f"(it is shared; {os.cpu_count()} CPUs): "
        + "; ".join(
            f"{r.profile.name}: {r.link or 'loopback, no emulation'}, {r.wall_s / 60:.1f} min, "
            f"load {r.load[0]:.1f}/{r.load[1]:.1f}"
            for r in results
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    node = sub.add_parser("supernode", help="(internal) a timed SuperNode; Flower's flags after --")
    node.add_argument("--transport", choices=("quic", "http"), required=True)
    node.add_argument("--timing-log", required=True)
    node.add_argument("--reconnect", action="store_true")
    node.add_argument("--congestion", default="westwood")
    node.add_argument("--resume-paths", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--profiles", default=",".join(PROFILES), help="comma list of " + ", ".join(PROFILES).replace("%", "%%")
    )
    parser.add_argument(
        "--grid", action="store_true", help="the link grid (GRID): " + ", ".join(GRID).replace("%", "%%")
    )
    parser.add_argument("--check-emulator", action="store_true", help="measure the emulator with TCP bulk transfers")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="loopback only, 1 repetition, results/tmp/")
    parser.add_argument(
        "--congestion",
        choices=("westwood", "reno", "cubic"),
        default="westwood",
        help="QUIC congestion controller (flq-superlink/-supernode --quic-congestion-control)",
    )
    parser.add_argument(
        "--resume-paths",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="QUIC careful resumption from the last pipe measured to the peer (--quic-resume-paths)",
    )
    parser.add_argument(
        "--sizes-mb", type=float, nargs="+", default=None, help="adapter sizes in MB (default: each profile's, 0.1 1 4)"
    )
    parser.add_argument("--out", default=None, help="markdown output (default results/transport_throughput.md)")
    argv = sys.argv[1:]
    if argv and argv[0] == "supernode":
        split = argv.index("--")
        args = parser.parse_args(argv[:split])
        supernode_main(args, argv[split + 1 :])
        return
    args = parser.parse_args(argv)
    if args.check_emulator:
        text = check_emulator(["20ms-0%-r5", "20ms-0%-r20", "20ms-0%-r100", "100ms-0%-r20", "100ms-0%-j10-r20"])
        path = Path(args.out) if args.out else RESULTS / "link_emulator.md"
        path.write_text(text)
        print(f"written to {path}")
        return
    if args.grid:
        names = GRID
    else:
        names = ["loopback"] if args.quick else [n.strip() for n in args.profiles.split(",") if n.strip()]
    reps = 1 if args.quick else args.reps
    out = Path(args.out) if args.out else RESULTS / ("tmp" if args.quick else "") / "transport_throughput.md"
    if any(profile_named(n).emulated for n in names) and os.geteuid() != 0:
        sys.exit("the emulated-WAN profiles need root (ip netns, TUN); use --profiles loopback otherwise")
    results = []
    for name in names:
        print(f"== {name}", flush=True)
        profile = profile_named(name)
        if args.sizes_mb:
            profile = dataclasses.replace(profile, sizes=tuple(int(mb * 1_000_000) for mb in args.sizes_mb))
        results.append(
            run_profile(profile, reps, RESULTS / "tmp" / f"transport-{name}", args.congestion, args.resume_paths)
        )
        text = report(results, reps, args.congestion, args.resume_paths)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)  # after every profile, so a long run leaves its partial table
        plot_ratios(results, out.with_suffix(".png"))
        print("\n".join(line for line in text.splitlines() if line.startswith(f"| {name} |")), flush=True)
    print(report(results, reps, args.congestion, args.resume_paths))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
