"""A FleetQuicServer that answers every request with its body's SHA-256, and a client that sends one.

For real QUIC transfers between processes in different network namespaces (``flq.netem``):

    python -m harness.quic_echo serve HOST PORT CERT KEY          # prints "listening" when ready
    python -m harness.quic_echo send HOST PORT CA BYTES           # prints the digest and the seconds
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time

from flq.transport.quic_client import FleetQuicClient
from flq.transport.quic_server import FleetQuicServer
from flq.transport.quic_settings import QuicSettings


async def digest_app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = (await receive())["body"]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": hashlib.sha256(body).hexdigest().encode()})


async def serve(host: str, port: int, cert: str, key: str) -> None:
    server = FleetQuicServer(digest_app, certfile=cert, keyfile=key, settings=QuicSettings())
    await server.start(host, port)
    print("listening", flush=True)
    await asyncio.Event().wait()


async def send(host: str, port: int, ca: str, size: int) -> None:
    client = FleetQuicClient(host, port, server_name="localhost", cafile=ca, settings=QuicSettings())
    body = os.urandom(size)  # incompressible: LZ4 framing must not shrink what crosses the link
    started = time.perf_counter()
    response = await client.request("POST", "/v1/fleet/push-object", [], body, read_timeout=300.0)
    print(response.body.decode(), hashlib.sha256(body).hexdigest(), f"{time.perf_counter() - started:.3f}", flush=True)
    await client.close()


if __name__ == "__main__":
    command, host, port, *rest = sys.argv[1:]
    if command == "serve":
        asyncio.run(serve(host, int(port), *rest))
    else:
        asyncio.run(send(host, int(port), rest[0], int(rest[1])))
