"""The QUIC server's small sans-I/O guards: admission, the memory budget, the rate-limited log,
and the flq-superlink flags that set them. No sockets."""

from __future__ import annotations

import logging

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import pull_quic_header

from flq.transport import quic_server
from flq.transport.admission import Admission, AdmissionLimits, Verdict, address_key, initial_decrypts
from flq.transport.certs import make_certificates
from flq.transport.log_limit import RateLimitedLog
from flq.transport.memory_budget import RESERVE_PER_CONNECTION, SMALL_REQUEST, Account, MemoryBudget
from flq.transport.quic_server import TRIM_AFTER_RELEASE, TRIM_INTERVAL_S, FleetQuicServer
from flq.transport.quic_settings import QuicSettings, client_configuration
from harness.quic_attacks import junk_initial

# --- admission ----------------------------------------------------------------------------------


def test_retry_starts_at_a_quarter_of_the_half_open_cap_in_auto_mode():
    admission = Admission(AdmissionLimits(max_half_open=8))
    for i in range(2):
        assert admission.verdict("10.0.0.1", proven=False) == (Verdict.ACCEPT, "")
        admission.opened(i, "10.0.0.1", proven=False, now=0.0)
    assert admission.verdict("10.0.0.2", proven=False)[0] is Verdict.RETRY
    assert admission.verdict("10.0.0.2", proven=True)[0] is Verdict.ACCEPT  # it echoed a token
    for i in range(2, 8):
        admission.opened(i, "10.0.0.3", proven=True, now=0.0)
    assert admission.verdict("10.0.0.4", proven=True) == (Verdict.DROP, "half-open cap")


@pytest.mark.parametrize(("mode", "expected"), [("always", Verdict.RETRY), ("never", Verdict.ACCEPT)])
def test_retry_modes(mode, expected):
    admission = Admission(AdmissionLimits(retry=mode, max_half_open=4))
    for i in range(3):
        admission.opened(i, "10.0.0.1", proven=False, now=0.0)
    assert admission.verdict("10.0.0.2", proven=False)[0] is expected


def test_only_proven_connections_count_against_their_address():
    admission = Admission(AdmissionLimits(max_per_address=2, retry="never"))
    for i in range(5):  # spoofed handshakes "from" a node's address: half-open, unproven
        admission.opened(("spoof", i), "10.0.0.7", proven=False, now=0.0)
    assert admission.verdict("10.0.0.7", proven=False)[0] is Verdict.ACCEPT  # the node still gets in
    for i in range(2):
        admission.opened(i, "10.0.0.7", proven=False, now=1.0)
        assert admission.established(i)
    assert admission.verdict("10.0.0.7", proven=True) == (Verdict.DROP, "per-address cap")
    admission.opened(("spoof", 99), "10.0.0.7", proven=False, now=1.0)
    assert not admission.established(("spoof", 99))  # completing over the cap: close it
    admission.closed(0)
    admission.closed(("spoof", 99))
    assert admission.connections_from("10.0.0.7") == 1


def test_half_open_connections_expire_oldest_first_and_closing_frees_every_count():
    admission = Admission(AdmissionLimits(handshake_timeout=10.0))
    for i in range(4):
        admission.opened(i, "10.0.0.1", proven=False, now=float(i))
    admission.established(1)
    assert admission.expired(12.5) == [0, 2]
    for i in range(4):
        admission.closed(i)
    assert admission.half_open == 0 and admission.connections == 0 and admission.connections_from("10.0.0.1") == 0


def test_total_connections_are_capped_and_ipv6_counts_per_64():
    admission = Admission(AdmissionLimits(max_connections=3, max_per_address=2))
    assert address_key("2001:db8:1:2::5") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("10.0.0.1") == "10.0.0.1"
    admission.opened("a", "2001:db8:1:2::5", proven=True, now=0.0)
    admission.opened("b", "2001:db8:1:2::6", proven=True, now=0.0)
    assert admission.verdict("2001:db8:1:2::7", proven=True) == (Verdict.DROP, "per-address cap")
    admission.opened("c", "10.0.0.1", proven=True, now=0.0)
    assert admission.verdict("10.0.0.2", proven=True) == (Verdict.DROP, "connection cap")


def test_only_an_initial_that_decrypts_passes(tmp_path):
    conn = QuicConnection(configuration=client_configuration("localhost", QuicSettings()))
    conn.connect(("10.0.0.2", 4433), now=0.0)
    datagram = conn.datagrams_to_send(now=0.0)[0][0]

    def check(data: bytes) -> bool:
        buf = Buffer(data=data)
        header = pull_quic_header(buf, host_cid_length=8)
        return initial_decrypts(data, header, buf.tell())

    assert check(datagram)
    tampered = bytearray(datagram)
    tampered[200] ^= 0xFF
    assert not check(bytes(tampered))
    assert not check(junk_initial())


# --- memory budget ----------------------------------------------------------------------------


def test_accounts_share_one_budget_and_say_which_limit_refused():
    budget = MemoryBudget(100)
    a, b = Account(budget, cap=80), Account(budget, cap=80)
    assert a.try_charge(70) is None
    assert a.try_charge(20) == "connection"
    assert b.try_charge(40) == "server" and budget.refusals == 1
    assert b.try_charge(30) is None and budget.used == 100 and budget.peak == 100
    a.close()
    assert budget.used == 30 and a.held == 0
    b.release(1000)  # never more than it holds
    assert budget.used == 0


def test_the_budget_keeps_a_reserve_only_small_charges_reach_a_share_per_connection():
    budget = MemoryBudget(100 << 20, reserve=1 << 20)
    hog, small = Account(budget, cap=200 << 20), Account(budget, cap=200 << 20)
    assert budget.try_charge(99 << 20) and not budget.try_charge(1)  # out-of-order data: never the reserve
    assert hog.try_charge(1) == "server"  # a large request waits
    assert small.try_charge(SMALL_REQUEST, small=True) is None and budget.reserved == SMALL_REQUEST
    assert small.try_charge(RESERVE_PER_CONNECTION, small=True) == "server"  # its share of the reserve is taken
    small.close()
    assert budget.reserved == 0 and budget.used == 99 << 20


# --- giving the heap back to the OS -------------------------------------------------------------


def _server(tmp_path):
    certs = make_certificates(tmp_path)
    return FleetQuicServer(None, certfile=str(certs["server_cert"]), keyfile=str(certs["server_key"]))


def test_the_heap_is_trimmed_after_a_close_at_a_bounded_rate(tmp_path, monkeypatch):
    trims = []
    monkeypatch.setattr(quic_server, "_malloc_trim", lambda pad: trims.append(pad) or 1)
    server = _server(tmp_path)
    assert not server.maybe_trim_heap(100.0) and trims == []  # nothing closed, nothing released
    server.forget(object())  # a connection closed
    assert server.maybe_trim_heap(100.0) and trims == [0]
    server.forget(object())
    assert not server.maybe_trim_heap(101.0) and trims == [0]  # at most every TRIM_INTERVAL_S...
    assert server.maybe_trim_heap(100.0 + TRIM_INTERVAL_S) and trims == [0, 0]  # ...but not forgotten
    server.budget.charge(TRIM_AFTER_RELEASE)
    server.budget.release(TRIM_AFTER_RELEASE)  # a large release, no close
    assert server.maybe_trim_heap(200.0) and trims == [0, 0, 0]


def test_trimming_is_a_no_op_without_malloc_trim(tmp_path, monkeypatch):
    monkeypatch.setattr(quic_server, "_malloc_trim", None)
    assert quic_server.trim_heap() is False
    server = _server(tmp_path)
    server.forget(object())
    assert server.maybe_trim_heap(100.0) is False  # no error, nothing called

    def broken(pad):
        raise OSError("no")

    monkeypatch.setattr(quic_server, "_malloc_trim", broken)
    assert quic_server.trim_heap() is False  # never raises
    libc_has_it = quic_server._find_malloc_trim()  # found on Linux/glibc, None elsewhere
    assert libc_has_it is None or callable(libc_has_it)


# --- rate-limited log --------------------------------------------------------------------------


def test_the_log_writes_a_burst_then_a_line_per_interval_and_sums_up_the_rest(caplog):
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("flq.test.limited"), rate=1.0, burst=3, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="flq.test.limited"):
        for i in range(1000):
            limited.warning("refused %d", i)
        now[0] += 2.0
        limited.flush()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["refused 0", "refused 1", "refused 2", "... 997 similar QUIC log lines suppressed (rate limit)"]
    assert limited.suppressed_total == 997 and limited.suppressed == 0


# --- flq-superlink flags --------------------------------------------------------------------------


def test_superlink_guard_flags_reach_the_settings_and_not_flower():
    from flq.transport.cli import _add_superlink_args, _guard_settings, _parse, _quic_settings
    from flq.transport.flower_pins import _parse_args_run_superlink

    argv = [
        "--insecure",
        "--quic-memory-budget-mib=512",
        "--quic-max-half-open=64",
        "--quic-max-connections-per-address=100",
        "--quic-max-connections=2000",
        "--quic-retry=always",
    ]
    args, _, flower_argv = _parse(_parse_args_run_superlink(), _add_superlink_args, "flq-superlink", argv)
    settings = _guard_settings(args, _quic_settings(args))
    assert (settings.memory_budget, settings.max_half_open, settings.max_connections_per_address) == (
        512 << 20,
        64,
        100,
    )
    assert settings.max_connections == 2000 and settings.retry == "always"
    assert flower_argv == ["--insecure"]
    plain = _parse(_parse_args_run_superlink(), _add_superlink_args, "flq-superlink", [])[0]
    assert _guard_settings(plain, _quic_settings(plain)) == QuicSettings()  # the flags' defaults are the settings'
    with pytest.raises(SystemExit):
        bad = _parse(_parse_args_run_superlink(), _add_superlink_args, "x", ["--quic-memory-budget-mib=64"])[0]
        _guard_settings(bad, _quic_settings(bad))
