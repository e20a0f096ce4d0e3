"""The paired design: within a seed, every arm gets the same partitions and samples the same
clients per round, whatever it schedules (flq/strategy/roster.py)."""

import random

import pytest
from flwr.supercore.task_identity import TaskIdentity

from flq.config import RunConfig
from flq.scheduler.base import FixedRankScheduler, SchedulerDefaults, TableScheduler
from flq.strategy.fedavg import FLQFedAvg
from flq.strategy.roster import NodeProfile, Roster
from flq.strategy.spec import StrategySpec
from flq.task.specs import data_spec

from .test_strategy_loop import R_MAX, ClientGrid, Snapshots, initial_adapter


@pytest.fixture(autouse=True)
def server_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def sampled_partitions(seed: int, node_ids: list[int], rounds: int = 8, k: int = 4, shuffle: bool = False):
    """Partition ids sampled per round by a roster whose node i holds partition i."""
    roster = Roster(seed)
    for pid, node in enumerate(node_ids):
        roster.add(NodeProfile(node, partition_id=pid))
    connected = list(node_ids)
    out = []
    for r in range(rounds):
        if shuffle:  # the grid may list connected nodes in any order
            random.Random(r).shuffle(connected)
        out.append([roster.profile(n).partition_id for n in roster.sample(connected, k)])
    return out


def test_the_same_seed_samples_the_same_partitions_whatever_the_node_ids_and_their_order():
    first = sampled_partitions(3, list(range(10, 40)))
    again = sampled_partitions(3, [9_000_000 + 7 * i for i in range(30)], shuffle=True)  # another run's ids
    assert first == again
    assert first != sampled_partitions(4, list(range(10, 40)))  # the seed is what pairs them
    assert len({tuple(p) for p in first}) > 1  # rounds differ from each other


def test_arms_that_differ_only_in_scheduling_train_the_same_clients_every_round():
    def arm(scheduler):
        strategy = FLQFedAvg(StrategySpec(rank_max=R_MAX, clients_per_round=3, seed=11), scheduler)
        grid = ClientGrid()
        strategy.start(grid, initial_adapter(), num_rounds=4, timeout=5.0, recorder=Snapshots())
        return grid.trained

    fixed = arm(FixedRankScheduler(SchedulerDefaults(rank=R_MAX, rank_max=R_MAX)))
    table = arm(TableScheduler(SchedulerDefaults(rank=R_MAX, rank_max=R_MAX), ranks="cycle:1,2"))
    assert fixed == table and {r for r, _ in fixed} == {1, 2, 3, 4}


def test_arm_keys_do_not_reach_the_partitions():
    # Partitions are a function of the data spec (and the number of nodes); no arm key is in it.
    base = RunConfig(seed=5, partitioner="dirichlet", dirichlet_alpha=0.1)
    arms = [
        base.replace(scheduler="bandit", policy="budget", deadline_s=3.0, bandit_off="caution"),
        base.replace(scheduler="solver", policy="drop", deadline_s=3.0),
        base.replace(scheduler="fixed", policy="wait", clock_budget_s=60.0, client_eval_every=1),
    ]
    assert all(data_spec(a) == data_spec(base) for a in arms)
    assert data_spec(base.replace(seed=6)) != data_spec(base)
