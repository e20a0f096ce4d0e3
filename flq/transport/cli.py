"""`flq-superlink` and `flq-supernode`: Flower's own commands with the Fleet API on QUIC.

Both parse Flower's own argument parser with a few `--quic-*` flags added, so every Flower
flag keeps its meaning; the `--quic-*` flags are then removed and Flower's entry point runs
with the substitution in place (see superlink_quic and supernode_quic).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable

from .admission import RETRY_MODES
from .flower_pins import (
    EventType,
    _parse_args_run_superlink,
    _parse_args_run_supernode,
    _parse_superlink_lifespan_config,
    check_flower_version,
    console_handler,
    event,
    flower_supernode,
    warn_if_flwr_update_available,
)
from .frames import ALPN, Limits
from .quic_settings import QuicSettings
from .superlink_quic import QuicListen, run_superlink
from .supernode_quic import QuicClientOptions, default_session_file, install_quic_fleet_client, split_address


def _add_quic_tuning_args(group: argparse._ArgumentGroup) -> None:
    defaults = QuicSettings()
    group.add_argument(
        "--quic-idle-timeout",
        type=float,
        default=defaults.idle_timeout,
        metavar="SECONDS",
        help=f"close a QUIC connection after this long without a packet (default {defaults.idle_timeout:g})",
    )
    group.add_argument(
        "--quic-max-message-mib",
        type=int,
        default=defaults.limits.max_body >> 20,
        metavar="MIB",
        help=f"largest request or response body accepted over QUIC (default {defaults.limits.max_body >> 20})",
    )
    group.add_argument(
        "--quic-congestion-control",
        choices=("westwood", "reno", "cubic"),
        default=defaults.congestion_control,
        help=f"QUIC congestion controller (default {defaults.congestion_control}: "
        "keeps its window on random loss, see flq/transport/congestion.py)",
    )
    group.add_argument(
        "--quic-resume-paths",
        action=argparse.BooleanOptionalAction,
        default=defaults.resume_paths,
        help="with westwood, a new connection starts from half the pipe this process last measured "
        "to the same peer host (careful resumption; default on)",
    )
    group.add_argument(
        "--quic-adaptive-reordering",
        action=argparse.BooleanOptionalAction,
        default=defaults.adaptive_reordering,
        help="loss detection learns the path's reordering and undoes spurious congestion events "
        "(default on; off: RFC 9002's fixed thresholds, see flq/transport/recovery.py)",
    )


def _quic_settings(args: argparse.Namespace) -> QuicSettings:
    if args.quic_idle_timeout <= 1 or args.quic_max_message_mib < 1:
        raise SystemExit("--quic-idle-timeout must be > 1 and --quic-max-message-mib >= 1")
    defaults = QuicSettings()
    return QuicSettings(
        idle_timeout=args.quic_idle_timeout,
        keepalive_interval=min(defaults.keepalive_interval, args.quic_idle_timeout / 3),
        congestion_control=args.quic_congestion_control,
        resume_paths=args.quic_resume_paths,
        adaptive_reordering=args.quic_adaptive_reordering,
        limits=Limits(max_body=args.quic_max_message_mib << 20),
    )


def _add_superlink_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Fleet API over QUIC (FLQ)")
    group.add_argument(
        "--quic-address",
        default=None,
        metavar="HOST:PORT",
        help="UDP address of the Fleet API over QUIC (default: the same host and port "
        "number as the HTTP API, --host:--port, on UDP)",
    )
    group.add_argument(
        "--quic-certfile",
        default=None,
        help="TLS certificate for QUIC (default: --ssl-certfile); required with --insecure",
    )
    group.add_argument("--quic-keyfile", default=None, help="TLS key for QUIC (default: --ssl-keyfile)")
    _add_quic_tuning_args(group)
    _add_quic_guard_args(group)


def _add_quic_guard_args(group: argparse._ArgumentGroup) -> None:
    """The SuperLink's bounds against hostile senders (docs/deployment.md, "Limits and bad input")."""
    defaults = QuicSettings()
    group.add_argument(
        "--quic-memory-budget-mib",
        type=int,
        default=defaults.memory_budget >> 20,
        metavar="MIB",
        help="all request bytes QUIC peers together may make the SuperLink hold; past it new work is "
        f"refused (503) until memory is given back (default {defaults.memory_budget >> 20}; keep it "
        "above --quic-max-message-mib)",
    )
    group.add_argument(
        "--quic-max-half-open",
        type=int,
        default=defaults.max_half_open,
        metavar="N",
        help=f"connections whose handshake is not complete (default {defaults.max_half_open}; "
        "with --quic-retry auto, address validation starts at a quarter of it)",
    )
    group.add_argument(
        "--quic-max-connections-per-address",
        type=int,
        default=defaults.max_connections_per_address,
        metavar="N",
        help="connections from one IP address (IPv6: one /64), once proven (default "
        f"{defaults.max_connections_per_address}; raise it for many SuperNodes behind one NAT)",
    )
    group.add_argument(
        "--quic-max-connections",
        type=int,
        default=defaults.max_connections,
        metavar="N",
        help=f"QUIC connections in all (default {defaults.max_connections})",
    )
    group.add_argument(
        "--quic-retry",
        choices=RETRY_MODES,
        default=defaults.retry,
        help="QUIC Retry (address validation, costs new connections one round trip): 'auto' only "
        "while many handshakes are pending, 'always', or 'never' (default auto)",
    )


def _guard_settings(args: argparse.Namespace, settings: QuicSettings) -> QuicSettings:
    if args.quic_memory_budget_mib <= args.quic_max_message_mib:
        raise SystemExit("--quic-memory-budget-mib must be larger than --quic-max-message-mib")
    if min(args.quic_max_half_open, args.quic_max_connections_per_address, args.quic_max_connections) < 1:
        raise SystemExit("--quic-max-half-open, --quic-max-connections(-per-address) must be >= 1")
    return dataclasses.replace(
        settings,
        memory_budget=args.quic_memory_budget_mib << 20,
        max_half_open=args.quic_max_half_open,
        max_connections_per_address=args.quic_max_connections_per_address,
        max_connections=args.quic_max_connections,
        retry=args.quic_retry,
    )


def _add_supernode_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Fleet API over QUIC (FLQ)")
    group.add_argument(
        "--quic-session-file",
        default=None,
        metavar="PATH",
        help="where to keep the TLS session ticket for 0-RTT reconnects (default: "
        "$FLWR_HOME/quic/session-<superlink>-node<port>.json)",
    )
    group.add_argument(
        "--quic-server-name",
        default=None,
        metavar="NAME",
        help="name to verify in the SuperLink's certificate (default: the --superlink host)",
    )
    _add_quic_tuning_args(group)


def _parse(
    flower_parser: argparse.ArgumentParser, add_ours: Callable, prog: str, argv: list[str]
) -> tuple[argparse.Namespace, argparse.ArgumentParser, list[str]]:
    """Parse Flower's flags plus ours; return the args, the parser and argv without our flags."""
    parser = flower_parser
    parser.prog = prog
    parser.allow_abbrev = False  # an abbreviated --quic-* flag could not be told apart from Flower's
    add_ours(parser)
    args = parser.parse_args(argv)
    ours = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_ours(ours)
    _, flower_argv = ours.parse_known_args(argv)
    return args, parser, flower_argv


def _route_logs_to_flower() -> None:
    """FLQ's transport logs go where and how Flower's own do; aioquic's chatter is muted."""
    flq_log = logging.getLogger("flq")
    if console_handler not in flq_log.handlers:
        flq_log.addHandler(console_handler)
    flq_log.setLevel(logging.INFO)
    flq_log.propagate = False
    logging.getLogger("quic").setLevel(logging.WARNING)


def superlink_main(argv: list[str] | None = None) -> None:
    """Flower's SuperLink with its Fleet API also served over QUIC."""
    check_flower_version()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, parser, flower_argv = _parse(_parse_args_run_superlink(), _add_superlink_args, "flq-superlink", argv)
    if args.simulation:
        parser.error("--simulation has no Fleet API to serve over QUIC; use flower-superlink for simulation")
    certfile = args.quic_certfile or args.ssl_certfile
    keyfile = args.quic_keyfile or args.ssl_keyfile
    if not certfile or not keyfile:
        parser.error(
            "QUIC always uses TLS 1.3: give --ssl-certfile/--ssl-keyfile/--ssl-ca-certfile "
            "(or, with --insecure, --quic-certfile/--quic-keyfile)"
        )
    try:
        host, port = split_address(args.quic_address) if args.quic_address else (args.host, args.port)
    except ValueError as exc:
        parser.error(str(exc))
    settings = _guard_settings(args, _quic_settings(args))
    _route_logs_to_flower()

    sys.argv = [sys.argv[0], *flower_argv]  # Flower's own step re-reads sys.argv
    warn_if_flwr_update_available(process_name="flq-superlink")
    config = _parse_superlink_lifespan_config()
    logging.getLogger("flq.transport.quic").info("Starting Flower SuperLink (FLQ, Fleet API over QUIC, %s)", ALPN)
    event(EventType.RUN_SUPERLINK_ENTER)
    run_superlink(config, QuicListen(host=host, port=port, certfile=certfile, keyfile=keyfile, settings=settings))


def supernode_main(argv: list[str] | None = None) -> None:
    """Flower's SuperNode with its Fleet connection over QUIC."""
    check_flower_version()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, parser, flower_argv = _parse(_parse_args_run_supernode(), _add_supernode_args, "flq-supernode", argv)
    if args.insecure:
        parser.error(
            "--insecure is not supported: the QUIC Fleet transport always uses TLS 1.3. "
            "Give the SuperLink's CA certificate with --root-certificates instead."
        )
    try:
        split_address(args.superlink)
    except ValueError as exc:
        parser.error(str(exc))
    options = QuicClientOptions(
        settings=_quic_settings(args),
        session_file=args.quic_session_file or default_session_file(args.superlink, args.port),
        server_name=args.quic_server_name,
    )
    install_quic_fleet_client(options)
    _route_logs_to_flower()

    sys.argv = [sys.argv[0], *flower_argv]
    flower_supernode()
