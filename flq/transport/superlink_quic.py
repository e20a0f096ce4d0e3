"""Serve Flower's SuperLink app over HTTP (uvicorn, as Flower does) and its Fleet API over QUIC.

Both servers run in one event loop around one FastAPI app, so a Fleet request arriving over
QUIC meets the same middleware (node auth, protobuf translation, errors) and the same
LinkState as one arriving over HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import uvicorn

from .flower_pins import (
    SuperLinkLifespan,
    SuperLinkLifespanConfig,
    console_handler,
    create_app,
    get_uvicorn_log_config,
)
from .quic_server import FleetQuicServer
from .quic_settings import QuicSettings

log = logging.getLogger("flq.transport.quic")


@dataclass(frozen=True)
class QuicListen:
    host: str
    port: int
    certfile: str
    keyfile: str
    settings: QuicSettings


def run_superlink(config: SuperLinkLifespanConfig, quic: QuicListen) -> None:
    """Blocking, like `flower-superlink`: returns when the server is asked to exit."""
    app = create_app(config, SuperLinkLifespan)
    server = uvicorn.Server(
        uvicorn.Config(
            app=app,
            host=config.host,
            port=config.port,
            reload=False,
            access_log=True,
            log_config=get_uvicorn_log_config(console_handler.level),
            ssl_keyfile=config.ssl_keyfile,
            ssl_certfile=config.ssl_certfile,
            workers=1,
        )
    )
    asyncio.run(_serve(server, app, quic))


async def _serve(server: uvicorn.Server, app, quic: QuicListen) -> None:
    fleet = FleetQuicServer(
        app,
        certfile=quic.certfile,
        keyfile=quic.keyfile,
        settings=quic.settings,
        lifespan_state=lambda: getattr(getattr(server, "lifespan", None), "state", {}),
    )
    http = asyncio.ensure_future(server.serve())
    # Start QUIC only once the app's lifespan (LinkState, SuperExec) is up, as HTTP does.
    while not server.started and not http.done():
        await asyncio.sleep(0.05)
    if http.done():
        await http  # startup failed: let uvicorn's error surface
        return
    host, port = await fleet.start(quic.host, quic.port)
    log.info("Starting the SuperLink Fleet QUIC API on %s:%s (UDP, ALPN flq-fleet/1)", host, port)
    # uvicorn re-raises SIGINT/SIGTERM after its shutdown, which may end the process before a
    # `finally` here runs: close QUIC (telling every node why) as soon as shutdown begins.
    closer = asyncio.ensure_future(_close_on_exit(server, fleet))
    try:
        await http
    finally:
        closer.cancel()
        fleet.close()


async def _close_on_exit(server: uvicorn.Server, fleet: FleetQuicServer) -> None:
    while not server.should_exit:
        await asyncio.sleep(0.1)
    log.info("Closing the SuperLink Fleet QUIC API")
    fleet.close()
