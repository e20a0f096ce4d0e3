"""The client's time-budget rule, on hand-computed cases."""

from flq.client_app import budget_stopper


def test_always_takes_one_step():
    assert budget_stopper(budget_s=1.0, compute_factor=1000.0, comm_s=5.0)(0, 0.0) is False


def test_stops_when_the_slowest_step_would_overrun():
    stop = budget_stopper(budget_s=100.0, compute_factor=10.0, comm_s=5.0, margin=0.0)
    # step 1 took 2 s (20 s on the clock): after it, 20 + 20 + 5 = 45 <= 100: go on
    assert stop(1, 2.0) is False
    # step 2 took 3 s: slowest 3 s, (5 + 3) x 10 + 5 = 85 <= 100: go on
    assert stop(2, 5.0) is False
    # step 3 took 1 s: slowest still 3 s, (6 + 3) x 10 + 5 = 95 <= 100: go on
    assert stop(3, 6.0) is False
    # step 4 took 1 s: (7 + 3) x 10 + 5 = 105 > 100: stop at 4 steps, 75 s used
    assert stop(4, 7.0) is True


def test_the_margin_makes_it_stop_earlier():
    plain = budget_stopper(100.0, 10.0, 0.0, margin=0.0)
    careful = budget_stopper(100.0, 10.0, 0.0, margin=0.25)
    assert plain(1, 4.0) is False  # (4 + 4) x 10 = 80
    assert careful(1, 4.0) is False  # (4 + 5) x 10 = 90
    assert plain(2, 8.0) is True and careful(2, 8.0) is True
    assert budget_stopper(100.0, 10.0, 0.0, margin=0.0)(1, 4.5) is False  # 90
    assert budget_stopper(100.0, 10.0, 0.0, margin=0.25)(1, 4.5) is True  # (4.5 + 5.625) x 10 > 100


def test_the_budget_is_spent_at_the_nodes_true_speed_on_the_virtual_clock():
    from flq.client_app import Node, charged_compute_factor
    from flq.config import RunConfig
    from flq.sim.tiers import load_tiers

    edge = load_tiers()["cpu-edge"]
    cfg = RunConfig(compute_misfit="cycle:1,3")
    fitting, throttled = Node(0, 4, edge, simulated=True), Node(1, 4, edge, simulated=True)
    assert charged_compute_factor(cfg, fitting, virtual=True) == edge.compute_factor
    assert charged_compute_factor(cfg, throttled, virtual=True) == 3 * edge.compute_factor
    assert charged_compute_factor(cfg, throttled, virtual=False) == 1.0  # real seconds are already true
