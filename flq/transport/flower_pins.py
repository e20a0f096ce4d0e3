"""Every Flower name the QUIC transport relies on, in one place, for one exact Flower version.

Flower 1.41 has no transport plug-in point, so `flq-superlink` and `flq-supernode` reach
into it: some of these names are private (leading underscore) or undocumented and may
change in any release. tests/test_flower_pins.py checks that each exists with the
signature used here; bump FLOWER_VERSION only after that test passes on the new version.
"""

from __future__ import annotations

import flwr

FLOWER_VERSION = "1.41.0"

# --- SuperLink ---------------------------------------------------------------------------
# Builds Flower's FastAPI app (Fleet, Control and Runtime routes, middleware, shared state).
# --- shared ------------------------------------------------------------------------------
from flwr.supercore.http_logging import get_uvicorn_log_config  # noqa: E402
from flwr.supercore.logger import console_handler  # noqa: E402

# The subclass replaces ProtobufClient's PRIVATE `_client` (an httpx.Client) after __init__.
from flwr.supercore.protobuf.client import ProtobufClient  # noqa: E402
from flwr.supercore.telemetry import EventType, event  # noqa: E402
from flwr.supercore.update_check import warn_if_flwr_update_available  # noqa: E402

# The lifespan class `flower-superlink` hands to create_app (state, SuperExec, health).
# PRIVATE: Flower's own CLI parser and its parse-and-validate step, reused so that every
# Flower flag keeps its meaning; the second reads sys.argv.
from flwr.superlink.cli.flower_superlink import (  # noqa: E402
    SuperLinkLifespan,
    _parse_args_run_superlink,
    _parse_superlink_lifespan_config,
)
from flwr.superlink.config_loader import SuperLinkLifespanConfig  # noqa: E402
from flwr.superlink.main import create_app  # noqa: E402

# --- SuperNode ---------------------------------------------------------------------------
from flwr.supernode import fleet_http_connection  # noqa: E402

# PRIVATE: Flower's SuperNode parser (reused as above) and its entry point.
from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode, flower_supernode  # noqa: E402

# `fleet_http_connection.http_request_response` builds its Fleet client through the module
# global `FleetHttpClient`; flq-supernode substitutes a subclass there.
from flwr.supernode.fleet_http_client import FleetHttpClient  # noqa: E402

FLEET_CONNECTION_MODULE = fleet_http_connection
FLEET_CLIENT_GLOBAL = "FleetHttpClient"

# Every Fleet RPC path Flower 1.41's SuperNode calls (FleetHttpClient) and its SuperLink routes
# (flwr/superlink/routers/fleet/router.py), all POST. The QUIC server serves exactly these.
FLEET_PATHS = frozenset(
    "/v1/fleet/" + rpc
    for rpc in (
        "register-node",
        "activate-node",
        "deactivate-node",
        "unregister-node",
        "send-node-heartbeat",
        "pull-messages",
        "push-messages",
        "get-run",
        "get-fab",
        "push-object",
        "pull-object",
        "confirm-message-received",
    )
)


def check_flower_version() -> None:
    """Refuse to run against a Flower other than the one these pins were checked on."""
    if flwr.__version__ != FLOWER_VERSION:
        raise RuntimeError(
            f"FLQ's QUIC transport is pinned to flwr=={FLOWER_VERSION} (it uses private Flower "
            f"internals, see flq/transport/flower_pins.py); found flwr=={flwr.__version__}."
        )


__all__ = [
    "FLOWER_VERSION",
    "check_flower_version",
    "create_app",
    "SuperLinkLifespan",
    "SuperLinkLifespanConfig",
    "_parse_args_run_superlink",
    "_parse_superlink_lifespan_config",
    "FleetHttpClient",
    "ProtobufClient",
    "FLEET_CONNECTION_MODULE",
    "FLEET_CLIENT_GLOBAL",
    "FLEET_PATHS",
    "_parse_args_run_supernode",
    "flower_supernode",
    "get_uvicorn_log_config",
    "console_handler",
    "EventType",
    "event",
    "warn_if_flwr_update_available",
]
