"""The private Flower names the QUIC transport uses exist, with the signatures it relies on."""

from __future__ import annotations

import inspect

import flwr
import httpx

from flq.transport import flower_pins


def test_flower_version_is_the_pinned_one():
    assert flwr.__version__ == flower_pins.FLOWER_VERSION
    flower_pins.check_flower_version()  # does not raise


def _params(func) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_superlink_names():
    assert _params(flower_pins.create_app)[:2] == ["config", "superlink_lifespan_class"]
    assert _params(flower_pins.SuperLinkLifespan.__init__)[1:3] == ["config", "state_factory"]
    assert _params(flower_pins._parse_superlink_lifespan_config) == []  # reads sys.argv itself
    parser = flower_pins._parse_args_run_superlink()
    dests = {a.dest for a in parser._actions}
    assert {
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_ca_certfile",
        "host",
        "port",
        "insecure",
        "database",
        "simulation",
        "runtime_dependency_install",
    } <= dests
    fields = set(flower_pins.SuperLinkLifespanConfig.__dataclass_fields__)
    assert {"host", "port", "ssl_certfile", "ssl_keyfile"} <= fields


def test_supernode_names():
    module = flower_pins.FLEET_CONNECTION_MODULE
    assert getattr(module, flower_pins.FLEET_CLIENT_GLOBAL) is flower_pins.FleetHttpClient
    assert "FleetHttpClient.from_server_address" in inspect.getsource(module.http_request_response)
    assert issubclass(flower_pins.FleetHttpClient, flower_pins.ProtobufClient)
    sig = inspect.signature(flower_pins.FleetHttpClient.from_server_address)
    assert list(sig.parameters)[:4] == ["server_address", "insecure", "root_certificates", "interceptors"]
    assert "retry_invoker" in sig.parameters
    init = inspect.signature(flower_pins.ProtobufClient.__init__)
    assert {"base_url", "interceptors", "verify", "timeout", "retry_invoker"} <= set(init.parameters)
    client = flower_pins.FleetHttpClient("https://127.0.0.1:1", interceptors=[])
    try:
        assert isinstance(client._client, httpx.Client)  # the attribute the QUIC subclass replaces
    finally:
        client.close()
    dests = {a.dest for a in flower_pins._parse_args_run_supernode()._actions}
    assert {
        "superlink",
        "root_certificates",
        "insecure",
        "node_config",
        "port",
        "auth_supernode_private_key",
        "max_retries",
    } <= dests
    assert _params(flower_pins.flower_supernode) == []


def test_shared_names():
    assert callable(flower_pins.get_uvicorn_log_config) and callable(flower_pins.event)
    assert hasattr(flower_pins.EventType, "RUN_SUPERLINK_ENTER")
    assert flower_pins.console_handler is not None


def test_fleet_paths_are_exactly_flowers_fleet_routes_and_client_calls():
    """The QUIC server's exact allowlist: every Fleet route the SuperLink serves, each one the SuperNode calls."""
    import re

    from flwr.superlink.routers.fleet.router import router

    routes = {(method, route.path) for route in router.routes for method in route.methods}
    assert routes == {("POST", path) for path in flower_pins.FLEET_PATHS}
    called = set(re.findall(r'path="(/v1/fleet/[a-z-]+)"', inspect.getsource(flower_pins.FleetHttpClient)))
    assert called == flower_pins.FLEET_PATHS
