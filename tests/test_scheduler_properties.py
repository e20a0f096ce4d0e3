"""Hypothesis: whatever the reports say (any status, missing or absurd numbers, None losses,
no reports, everyone failed), no scheduler crashes, every rank stays in [rank_min, rank_max],
and the state stays strict JSON."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from flq.scheduler import ClientInfo, ClientReport, RoundOutcome, SchedulerDefaults, build_scheduler

from .scheduler_federation import BYTES_PER_RANK, STEP_S, TIERS, StandInTier

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None)
STATUSES = ("ok", "late", "rejected", "failed", "oom", "unheard-of")
# "tiny" caps ranks at 2, below some runs' rank_min: the run's floor must win
PROPERTY_TIERS = dict(TIERS, tiny=StandInTier("tiny", 8.0, 1_000, 1.0, 1.0, 300.0, 0.1, 2))
TIER_NAMES = ("gpu", "cpu", "edge", "tiny", None, "unknown-tier")

odd_float = st.one_of(st.floats(0.0, 1e4), st.just(0.0), st.just(math.nan), st.just(math.inf), st.just(-1.0))
odd_loss = st.one_of(st.none(), st.floats(-10.0, 10.0), st.just(math.nan), st.just(math.inf))


@st.composite
def defaults(draw) -> SchedulerDefaults:
    rank_min = draw(st.integers(1, 4))
    rank_max = draw(st.integers(rank_min, 64))
    return SchedulerDefaults(
        rank=draw(st.integers(rank_min, rank_max)),
        rank_max=rank_max,
        rank_min=rank_min,
        bits=draw(st.sampled_from((4, 8, 16))),
        local_steps=draw(st.integers(1, 20)),
    )


@st.composite
def rounds(draw):
    """[(clients, deadline, reports, outcome)] for 1-4 rounds over node ids 0..7."""
    out = []
    for server_round in range(1, draw(st.integers(1, 4)) + 1):
        nodes = draw(st.lists(st.integers(0, 7), unique=True, max_size=8))
        clients = [
            ClientInfo(
                n, draw(st.sampled_from(TIER_NAMES)), n, draw(st.one_of(st.none(), st.floats(100.0, 30_000.0))), 100
            )
            for n in nodes
        ]
        deadline = draw(st.one_of(st.none(), st.floats(0.5, 300.0)))
        reporting = draw(st.lists(st.sampled_from(nodes), unique=True)) if nodes else []
        reports = [
            ClientReport(
                n,
                draw(st.sampled_from(STATUSES)),
                draw(st.integers(1, 128)),
                draw(st.sampled_from((4, 8, 16))),
                draw(st.sampled_from(TIER_NAMES)),
                draw(st.integers(0, 40)),
                draw(st.integers(0, 1000)),
                draw(odd_float),
                draw(odd_float),
                draw(odd_float),
                0,
                0,
                draw(odd_loss),
                draw(odd_loss),
                draw(st.booleans()),
            )
            for n in reporting
        ]
        outcome = draw(
            st.one_of(
                st.none(),
                st.builds(RoundOutcome, st.just(server_round), odd_float, st.just(deadline), odd_loss, odd_loss),
            )
        )
        out.append((clients, deadline, reports, outcome))
    return out


def check_round(name, scheduler, d: SchedulerDefaults, server_round, clients, deadline, reports, outcome):
    assignments = scheduler.assign(server_round, clients, deadline)
    assert set(assignments) == {c.node_id for c in clients}
    for a in assignments.values():
        assert d.rank_min <= a.rank <= d.rank_max, (name, a)
        assert 1 <= a.local_steps <= d.local_steps
        assert a.bits in (4, 8, 16, 32)
        assert a.budget_s is None or (math.isfinite(a.budget_s) and a.budget_s > 0)
    scheduler.observe(server_round, reports, outcome)
    json.dumps(scheduler.state_dict(), allow_nan=False)


@PROPERTY_SETTINGS
@given(name=st.sampled_from(("bandit", "lite", "tier", "fixed")), d=defaults(), script=rounds())
def test_any_reports_keep_ranks_in_bounds_and_state_json(name, d, script):
    scheduler = build_scheduler(name, d, tiers=PROPERTY_TIERS, step_time_prior=STEP_S, bytes_per_rank=BYTES_PER_RANK)
    for server_round, (clients, deadline, reports, outcome) in enumerate(script, start=1):
        check_round(name, scheduler, d, server_round, clients, deadline, reports, outcome)


@settings(max_examples=15, deadline=None)
@given(d=defaults(), script=rounds())
def test_solver_keeps_ranks_in_bounds_whatever_it_observed(d, script):
    scheduler = build_scheduler(
        "solver", d, tiers=PROPERTY_TIERS, step_time_prior=STEP_S, bytes_per_rank=BYTES_PER_RANK
    )
    for server_round, (clients, deadline, reports, outcome) in enumerate(script, start=1):
        check_round("solver", scheduler, d, server_round, clients, deadline, reports, outcome)


@PROPERTY_SETTINGS
@given(d=defaults(), memory=st.floats(500.0, 30_000.0), script=rounds())
def test_bandit_with_bits_choice_keeps_bounds(d, memory, script):
    from flq.scheduler import MemoryModel

    model = MemoryModel(backbone_mb_16bit=memory / 2, activation_mb=200.0, adapter_mb_per_rank=5.0)
    scheduler = build_scheduler(
        "bandit", d, tiers=PROPERTY_TIERS, step_time_prior=STEP_S, memory_model=model, stop_on_budget=True
    )
    for server_round, (clients, deadline, reports, outcome) in enumerate(script, start=1):
        check_round("bandit+bits", scheduler, d, server_round, clients, deadline, reports, outcome)


def test_every_client_failing_every_round_still_gives_valid_assignments():
    d = SchedulerDefaults(rank=8, rank_max=32, local_steps=8)
    clients = [ClientInfo(n, tier) for n, tier in enumerate(("gpu", "cpu", "edge"))]
    for name in ("bandit", "lite", "solver"):
        scheduler = build_scheduler(
            name, d, tiers=PROPERTY_TIERS, step_time_prior=STEP_S, bytes_per_rank=BYTES_PER_RANK
        )
        for server_round in range(1, 6):
            assignments = scheduler.assign(server_round, clients, 30.0)
            failed = [
                ClientReport(c.node_id, "failed", a.rank, a.bits, c.tier) for c, a in zip(clients, assignments.values())
            ]
            scheduler.observe(server_round, failed, RoundOutcome(server_round, 30.0, 30.0, None, None))
        final = scheduler.assign(6, clients, 30.0)
        assert all(1 <= a.rank <= 32 and a.local_steps >= 1 for a in final.values()), name
        json.dumps(scheduler.state_dict(), allow_nan=False)
