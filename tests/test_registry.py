"""The registry is the one place a run's configuration meets the scheduler classes."""

import pytest

from flq import config
from flq.config import RunConfig
from flq.scheduler import BanditScheduler, ClientInfo, TableScheduler, TierScheduler
from flq.scheduler.bandit import BANDIT_PARTS
from flq.scheduler.priors import MemoryModel
from flq.scheduler.registry import SCHEDULERS, build_for_run
from flq.sim.tiers import load_tiers

CLIENTS = [ClientInfo(node_id=n, tier="cpu-edge", partition_id=n, num_partitions=4) for n in range(4)]


def test_the_run_config_accepts_exactly_the_registered_schedulers():
    assert config.SCHEDULERS is SCHEDULERS
    for name in SCHEDULERS:
        assert RunConfig(scheduler=name).scheduler == name
    with pytest.raises(config.ConfigError, match="scheduler must be one of"):
        RunConfig().replace(scheduler="greedy")


def test_a_table_run_gives_each_client_the_ranks_and_bits_of_its_specs():
    cfg = RunConfig(scheduler="table", lora_rank=8, client_ranks="cycle:2,8", client_bits="cycle:4,16")
    scheduler = build_for_run(cfg, tiers=load_tiers())
    assert isinstance(scheduler, TableScheduler)
    plan = scheduler.assign(1, CLIENTS, None)
    assert [plan[n].rank for n in range(4)] == [2, 8, 2, 8]
    assert [plan[n].bits for n in range(4)] == [4, 16, 4, 16]


def test_a_tier_table_in_the_run_config_reaches_the_tier_scheduler():
    cfg = RunConfig(scheduler="tier", lora_rank=16, client_ranks="tier:cpu-edge=2,*=16")
    scheduler = build_for_run(cfg, tiers=load_tiers())
    assert isinstance(scheduler, TierScheduler)
    assert {a.rank for a in scheduler.assign(1, CLIENTS, None).values()} == {2}


@pytest.mark.parametrize("policy, stops", [("budget", True), ("drop", False)])
def test_a_bandit_run_stops_clients_on_their_budget_only_under_the_budget_policy(policy, stops):
    memory = MemoryModel(backbone_mb_16bit=100.0, activation_mb=50.0, adapter_mb_per_rank=1.0)
    cfg = RunConfig(scheduler="bandit", policy=policy, deadline_s=10.0)
    scheduler = build_for_run(cfg, tiers=load_tiers(), memory_model=memory, bytes_per_rank=1000.0)
    assert isinstance(scheduler, BanditScheduler)
    assert scheduler.stop_on_budget is stops
    assert scheduler.memory_model is memory


def test_schedulers_that_take_no_memory_model_are_built_without_one():
    memory = MemoryModel(backbone_mb_16bit=100.0, activation_mb=50.0, adapter_mb_per_rank=1.0)
    for name in ("fixed", "lite"):
        build_for_run(RunConfig(scheduler=name), tiers=load_tiers(), memory_model=memory)  # no TypeError


@pytest.mark.parametrize("part", list(BANDIT_PARTS))
def test_bandit_off_switches_off_exactly_the_part_it_names(part):
    on = build_for_run(RunConfig(scheduler="bandit"), tiers=load_tiers())
    off = build_for_run(RunConfig(scheduler="bandit", bandit_off=part), tiers=load_tiers())
    flags = set(BANDIT_PARTS.values())
    assert all(getattr(on, flag) for flag in flags)
    assert {flag for flag in flags if not getattr(off, flag)} == {BANDIT_PARTS[part]}


def test_step_fixed_examples_reaches_the_schedulers_and_must_not_be_negative():
    cfg = RunConfig.from_flower({"scheduler": "bandit", "step-fixed-examples": 4.5})
    assert build_for_run(cfg, tiers=load_tiers()).defaults.step_fixed_examples == 4.5
    with pytest.raises(config.ConfigError, match="step-fixed-examples must be a finite number >= 0, got -1"):
        RunConfig.from_flower({"scheduler": "bandit", "step-fixed-examples": -1.0})


def test_bandit_off_takes_several_parts_and_rejects_unknown_ones_and_other_schedulers():
    both = build_for_run(RunConfig(scheduler="bandit", bandit_off="caution, batch-shrink"), tiers=load_tiers())
    assert not both.use_caution and not both.shrink_batch and both.learn_times
    with pytest.raises(config.ConfigError, match="bandit-off: unknown bandit part.*'cautoin'"):
        RunConfig.from_flower({"scheduler": "bandit", "bandit-off": "cautoin"})
    with pytest.raises(config.ConfigError, match='bandit-off switches parts of scheduler="bandit" only'):
        RunConfig.from_flower({"scheduler": "fixed", "bandit-off": "caution"})
