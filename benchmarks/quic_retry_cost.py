"""What QUIC Retry (address validation) costs a clean handshake: the same loopback server with
``--quic-retry never`` and ``always``, alternating, one new connection and one request at a time.

    .venv/bin/python benchmarks/quic_retry_cost.py            # -> results/quic_retry_cost.md
    .venv/bin/python benchmarks/quic_retry_cost.py --n 20     # quicker

Retry adds one round trip before the handshake (RFC 9000 8.1); on loopback that is mostly the
CPU of one more packet exchange, so over a WAN link add one RTT to the figure here.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from flq.transport.certs import make_certificates  # noqa: E402
from flq.transport.quic_client import FleetQuicClient  # noqa: E402
from flq.transport.quic_server import FleetQuicServer  # noqa: E402
from flq.transport.quic_settings import QuicSettings  # noqa: E402

PATH = "/v1/fleet/send-node-heartbeat"


async def ok_app(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


class Server:
    def __init__(self, certs: dict, settings: QuicSettings) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.server = FleetQuicServer(
            ok_app, certfile=str(certs["server_cert"]), keyfile=str(certs["server_key"]), settings=settings
        )
        asyncio.run_coroutine_threadsafe(self.server.start("127.0.0.1", 0), self.loop).result(30)
        self.port = self.server.address[1]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        time.sleep(0.1)
        self.loop.call_soon_threadsafe(self.loop.stop)


async def one_handshake(port: int, ca: str) -> float:
    client = FleetQuicClient("127.0.0.1", port, server_name="localhost", cafile=ca, settings=QuicSettings())
    started = time.perf_counter()
    response = await client.request("POST", PATH, [], b"x")
    elapsed = time.perf_counter() - started
    await client.close()
    if response.status != 200:
        raise RuntimeError(f"status {response.status}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="handshakes per mode")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quic_retry_cost.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        certs = make_certificates(Path(tmp))
        servers = {mode: Server(certs, dataclasses.replace(QuicSettings(), retry=mode)) for mode in ("never", "always")}
        times: dict[str, list[float]] = {mode: [] for mode in servers}
        for _ in range(args.n):  # alternate, so both modes see the same machine load
            for mode, server in servers.items():
                times[mode].append(asyncio.run(one_handshake(server.port, str(certs["ca_cert"]))))
        retries = servers["always"].server.stats
        for server in servers.values():
            server.stop()

    def ms(xs: list[float], q: float) -> float:
        return 1000 * statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1] if q < 100 else 1000 * max(xs)

    p50 = {m: 1000 * statistics.median(t) for m, t in times.items()}
    lines = [
        "# What QUIC Retry costs a clean handshake (loopback)",
        "",
        f"Written by `benchmarks/quic_retry_cost.py --n {args.n}` on {time.strftime('%Y-%m-%d %H:%M')}: one "
        "FleetQuicServer per mode in this process, a new FleetQuicClient per handshake (full TLS 1.3 "
        "handshake, no session ticket) sending one request; modes alternate. Time = from the request's "
        "start to its response, handshake included.",
        "",
        "| --quic-retry | p50 ms | p90 ms | max ms |",
        "|---|---|---|---|",
        *(f"| {m} | {p50[m]:.1f} | {ms(t, 90):.1f} | {ms(t, 100):.1f} |" for m, t in times.items()),
        "",
        f"Retry adds {p50['always'] - p50['never']:.1f} ms at the median here ({p50['always'] / p50['never']:.2f}x), "
        "plus one network RTT on a real link. Server stats of the `always` server: "
        f"{dataclasses.asdict(retries) if dataclasses.is_dataclass(retries) else retries}.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
