"""Schedulers on synthetic federations: bounds, learning, hand-checked baselines, state.

The federation (tests/scheduler_federation.py) is a small pure-Python stand-in for the
virtual clock: three tiers (gpu, cpu, edge) with different step times and links, per-client
noise, a deadline. No Flower, no torch, no wall-clock thresholds.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from flq.scheduler import (
    SCHEDULERS,
    BanditScheduler,
    ClientInfo,
    ClientReport,
    LiteScheduler,
    MemoryModel,
    RoundOutcome,
    SchedulerDefaults,
    TierScheduler,
    build_scheduler,
)
from flq.scheduler.bandit import AverageRankBandit, largest_fitting, waterfill_ranks
from flq.scheduler.client_table import ClientTable, ReportColumns
from flq.scheduler.solver import RelaxedRanks, SolverScheduler, round_ranks, solve_relaxed_ranks
from flq.scheduler.time_model import OnlineLinearTime

from .scheduler_federation import (
    BYTES_PER_RANK,
    STEP_S,
    TIERS,
    SimClient,
    SimulatedFederation,
    StandInTier,
    on_time_share,
    three_tier_clients,
)

DEFAULTS = SchedulerDefaults(rank=8, rank_max=64, rank_min=1, bits=16, local_steps=8)
PRIORS = {"tiers": TIERS, "step_time_prior": STEP_S, "bytes_per_rank": BYTES_PER_RANK}
TABLE_OPTIONS = {"table": {"ranks": "tier:gpu=32,cpu=16,*=4"}}


def make(name: str, defaults: SchedulerDefaults = DEFAULTS, **options):
    return build_scheduler(name, defaults, **PRIORS, **{**TABLE_OPTIONS.get(name, {}), **options})


def run_rounds(scheduler, federation: SimulatedFederation, rounds: int, first: int = 1):
    """Assign, simulate, observe; returns [(assignments, reports, outcome)] per round."""
    history = []
    for server_round in range(first, first + rounds):
        assignments = scheduler.assign(server_round, federation.infos(), federation.deadline_s)
        reports, outcome = federation.run_round(server_round, assignments)
        scheduler.observe(server_round, reports, outcome)
        history.append((assignments, reports, outcome))
    return history


def report(
    node: int,
    status: str = "ok",
    rank: int = 8,
    bits: int = 16,
    steps: int = 8,
    compute_s: float = 8.0,
    transfer_s: float = 1.0,
    loss_before: float | None = 1.0,
    loss_after: float | None = 0.9,
    num_examples: int = 64,
    tier: str | None = "cpu",
) -> ClientReport:
    return ClientReport(
        node,
        status,
        rank,
        bits,
        tier,
        steps,
        num_examples,
        compute_s,
        transfer_s,
        compute_s + transfer_s,
        rank * BYTES_PER_RANK,
        rank * BYTES_PER_RANK,
        loss_before,
        loss_after,
        status == "ok",
    )


# --------------------------------------------------------------------------------------
# Every scheduler
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULERS)
def test_assignments_stay_within_rank_bounds_and_tier_ceilings(name):
    defaults = SchedulerDefaults(rank=8, rank_max=32, rank_min=2, bits=16, local_steps=8)
    scheduler = make(name, defaults)
    federation = SimulatedFederation(three_tier_clients(4, {"edge": 2.0}), deadline_s=60.0, rank_max=32)
    for assignments, _, _ in run_rounds(scheduler, federation, 6):
        assert set(assignments) == {c.node_id for c in federation.clients}
        for client in federation.clients:
            a = assignments[client.node_id]
            assert 2 <= a.rank <= 32
            assert a.rank <= TIERS[client.tier].max_rank
            assert 1 <= a.local_steps <= 8
            assert a.bits in (4, 8, 16, 32)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_state_round_trips_through_json_and_gives_the_same_next_decision(name):
    federation = SimulatedFederation(three_tier_clients(3, {"edge": 1.5}), deadline_s=60.0, seed=3)
    original = make(name)
    run_rounds(original, federation, 4)
    restored = make(name)
    restored.load_state_dict(json.loads(json.dumps(original.state_dict())))
    infos = federation.infos()
    assert restored.assign(5, infos, 60.0) == original.assign(5, infos, 60.0)
    reports, outcome = federation.run_round(5, original.assign(5, infos, 60.0))
    original.observe(5, reports, outcome)
    restored.observe(5, reports, outcome)
    assert restored.assign(6, infos, 60.0) == original.assign(6, infos, 60.0)
    assert json.dumps(restored.state_dict()) == json.dumps(original.state_dict())


def test_bandit_state_saved_before_the_prior_scale_keeps_what_its_clients_taught_it():
    federation = SimulatedFederation(three_tier_clients(3, {"edge": 4.0}), deadline_s=60.0, seed=3)
    original = make("bandit")
    run_rounds(original, federation, 4)
    state = json.loads(json.dumps(original.state_dict()))
    del state["prior_scale"], state["clients"]["columns"]["compute_reports"]
    restored = make("bandit")
    restored.load_state_dict(state)
    infos = federation.infos()
    assert restored.assign(5, infos, 60.0) == original.assign(5, infos, 60.0)
    reports, outcome = federation.run_round(5, original.assign(5, infos, 60.0))
    original.observe(5, reports, outcome)
    restored.observe(5, reports, outcome)  # not a first report: the learned times stay
    assert restored.assign(6, infos, 60.0) == original.assign(6, infos, 60.0)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_no_clients_and_no_reports_are_not_errors(name):
    scheduler = make(name)
    assert scheduler.assign(1, [], 30.0) == {}
    scheduler.observe(1, [], None)
    scheduler.observe(2, [], RoundOutcome(2, 0.0, None, None, None))
    json.dumps(scheduler.state_dict())


def test_registry_names_the_valid_schedulers_when_the_name_is_unknown():
    with pytest.raises(ValueError, match="fixed, table, tier, bandit, lite, solver"):
        build_scheduler("greedy", DEFAULTS)


def test_registry_rejects_an_option_the_scheduler_does_not_know():
    with pytest.raises(TypeError):
        build_scheduler("bandit", DEFAULTS, no_such_option=1)
    with pytest.raises(TypeError, match="takes no options"):
        build_scheduler("fixed", DEFAULTS, confidence=0.9)


def test_registry_passes_priors_and_options():
    scheduler = build_scheduler("bandit", DEFAULTS, **PRIORS, confidence=0.99, stop_on_budget=True)
    assert isinstance(scheduler, BanditScheduler)
    assert scheduler.stop_on_budget and scheduler.tiers is TIERS
    assert isinstance(build_scheduler("solver", DEFAULTS, **PRIORS), SolverScheduler)
    assert isinstance(build_scheduler("lite", DEFAULTS, r_bar=4), LiteScheduler)


# --------------------------------------------------------------------------------------
# tier
# --------------------------------------------------------------------------------------


def test_tier_uses_the_run_table_then_the_tier_max_rank_then_the_run_rank():
    defaults = SchedulerDefaults(rank=8, rank_max=32, tier_ranks={"gpu": 24}, tier_bits={"edge": 4})
    scheduler = TierScheduler(defaults, tiers=TIERS)
    clients = [ClientInfo(1, "gpu"), ClientInfo(2, "cpu"), ClientInfo(3, "edge"), ClientInfo(4, None)]
    out = scheduler.assign(1, clients, 30.0)
    assert [out[n].rank for n in (1, 2, 3, 4)] == [24, 32, 16, 8]
    assert [out[n].bits for n in (1, 2, 3, 4)] == [16, 16, 4, 16]
    scheduler.observe(1, [report(1, "late", compute_s=99.0)], RoundOutcome(1, 30.0, 30.0, 1.0, 0.9))
    assert scheduler.assign(2, clients, 30.0) == out  # never adapts


# --------------------------------------------------------------------------------------
# bandit: client level
# --------------------------------------------------------------------------------------


def bandit(arms=(8,), defaults: SchedulerDefaults = DEFAULTS, **options) -> BanditScheduler:
    return BanditScheduler(defaults, **PRIORS, arms=arms, **options)


def work(a) -> int:
    """An assignment's examples: steps x its batch (the stand-in tiers' own batch is 8)."""
    return a.local_steps * (a.batch_size or 8)


def done(node: int, a, step_s: float, **fields) -> ClientReport:
    """An on-time report of ``a`` done in full, a step of 8 examples taking ``step_s``."""
    return report(
        node, "ok", rank=a.rank, steps=a.local_steps, num_examples=work(a), compute_s=work(a) / 8 * step_s, **fields
    )


def test_bandit_learns_to_meet_the_deadline_when_its_tier_prior_is_wrong():
    # Edge clients are 8x slower than their tier says: the prior over-commits them.
    federation = SimulatedFederation(three_tier_clients(5, {"edge": 8.0}), deadline_s=60.0, seed=1)
    history = run_rounds(bandit(arms=(2, 4, 8, 16, 32)), federation, 12)
    shares = [on_time_share(reports) for _, reports, _ in history]
    assert shares[0] < 1.0
    assert min(shares[4:]) > shares[0]
    assert np.mean(shares[4:]) >= 0.95


def test_bandit_leaves_a_step_estimate_ten_times_too_optimistic_behind_after_one_round():
    # Every client is 10x slower than the step estimate says (a model the estimate sizes badly):
    # the first round is late; each client's first report re-centres its prior.
    slow = {"gpu": 10.0, "cpu": 10.0, "edge": 10.0}
    federation = SimulatedFederation(three_tier_clients(5, slow), deadline_s=60.0, seed=3)
    history = run_rounds(bandit(arms=(2, 4, 8, 16, 32)), federation, 12)
    shares = [on_time_share(reports) for _, reports, _ in history]
    assert shares[0] < 0.5
    assert min(shares[1:]) >= 0.9
    # and, sure of the new scale, it gives back the work the miss first cost (a time model
    # still pulled toward the 10x prior stays where the miss put it)
    total_work = [sum(map(work, assignments.values())) for assignments, _, _ in history]
    assert total_work[-1] > 1.15 * total_work[1]


def test_bandit_starts_a_client_it_has_not_heard_from_at_the_scale_its_tier_has_shown():
    slow = {"gpu": 10.0, "cpu": 10.0, "edge": 10.0}
    scheduler = bandit(arms=(2, 4, 8, 16, 32))
    first = SimulatedFederation(three_tier_clients(3, slow), deadline_s=60.0, seed=4)
    run_rounds(scheduler, first, 1)
    newcomers = [replace(c, node_id=c.node_id + 50) for c in three_tier_clients(3, slow)]
    _, reports, _ = run_rounds(scheduler, SimulatedFederation(newcomers, deadline_s=60.0, seed=5), 1, first=2)[0]
    assert on_time_share(reports) >= 0.9
    # and a tier nobody has reported from yet takes the run's scale
    only_gpus = bandit(arms=(2, 4, 8, 16, 32))
    run_rounds(only_gpus, SimulatedFederation(three_tier_clients(3, slow)[:3], deadline_s=60.0, seed=6), 1)
    edge = [c for c in three_tier_clients(3, slow) if c.tier == "edge"]
    _, reports, _ = run_rounds(only_gpus, SimulatedFederation(edge, deadline_s=60.0, seed=7), 1, first=2)[0]
    assert on_time_share(reports) >= 0.9


def test_bandit_gives_a_client_less_work_after_it_misses_the_deadline():
    scheduler = bandit()
    clients = [ClientInfo(1, "cpu"), ClientInfo(2, "gpu")]
    first = scheduler.assign(1, clients, 40.0)
    missed = report(1, "late", rank=first[1].rank, steps=first[1].local_steps, compute_s=55.0, transfer_s=1.0)
    on_time = report(2, "ok", rank=first[2].rank, steps=first[2].local_steps, compute_s=4.0, transfer_s=0.5, tier="gpu")
    scheduler.observe(1, [missed, on_time], RoundOutcome(1, 40.0, 40.0, 1.0, 0.9))
    second = scheduler.assign(2, clients, 40.0)
    assert work(second[1]) < work(first[1])
    assert second[2].local_steps == DEFAULTS.local_steps
    assert second[2].rank >= first[2].rank  # the fast client keeps (or gains) its rank


def test_bandit_pushes_down_a_client_that_failed_and_lets_it_recover():
    scheduler = bandit()
    clients = [ClientInfo(1, "cpu")]
    before = scheduler.assign(1, clients, 40.0)[1]
    scheduler.observe(1, [report(1, "failed", steps=0, compute_s=0.0, transfer_s=0.0)], None)
    after_failure = scheduler.assign(2, clients, 40.0)[1]
    assert work(after_failure) < work(before)
    for server_round in range(2, 8):
        a = scheduler.assign(server_round, clients, 40.0)[1]
        step_s = STEP_S[16] * TIERS["cpu"].compute_factor
        scheduler.observe(server_round, [done(1, a, step_s, transfer_s=0.5)], None)
    assert work(scheduler.assign(9, clients, 40.0)[1]) > work(after_failure)


def test_bandit_caution_recovers_over_on_time_rounds_and_the_work_comes_back():
    # The test above also passes while caution never recovers (its reports alone narrow the time
    # model enough). Here a twin that never failed gets the same on-time reports, so both learn the
    # same time model and only the failure's caution sets them apart: the gap must close.
    deadline = 20.0
    missed, steady = bandit(), bandit()
    clients = [ClientInfo(1, "cpu")]
    missed.observe(1, [report(1, "failed", steps=0, compute_s=0.0, transfer_s=0.0)], None)
    steady.observe(1, [], None)
    row = missed.table.rows([1])[0]
    assert missed.table["caution"][row] == missed.miss_backoff
    step_s = STEP_S[16] * TIERS["cpu"].compute_factor
    cautions, assigned = [], []
    for server_round in range(2, 12):
        a, twin = missed.assign(server_round, clients, deadline)[1], steady.assign(server_round, clients, deadline)[1]
        assigned.append((a, twin))
        on_time = done(1, a, step_s, transfer_s=0.5)
        missed.observe(server_round, [on_time], None)
        steady.observe(server_round, [on_time], None)
        cautions.append(missed.table["caution"][row])
    # caution - 1 shrinks by the factor ``recovery`` every on-time round, towards its floor of 1
    excess = missed.miss_backoff - 1.0
    assert cautions == pytest.approx([1.0 + excess * missed.recovery**k for k in range(1, 11)])
    assert 1.0 <= cautions[-1] < 1.05
    # ... so the shrunk budget grows back towards the deadline, and the work with it
    (first, first_twin), (last, last_twin) = assigned[0], assigned[-1]
    budgets = [a.budget_s for a, _ in assigned]
    assert budgets == sorted(budgets) and budgets[0] < 0.7 * deadline < 0.95 * deadline < budgets[-1]
    assert work(first) < work(first_twin)
    assert work(last) == work(last_twin) > work(first)


def test_bandit_cuts_work_not_rank_for_a_compute_bound_client():
    # A cpu client 4x slower than its tier on a fast link: work must go, rank can stay.
    federation = SimulatedFederation([SimClient(1, "cpu", slowness=4.0), SimClient(2, "gpu")], deadline_s=60.0)
    history = run_rounds(bandit(arms=(16,)), federation, 6)
    final, _, _ = history[-1]
    assert work(final[1]) < DEFAULTS.local_steps * 8
    assert final[1].rank == 16 and final[2].rank == 16
    assert all(r.status == "ok" for r in history[-1][1])


def test_bandit_lowers_rank_first_for_a_client_on_a_slow_link():
    slow_link = dict(TIERS, cpu=StandInTier("cpu", 0.25, 8_000, 0.5, 1.0, 50.0, 0.0, 64))
    federation = SimulatedFederation([SimClient(1, "cpu"), SimClient(2, "gpu")], deadline_s=30.0, tiers=slow_link)
    scheduler = BanditScheduler(
        DEFAULTS, tiers=slow_link, step_time_prior=STEP_S, bytes_per_rank=BYTES_PER_RANK, arms=(32,)
    )
    final, reports, _ = run_rounds(scheduler, federation, 5)[-1]
    assert final[1].rank < 8 < final[2].rank  # transfer-bound: little rank ...
    assert final[1].local_steps >= DEFAULTS.local_steps // 2  # ... but it keeps its work
    assert all(r.status == "ok" for r in reports)


def test_bandit_gives_a_higher_rank_to_a_client_that_shows_spare_time():
    # The prior thinks the cpu link is slow; reports show it is fast: its rank goes up.
    pessimistic = dict(TIERS, cpu=StandInTier("cpu", 1.0, 8_000, 1.0, 2.0, 50.0, 0.0, 64))
    scheduler = BanditScheduler(
        DEFAULTS, tiers=pessimistic, step_time_prior=STEP_S, bytes_per_rank=BYTES_PER_RANK, arms=(32,)
    )
    clients = [ClientInfo(1, "cpu"), ClientInfo(2, "gpu")]
    first = scheduler.assign(1, clients, 40.0)[1]
    for server_round in range(1, 5):
        a = scheduler.assign(server_round, clients, 40.0)[1]
        scheduler.observe(
            server_round,
            [
                report(
                    1,
                    "ok",
                    rank=a.rank,
                    steps=a.local_steps,
                    compute_s=a.local_steps * 2.2,
                    transfer_s=0.1 + 0.01 * a.rank,
                )
            ],
            None,
        )
    assert scheduler.assign(5, clients, 40.0)[1].rank > first.rank


def test_bandit_shares_the_round_miss_probability_among_its_deadline_bound_clients():
    # A round is on time only if every client is: four cpu clients that cannot do the full
    # work by the deadline each get a quarter of the miss budget, so less work than alone.
    four = [ClientInfo(n, "cpu") for n in range(1, 5)] + [ClientInfo(9, "gpu")]
    per_round = bandit(round_confidence=True).assign(1, four, 20.0)
    per_client = bandit(round_confidence=False).assign(1, four, 20.0)
    assert all(work(per_round[n]) < work(per_client[n]) for n in range(1, 5))
    assert per_round[9] == per_client[9]  # the gpu client has slack either way
    # With one bound client the round's probability is that client's: the same choice.
    one = [ClientInfo(1, "cpu"), ClientInfo(9, "gpu")]
    assert bandit(round_confidence=True).assign(1, one, 20.0) == bandit(round_confidence=False).assign(1, one, 20.0)


def test_bandit_round_average_follows_the_round_level_choice():
    clients = [ClientInfo(n, tier) for n, tier in enumerate(["gpu", "gpu", "cpu", "cpu", "edge", "edge"])]
    for arm in (4, 8, 12):
        out = bandit(arms=(arm,)).assign(1, clients, 600.0)
        assert np.mean([a.rank for a in out.values()]) == arm
    # edge clients are capped at 16: the others take up the slack to keep the mean at 24
    out = bandit(arms=(24,)).assign(1, clients, 600.0)
    ranks = [out[n].rank for n in range(6)]
    assert np.mean(ranks) == 24 and ranks[4] == ranks[5] == 16 and min(ranks[:4]) == 28


def test_bandit_without_deadline_gives_the_step_cap_and_no_budget():
    out = bandit(arms=(8,)).assign(1, [ClientInfo(1, "edge"), ClientInfo(2, "gpu")], None)
    assert {a.local_steps for a in out.values()} == {8}
    assert {a.budget_s for a in out.values()} == {None}
    assert {a.rank for a in out.values()} == {8}


def test_bandit_under_the_budget_policy_gives_the_cap_and_lets_clients_stop_in_time():
    federation = SimulatedFederation(three_tier_clients(4, {"edge": 2.0}), deadline_s=60.0, policy="budget", seed=2)
    history = run_rounds(bandit(arms=(4, 8, 16), stop_on_budget=True), federation, 8)
    for assignments, reports, _ in history[2:]:
        assert {a.local_steps for a in assignments.values()} == {8}
        assert all(0 < a.budget_s <= 60.0 for a in assignments.values())
        assert on_time_share(reports) == 1.0
    edge_examples = [r.num_examples for r in history[-1][1] if r.tier == "edge"]
    assert max(edge_examples) < 8 * 8  # the slow clients did less than the cap's full batches


def test_bandit_shrinks_the_budget_of_a_client_that_missed():
    scheduler = bandit(stop_on_budget=True)
    clients = [ClientInfo(1, "cpu"), ClientInfo(2, "cpu")]
    scheduler.observe(1, [report(1, "late", compute_s=70.0), report(2, "ok")], None)
    out = scheduler.assign(2, clients, 60.0)
    assert out[1].budget_s < out[2].budget_s == 60.0


def test_bandit_choices_are_reproducible():
    def choices():
        federation = SimulatedFederation(three_tier_clients(3, {"edge": 2.0}), deadline_s=50.0, seed=7)
        return [a for a, _, _ in run_rounds(bandit(arms=(2, 4, 8, 16, 32)), federation, 8)]

    assert choices() == choices()


def test_bandit_learns_a_client_it_first_meets_in_a_report():
    scheduler = bandit()
    scheduler.observe(1, [report(9, "late", compute_s=80.0, tier="gpu")], None)
    fresh = bandit().assign(2, [ClientInfo(9, "gpu")], 40.0)[9]
    assert scheduler.assign(2, [ClientInfo(9, "gpu")], 40.0)[9].local_steps < fresh.local_steps


def test_bandit_gives_a_smaller_batch_to_a_client_late_even_at_one_step():
    # Edge clients 6x slower than their tier: one step of 8 examples takes ~40 s, the deadline is 30 s.
    def rounds(**options):
        federation = SimulatedFederation(three_tier_clients(3, {"edge": 6.0}), deadline_s=30.0, seed=4)
        return run_rounds(bandit(arms=(2, 4, 8), **options), federation, 10)

    shrinking, full_steps = rounds(keep_steps=False), rounds(shrink_batch=False)
    for assignments, reports, _ in shrinking[4:]:
        assert on_time_share(reports) == 1.0
        assert {assignments[n].batch_size for n in (0, 1, 2, 100, 101, 102)} == {None}  # one full step fits
        edge = [(assignments[n], r) for n, r in zip((200, 201, 202), reports[6:])]
        assert all(1 <= a.batch_size < 8 and a.local_steps == 1 for a, _ in edge)
        assert all(r.num_examples == a.batch_size for a, r in edge)  # the batch the client trained
    for assignments, reports, _ in full_steps[4:]:
        assert {a.batch_size for a in assignments.values()} == {None}
        assert [r.status for r in reports[6:]] == ["late"] * 3  # one full step is all they can do


def test_steps_first_a_client_short_of_the_step_cap_keeps_it_at_a_smaller_batch():
    # Edge clients 1.5x slower than their tier: two of the cap's 8 full steps fit the deadline.
    def rounds(**options):
        federation = SimulatedFederation(three_tier_clients(3, {"edge": 1.5}), deadline_s=30.0, seed=4)
        return run_rounds(bandit(arms=(2, 4, 8), **options), federation, 10)

    steps_first, steps_cut = rounds(), rounds(keep_steps=False)
    for (first, first_reports, _), (cut, cut_reports, _) in zip(steps_first[3:], steps_cut[3:]):
        assert on_time_share(first_reports) == on_time_share(cut_reports) == 1.0
        edge = (200, 201, 202)
        assert all(first[n].local_steps == 8 and 1 <= first[n].batch_size < 8 for n in edge)
        assert all(cut[n].local_steps < 8 and cut[n].batch_size is None for n in edge)
        # the time model is linear in examples: the same work fits, split into more steps
        examples = [sum(r.num_examples for r in reports[6:]) for reports in (first_reports, cut_reports)]
        assert examples[0] >= 0.75 * examples[1]
    # the clients that fit the cap at their own batch are not touched
    first, cut = steps_first[0][0], steps_cut[0][0]
    assert {n: first[n] for n in first if cut[n].local_steps == 8} == {
        n: cut[n] for n in cut if cut[n].local_steps == 8
    }


def test_a_bandit_told_the_step_fixed_cost_does_not_shrink_slow_clients_to_tiny_steps():
    # A step costs as much as 24 more examples (a small convolutional model's overheads): a batch
    # of 1 takes 25/32 of a full step's time, so small steps train almost nothing.
    def rounds(told: float, **options):
        defaults = replace(DEFAULTS, step_fixed_examples=told)
        federation = SimulatedFederation(
            three_tier_clients(3, {"edge": 1.5}), deadline_s=30.0, seed=4, step_fixed_examples=24.0
        )
        return run_rounds(bandit(arms=(2, 4, 8), defaults=defaults, **options), federation, 10)

    def edge_examples(history):
        return [sum(r.num_examples for r in reports if r.tier == "edge") for _, reports, _ in history]

    told, untold, steps_cut = rounds(24.0), rounds(0.0), rounds(24.0, keep_steps=False)
    assert all(on_time_share(reports) == 1.0 for _, reports, _ in told)
    assert min(edge_examples(told)[-3:]) >= 8 * max(edge_examples(untold)[-3:])
    assert edge_examples(told)[-1] >= edge_examples(steps_cut)[-1]  # steps first gives way to full batches


def test_bandit_learns_compute_per_example_so_small_batches_teach_full_ones():
    defaults = SchedulerDefaults(rank=8, rank_max=64, bits=16, local_steps=8, batch_size=8)

    def after(steps: int, num_examples: int, compute_s: float):
        scheduler = bandit(defaults=defaults)
        scheduler.observe(1, [report(1, steps=steps, num_examples=num_examples, compute_s=compute_s)], None)
        return scheduler.assign(2, [ClientInfo(1, "cpu")], 30.0)[1]

    half_batches = after(steps=4, num_examples=16, compute_s=17.6)  # 16 examples in 17.6 s
    full_batches = after(steps=2, num_examples=16, compute_s=17.6)  # the same work in 2 full steps
    twice_as_fast = after(steps=4, num_examples=32, compute_s=17.6)
    assert half_batches == full_batches
    assert work(twice_as_fast) > work(full_batches)


def test_bandit_batch_never_goes_below_its_floor():
    scheduler = bandit(min_batch_size=3)
    # hopeless: one example alone takes longer than the deadline
    scheduler.observe(1, [report(1, "late", steps=1, num_examples=1, compute_s=90.0)], None)
    assert scheduler.assign(2, [ClientInfo(1, "cpu")], 30.0)[1].batch_size == 3
    with pytest.raises(ValueError, match="min_batch_size"):
        bandit(min_batch_size=0)


# --------------------------------------------------------------------------------------
# bandit: ablation switches (run config bandit-off), each changing only its part
# --------------------------------------------------------------------------------------


def test_without_the_round_bandit_every_round_aims_at_the_base_rank():
    def mean_ranks(**options):
        federation = SimulatedFederation(three_tier_clients(2), deadline_s=600.0, seed=5)
        history = run_rounds(bandit(arms=(4, 8, 16), **options), federation, 6)
        return [np.mean([a.rank for a in assignments.values()]) for assignments, _, _ in history]

    assert mean_ranks(round_bandit=False) == [DEFAULTS.rank] * 6
    on = mean_ranks()
    assert on[0] == DEFAULTS.rank and set(on[1:3]) == {4.0, 16.0}  # the bandit explores its arms


def test_without_the_time_model_assignments_follow_the_tier_prior_whatever_was_observed():
    clients = [ClientInfo(1, "cpu"), ClientInfo(2, "gpu")]
    fresh = bandit(learn_times=False).assign(1, clients, 40.0)

    def after_reports(**options):
        scheduler = bandit(**options)
        for server_round in (1, 2, 3):  # on time, but the cpu client is far slower than its tier says
            a = scheduler.assign(server_round, clients, 40.0)[1]
            slow = report(1, "ok", rank=a.rank, steps=a.local_steps, compute_s=a.local_steps * 9.0, transfer_s=3.0)
            scheduler.observe(server_round, [slow], RoundOutcome(server_round, 30.0, 40.0, 1.0, 0.9))
        return scheduler, scheduler.assign(4, clients, 40.0)

    frozen, frozen_plan = after_reports(learn_times=False)
    assert frozen_plan == fresh
    assert frozen.table["caution"][frozen.table.rows([1])[0]] == 1.0
    _, learned_plan = after_reports()
    assert work(learned_plan[1]) < work(fresh[1])  # the switch is what held it


def test_without_batch_shrink_no_client_gets_a_smaller_batch_and_nothing_else_changes():
    def rounds(**options):
        federation = SimulatedFederation(three_tier_clients(3, {"edge": 6.0}), deadline_s=30.0, seed=4)
        return run_rounds(bandit(arms=(2, 4, 8), **options), federation, 8)

    shrinking, kept = rounds(keep_steps=False), rounds(shrink_batch=False)
    assert all(a.batch_size is None for assignments, _, _ in kept for a in assignments.values())
    assert rounds(shrink_batch=False, keep_steps=False) == kept  # steps first needs the batch to shrink
    first, first_kept = shrinking[0][0], kept[0][0]  # the same state: only the batch differs
    assert any(a.batch_size is not None for a in first.values())
    assert {n: replace(a, batch_size=None) for n, a in first.items()} == first_kept


def test_without_bits_choice_the_run_bits_stay_and_memory_still_caps_rank():
    clients = [ClientInfo(1, "gpu", memory_limit_mb=24_000), ClientInfo(2, "cpu", memory_limit_mb=4_000)]
    chosen = bandit(arms=(16,), memory_model=MEMORY).assign(1, clients, None)
    fixed = bandit(arms=(16,), memory_model=MEMORY, choose_bits=False).assign(1, clients, None)
    assert [chosen[n].bits for n in (1, 2)] == [16, 8]
    assert [fixed[n].bits for n in (1, 2)] == [16, 16]
    gpu_alone = clients[:1]  # where the run's bits fit, nothing differs
    assert bandit(arms=(16,), memory_model=MEMORY, choose_bits=False).assign(1, gpu_alone, None) == bandit(
        arms=(16,), memory_model=MEMORY
    ).assign(1, gpu_alone, None)
    # 16 bits in 6,600 MB: 6,000 + 500 + 10 per rank leaves room for rank 10, below the aim of 16
    tight = bandit(arms=(16,), memory_model=MEMORY, choose_bits=False)
    assert tight.assign(1, [ClientInfo(3, "cpu", memory_limit_mb=6_600)], None)[3].rank == 10
    # out of memory: half the rank, the same bits
    oom = report(1, "oom", rank=16, bits=16, steps=0, compute_s=0.0, transfer_s=0.0, tier="gpu")
    tight.observe(1, [oom], None)
    after = tight.assign(2, [ClientInfo(1, "gpu", memory_limit_mb=24_000)], None)[1]
    assert (after.bits, after.rank) == (16, 8)


def test_without_caution_a_late_client_is_not_pushed_down():
    clients = [ClientInfo(1, "cpu")]

    def after(status: str, **options):
        scheduler = bandit(stop_on_budget=True, **options)
        scheduler.observe(1, [report(1, status, compute_s=70.0)], None)
        return scheduler, scheduler.assign(2, clients, 60.0)[1]

    careless, late_plan = after("late", use_caution=False)
    _, on_time_plan = after("ok", use_caution=False)
    assert late_plan == on_time_plan and late_plan.budget_s == 60.0  # the time model learns alike
    assert careless.table["caution"][careless.table.rows([1])[0]] == 1.0
    _, cautious_plan = after("late")
    assert cautious_plan.budget_s < 60.0


# --------------------------------------------------------------------------------------
# bandit: bits and memory
# --------------------------------------------------------------------------------------

MEMORY = MemoryModel(backbone_mb_16bit=6_000, activation_mb=500, adapter_mb_per_rank=10)


def test_bandit_chooses_the_most_bits_that_fit_the_memory_limit():
    scheduler = bandit(arms=(8,), memory_model=MEMORY)
    clients = [
        ClientInfo(1, "gpu", memory_limit_mb=24_000),
        ClientInfo(2, "cpu", memory_limit_mb=4_000),
        ClientInfo(3, "edge", memory_limit_mb=2_500),
        ClientInfo(4, "edge", memory_limit_mb=2_100),
    ]
    out = scheduler.assign(1, clients, None)
    assert [out[n].bits for n in (1, 2, 3, 4)] == [16, 8, 4, 4]
    # 4 bits: 1500 + 500 MB, so 2,100 MB leaves room for rank 10 at most
    assert out[4].rank == 8 and MEMORY.peak_mb(out[4].bits, out[4].rank) <= 2_100
    tight = scheduler.assign(2, [ClientInfo(5, "edge", memory_limit_mb=2_050)], None)[5]
    assert tight.rank == 5


def test_a_full_precision_run_keeps_its_own_bits_where_they_fit():
    full = replace(DEFAULTS, bits=32)
    clients = [ClientInfo(1, "gpu", memory_limit_mb=24_000), ClientInfo(2, "cpu", memory_limit_mb=4_000)]
    out = bandit(arms=(8,), defaults=full, memory_model=MEMORY).assign(1, clients, None)
    # 32 bits: 12,000 + 500 MB fit the GPU's 24,000 MB; the CPU's 4,000 MB hold 8 bits at most
    assert [out[n].bits for n in (1, 2)] == [32, 8]
    assert bandit(arms=(8,), memory_model=MEMORY).assign(1, clients[:1], None)[1].bits == 16  # a 16-bit run: 16


def test_bandit_takes_a_lower_bits_option_after_an_out_of_memory_report():
    scheduler = bandit(memory_model=MEMORY)
    clients = [ClientInfo(1, "gpu", memory_limit_mb=24_000)]
    assert scheduler.assign(1, clients, 60.0)[1].bits == 16
    scheduler.observe(1, [report(1, "oom", bits=16, steps=0, compute_s=0.0, transfer_s=0.0, tier="gpu")], None)
    assert scheduler.assign(2, clients, 60.0)[1].bits == 8


def test_bandit_halves_the_rank_after_an_out_of_memory_report_when_bits_are_fixed():
    scheduler = bandit(arms=(32,))
    clients = [ClientInfo(1, "gpu")]
    a = scheduler.assign(1, clients, None)[1]
    scheduler.observe(1, [report(1, "oom", rank=a.rank, steps=0, compute_s=0.0, transfer_s=0.0, tier="gpu")], None)
    assert scheduler.assign(2, clients, None)[1].rank == a.rank // 2


# --------------------------------------------------------------------------------------
# bandit: round level and the pieces
# --------------------------------------------------------------------------------------


def test_round_level_bandit_prefers_the_arm_with_the_better_reward():
    bandit_ = AverageRankBandit([4, 8, 16, 32], first_arm=8)
    decay = 1.0
    chosen = []
    rng = np.random.default_rng(0)
    for server_round in range(1, 81):
        arm = bandit_.choose(server_round)
        chosen.append(arm)
        decay *= 0.97  # rewards shrink as training goes on, whatever the arm
        bandit_.credit(server_round, decay * (2.0 if arm == 16 else 1.0) * rng.uniform(0.9, 1.1))
    assert max(set(chosen), key=chosen.count) == 16
    assert chosen[-20:].count(16) >= 14


def test_round_level_bandit_tries_every_arm_first_nearest_the_default():
    bandit_ = AverageRankBandit([2, 4, 8, 16, 32], first_arm=8)
    order = []
    for server_round in range(1, 6):
        order.append(bandit_.choose(server_round))
        bandit_.credit(server_round, 1.0)
    assert order == [8, 16, 4, 32, 2]


def test_bandit_skips_the_reward_when_no_loss_is_known():
    scheduler = bandit(arms=(4, 8))
    scheduler.assign(1, [ClientInfo(1, "cpu")], 40.0)
    scheduler.observe(1, [report(1, "ok", loss_before=None, loss_after=None)], RoundOutcome(1, 20.0, 40.0, None, None))
    assert scheduler.average_rank.counts.sum() == 0
    # with client losses but no global one, the clients' losses stand in
    scheduler.assign(2, [ClientInfo(1, "cpu")], 40.0)
    scheduler.observe(2, [report(1, "ok", loss_before=2.0, loss_after=1.0)], RoundOutcome(2, 20.0, 40.0, None, None))
    assert scheduler.average_rank.counts.sum() == 1


def test_waterfill_meets_the_target_mean_under_ceilings():
    assert waterfill_ranks(np.array([2, 10, 10]), 1, 6).tolist() == [2, 8, 8]
    assert waterfill_ranks(np.array([2, 10, 10]), 1, 5).tolist() == [2, 7, 6]
    assert waterfill_ranks(np.array([2, 3, 4]), 1, 20).tolist() == [2, 3, 4]  # unreachable: ceilings
    assert waterfill_ranks(np.array([8, 8]), 2, 1).tolist() == [2, 2]  # below the floor


def test_largest_fitting_finds_the_last_value_that_fits_per_row():
    values, found = largest_fitting(
        np.array([1, 1, 5]), np.array([10, 10, 9]), lambda v: v * np.array([3.0, 20.0, 1.0]) <= 20.0
    )
    assert values.tolist() == [6, 1, 9] and found.tolist() == [True, True, True]
    values, found = largest_fitting(np.array([2]), np.array([9]), lambda v: v < 1)
    assert values.tolist() == [2] and found.tolist() == [False]


def test_client_table_rows_stay_right_when_the_same_list_is_asked_again_or_changes():
    table = ClientTable({"x": 0.0})
    ids = [30, 10, 20]
    assert table.rows(ids).tolist() == [0, 1, 2]
    assert table.rows(list(ids)).tolist() == [0, 1, 2]  # same clients, same order
    ids.append(40)  # the caller's list grew
    assert table.rows(ids).tolist() == [0, 1, 2, 3]
    assert table.rows([40, 30]).tolist() == [3, 0]
    assert table.rows((30, 10)).tolist() == [0, 1]  # any sequence, not only lists
    with pytest.raises(ValueError):
        table.rows([30, 10, 20, 40])[0] = 5  # a shared answer cannot be edited
    restored = ClientTable({"x": 0.0})
    restored.rows([99])
    restored.load_state_dict(table.state_dict())
    assert restored.rows([99]).tolist() == [4]  # a load forgets the last lookup


def test_online_linear_time_recovers_a_line_and_narrows_with_data():
    table = ClientTable(OnlineLinearTime.column_defaults("t_"))
    model = OnlineLinearTime(table, "t_", forgetting=0.9)
    rows = table.rows([1])
    model.set_prior(rows, 0.0, 5.0, 1.0, 1.0, 0.5)
    wide = model.line(rows).var(np.array([10.0]))
    for x in [2.0, 4.0, 8.0, 16.0] * 5:
        model.update(rows, np.array([x]), np.array([2.0 + 3.0 * x]))
    line = model.line(rows)
    mean, narrow = line.mean(np.array([10.0])), line.var(np.array([10.0]))
    assert mean[0] == pytest.approx(32.0, rel=0.02)
    assert narrow[0] < wide[0] / 10


def test_online_linear_time_forgets_toward_the_prior_spread_not_its_mean():
    # A prior 10x too low: once data have moved the mean, forgetting must not drag it back.
    table = ClientTable(OnlineLinearTime.column_defaults("t_"))
    model = OnlineLinearTime(table, "t_", forgetting=0.8)
    rows = table.rows([1])
    model.set_prior(rows, 0.0, 0.1, 1.0, 0.3, 0.1)
    for x in [1.0, 0.5, 0.8, 1.0, 0.6, 0.9, 0.7, 1.0] * 3:  # (decaying toward its mean too: 2.6 by now)
        model.update(rows, np.array([x]), np.array([10.0 * x]))
    assert model.line(rows).mean(np.array([1.0]))[0] == pytest.approx(10.0, rel=0.05)


# --------------------------------------------------------------------------------------
# lite: FedRankLite-SLM's formula by hand
# --------------------------------------------------------------------------------------


def lite_round_one(scheduler: LiteScheduler, clients):
    first = scheduler.assign(1, clients, 20.0)
    assert {a.rank for a in first.values()} == {8}  # no telemetry yet: everyone r_bar
    reports = [
        report(1, "ok", rank=8, loss_before=1.0, loss_after=0.5, num_examples=100, compute_s=9.0, transfer_s=1.0),
        report(2, "ok", rank=8, loss_before=1.0, loss_after=0.8, num_examples=50, compute_s=24.0, transfer_s=1.0),
        report(3, "late", rank=8, loss_before=1.0, loss_after=0.9, num_examples=20, compute_s=39.0, transfer_s=1.0),
    ]
    scheduler.observe(1, reports, RoundOutcome(1, 20.0, 20.0, 1.0, 0.9))


def test_lite_scores_allocates_and_caps_as_fedranklite_does():
    scheduler = LiteScheduler(DEFAULTS)
    clients = [ClientInfo(n, "cpu") for n in (1, 2, 3)]
    lite_round_one(scheduler, clients)
    # gain, samples/s: (0.5, 100/10), (0.2, 50/25), (0.1, 20/40) and client 3 missed
    expected = [0.6 * 0.5 + 0.4 * 10.0, 0.6 * 0.2 + 0.4 * 2.0, (0.6 * 0.1 + 0.4 * 0.5) * 0.5]
    rows = scheduler.table.rows([1, 2, 3])
    assert scheduler.scores(rows).tolist() == pytest.approx(expected)
    # budget 8 * 3 = 24: raw 19.29, 4.13, 0.58 -> 19, 4, 1 (sum 24); deadline 20 s with
    # time per rank unit 10/8, 25/8, 40/8: client 1 is capped to floor(20 / 1.25) = 16
    out = scheduler.assign(2, clients, 20.0)
    assert [out[n].rank for n in (1, 2, 3)] == [16, 4, 1]
    assert [out[n].local_steps for n in (1, 2, 3)] == [8, 8, 8]
    assert out[1].budget_s == 20.0


def test_lite_averages_with_factor_0_3_seeded_by_the_first_value():
    scheduler = LiteScheduler(DEFAULTS)
    clients = [ClientInfo(n, "cpu") for n in (1, 2, 3)]
    lite_round_one(scheduler, clients)
    scheduler.observe(
        2,
        [report(1, "ok", rank=16, loss_before=0.5, loss_after=0.2, num_examples=200, compute_s=9.0, transfer_s=1.0)],
        None,
    )
    ema_gain, ema_throughput = 0.3 * 0.3 + 0.7 * 0.5, 0.3 * 20.0 + 0.7 * 10.0
    assert scheduler.scores(scheduler.table.rows([1]))[0] == pytest.approx(0.6 * ema_gain + 0.4 * ema_throughput)
    assert scheduler.table["ema_time_per_rank"][scheduler.table.rows([1])[0]] == pytest.approx(
        0.3 * 10.0 / 16 + 0.7 * 10.0 / 8
    )


def test_lite_corrects_rounding_to_the_budget_in_score_order():
    scheduler = LiteScheduler(SchedulerDefaults(rank=8, rank_max=10))
    clients = [ClientInfo(n, "cpu") for n in (1, 2, 3)]
    lite_round_one(scheduler, clients)
    # raw 19.29, 4.13, 0.58 -> clamped 10, 4, 1 (sum 15); 9 more go in score order:
    # client 1 has no room, client 2 takes 6, client 3 takes 3 (no deadline: no cap)
    out = scheduler.assign(2, clients, None)
    assert [out[n].rank for n in (1, 2, 3)] == [10, 10, 4]


def test_lite_scores_a_new_client_1_and_halves_a_failed_one():
    scheduler = LiteScheduler(DEFAULTS)
    clients = [ClientInfo(n, "cpu") for n in (1, 2, 3)]
    lite_round_one(scheduler, clients)
    before = scheduler.scores(scheduler.table.rows([1]))[0]
    scheduler.observe(
        2, [report(1, "failed", steps=0, compute_s=0.0, transfer_s=0.0, loss_before=None, loss_after=None)], None
    )
    assert scheduler.scores(scheduler.table.rows([1, 7])).tolist() == pytest.approx([before / 2, 1.0])


def test_lite_reproduces_its_rank_proportional_time_model():
    # A client took 40 s at rank 8 (compute-bound: its step time does not depend on rank).
    # FedRankLite reads 5 s per rank unit and caps it at floor(30 / 5) = 6 for a 30 s
    # deadline, although rank 6 would take as long as rank 8: the documented flaw.
    scheduler = LiteScheduler(DEFAULTS)
    scheduler.observe(1, [report(1, "late", rank=8, compute_s=39.0, transfer_s=1.0)], None)
    assert scheduler.assign(2, [ClientInfo(1, "cpu")], 30.0)[1].rank == 6


def test_lite_keeps_tier_ceilings():
    scheduler = LiteScheduler(DEFAULTS, tiers=TIERS, r_bar=32)
    out = scheduler.assign(1, [ClientInfo(1, "edge"), ClientInfo(2, "gpu")], None)
    assert out[1].rank == 16 and out[2].rank == 32


# --------------------------------------------------------------------------------------
# solver: FAH-QLoRA's problem on hand-checkable instances
# --------------------------------------------------------------------------------------

SOLVER = SolverScheduler(DEFAULTS).solver


def test_relaxed_problem_equalises_times_at_the_chosen_average():
    # min max(10 + r1, 20 + r2) with r1 + r2 = 16: 10 + r1 = 20 + r2 -> r = (13, 3), T = 23
    solution = solve_relaxed_ranks(
        np.array([10.0, 20.0]), np.array([1.0, 1.0]), 1, np.array([64.0, 64.0]), 8, None, SOLVER
    )
    assert solution.problem == "P1"
    assert solution.ranks.tolist() == pytest.approx([13.0, 3.0], abs=1e-4)
    assert solution.time_bound_s[0] == pytest.approx(23.0, abs=1e-4)
    feasible = solve_relaxed_ranks(
        np.array([10.0, 20.0]), np.array([1.0, 1.0]), 1, np.array([64.0, 64.0]), 8, 30.0, SOLVER
    )
    assert feasible.ranks.tolist() == pytest.approx([13.0, 3.0], abs=1e-4)


def test_relaxed_problem_falls_back_to_the_largest_average_the_deadline_allows():
    # a 21 s deadline cannot hold the average 8 (T >= 23): max r1 + r2 with 10 + r1 <= 21, 20 + r2 <= 21
    solution = solve_relaxed_ranks(
        np.array([10.0, 20.0]), np.array([1.0, 1.0]), 1, np.array([64.0, 64.0]), 8, 21.0, SOLVER
    )
    assert solution.problem == "P2"
    assert solution.ranks.tolist() == pytest.approx([11.0, 1.0], abs=1e-4)


def test_relaxed_problem_respects_rank_caps():
    # caps (4, 64): r1 <= 4, so r2 = 12 and T = max(10 + 4, 20 + 12) = 32
    solution = solve_relaxed_ranks(
        np.array([10.0, 20.0]), np.array([1.0, 1.0]), 1, np.array([4.0, 64.0]), 8, None, SOLVER
    )
    assert solution.ranks.tolist() == pytest.approx([4.0, 12.0], abs=1e-4)


def test_rounding_gives_units_by_largest_fraction_within_sum_and_time():
    relaxed = RelaxedRanks(np.array([12.6, 3.4, 5.5]), np.array([23.0, 23.0, 23.0]), 22, "P1")
    fixed, per_rank = np.array([10.0, 20.0, 17.0]), np.array([1.0, 1.0, 1.0])
    # floors 12, 3, 5 (sum 20, room 2); by fraction: client 1 (13 -> 23 s fits), client 3
    # (6 -> 23 s fits); client 2 would not get one anyway (sum reached)
    assert round_ranks(relaxed, fixed, per_rank, 1, np.array([64, 64, 64])).tolist() == [13, 3, 6]
    slower = np.array([10.0, 20.0, 17.5])  # client 3 at 6 would take 23.5 s > 23: stays at 5
    assert round_ranks(relaxed, slower, per_rank, 1, np.array([64, 64, 64])).tolist() == [13, 3, 5]


def test_solver_scheduler_meets_the_deadline_in_its_own_time_model():
    scheduler = SolverScheduler(DEFAULTS, **PRIORS, candidates=(8,))
    clients = [ClientInfo(n, tier) for n, tier in enumerate(["gpu"] * 3 + ["cpu"] * 3 + ["edge"] * 3)]
    out = scheduler.assign(1, clients, 90.0)
    ranks = np.array([out[n].rank for n in range(9)])
    fixed, per_rank = scheduler.time_model(scheduler.table.rows(list(range(9))))
    assert np.all(fixed + per_rank * ranks <= 90.0)
    assert ranks.sum() == 8 * 9
    assert ranks[6:].max() < ranks[:3].min()  # the slowest tier gets the smallest ranks
    assert {a.local_steps for a in out.values()} == {8}


def test_solver_scheduler_stage_one_keeps_the_average_with_the_best_rate():
    scheduler = SolverScheduler(DEFAULTS, **PRIORS, candidates=(4, 8))
    clients = [ClientInfo(1, "gpu"), ClientInfo(2, "cpu")]
    rates = {8: 0.01, 4: 0.03}
    for server_round in range(1, 5):
        out = scheduler.assign(server_round, clients, None)
        average = round(np.mean([a.rank for a in out.values()]))
        scheduler.observe(server_round, [], RoundOutcome(server_round, 10.0, None, 1.0, 1.0 - 10.0 * rates[average]))
    assert scheduler.stage1.choose(5) == 4


def test_solver_scheduler_learns_a_slow_client_from_its_report():
    scheduler = SolverScheduler(DEFAULTS, **PRIORS, candidates=(8,))
    clients = [ClientInfo(1, "cpu"), ClientInfo(2, "cpu")]
    first = scheduler.assign(1, clients, None)
    assert first[1].rank == first[2].rank
    scheduler.observe(1, [report(1, "late", compute_s=80.0), report(2, "ok", compute_s=17.6)], None)
    second = scheduler.assign(2, clients, None)
    assert second[1].rank < second[2].rank


def test_report_columns_charge_all_but_compute_to_transfer():
    reports = [
        ClientReport(1, "ok", 8, 16, compute_s=3.0, transfer_s=1.0, round_s=4.5),  # round known: 4.5 - 3
        ClientReport(2, "failed", 8, 16, transfer_s=2.0),  # no round time: its transfer
        ClientReport(3, "late", 8, 16, compute_s=1.0, transfer_s=float("nan")),  # neither: nothing
        ClientReport(4, "ok", 8, 16, compute_s=1.0, transfer_s=-1.0, round_s=-2.0),
    ]
    columns = ReportColumns(reports)
    assert columns.non_compute_s.tolist() == [1.5, 2.0, 0.0, 0.0]
    assert columns.timed.tolist() == [True, False, True, True]
