"""Server optimizers on hand-checked vectors, frozen untrained rank components, exact resume."""

import numpy as np
import pytest

from flq.config import ConfigError, RunConfig
from flq.run_recorder import load_optimizer_state, save_checkpoint
from flq.strategy.server_optimizer import ServerOptimizer, ServerOptimizerSpec

A, B, HEAD = "m.q.lora_A.weight", "m.q.lora_B.weight", "m.score.weight"


def scalar(value):
    """A one-element dense tensor (a task head): always trained."""
    return {HEAD: np.array([value], np.float32)}


def run_steps(spec, aggregates, start=1.0):
    opt, x, out = ServerOptimizer(spec), scalar(start), []
    for value in aggregates:
        x = opt.step(x, scalar(value), trained_rank=1)
        out.append(float(x[HEAD][0]))
    return out


def test_fedavg_at_lr_1_is_the_aggregation_rules_result_itself():
    agg = {HEAD: np.array([0.3, -2.0], np.float32)}
    assert ServerOptimizer(ServerOptimizerSpec()).step({HEAD: np.zeros(2, np.float32)}, agg, 1) is agg


def test_fedavg_with_a_server_lr_scales_the_pseudo_gradient():
    assert run_steps(ServerOptimizerSpec("fedavg", lr=0.5), [2.0]) == pytest.approx([1.5])


def test_fedavgm_by_hand():
    # x0 = 1; round 1 aggregates to 1.5 (delta 0.5): m = 0.5, x = 1.5;
    # round 2 aggregates to 1.3 (delta -0.2): m = 0.9 * 0.5 - 0.2 = 0.25, x = 1.75.
    assert run_steps(ServerOptimizerSpec("fedavgm", lr=1.0, beta1=0.9), [1.5, 1.3]) == pytest.approx([1.5, 1.75])


def test_fedadam_by_hand_with_bias_correction_and_tau():
    spec = ServerOptimizerSpec("fedadam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    # Round 1, delta 0.5: m = 0.05, v = 0.0025; m_hat = 0.05 / 0.1 = 0.5, v_hat = 0.0025 / 0.01 = 0.25.
    x1 = 1.0 + 0.1 * 0.5 / (0.5 + 1e-3)
    # Round 2 aggregates to x1 - 0.2 (delta -0.2): m = 0.045 - 0.02 = 0.025, v = 0.002475 + 0.0004 = 0.002875;
    # m_hat = 0.025 / (1 - 0.81), v_hat = 0.002875 / (1 - 0.9801).
    x2 = x1 + 0.1 * (0.025 / 0.19) / (np.sqrt(0.002875 / 0.0199) + 1e-3)
    got = run_steps(spec, [1.5, np.float32(x1) - 0.2])
    assert got == pytest.approx([x1, x2], rel=1e-6)


def test_fedyogi_by_hand_grows_v_additively():
    spec = ServerOptimizerSpec("fedyogi", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    x1 = 1.0 + 0.1 * 0.5 / (0.5 + 1e-3)  # round 1 as Adam: v = 0 - 0.01 * 0.25 * sign(-0.25) = 0.0025
    # Round 2, delta -0.2: v = 0.0025 - 0.01 * 0.04 * sign(0.0025 - 0.04) = 0.0029 (Adam: 0.002875).
    x2 = x1 + 0.1 * (0.025 / 0.19) / (np.sqrt(0.0029 / 0.0199) + 1e-3)
    assert run_steps(spec, [1.5, np.float32(x1) - 0.2]) == pytest.approx([x1, x2], rel=1e-6)


def lora(rank=4, value=0.0):
    return {A: np.full((rank, 3), value, np.float32), B: np.full((2, rank), value, np.float32), **scalar(value)}


def test_components_no_client_trained_keep_the_rules_value_and_frozen_moments():
    opt = ServerOptimizer(ServerOptimizerSpec("fedadam", lr=0.1))
    previous, aggregated = lora(value=1.0), lora(value=1.5)
    aggregated[A][2:] = 1.0  # rank-wise keeps the previous global above the clients' rank 2
    new = opt.step(previous, aggregated, trained_rank=2)
    np.testing.assert_array_equal(new[A][2:], aggregated[A][2:])
    np.testing.assert_array_equal(new[B][:, 2:], aggregated[B][:, 2:])
    assert (new[A][:2] > 1.0).all() and (new[B][:, :2] > 1.0).all() and new[HEAD][0] > 1.0
    assert not opt.state[f"m/{A}"][2:].any() and not opt.state[f"n/{A}"][2:].any()
    # When a rank-4 client trains them later, they take a first (bias-corrected) Adam step.
    later = opt.step(new, {k: v + 0.5 for k, v in new.items()}, trained_rank=4)
    first_step = 0.1 * 0.5 / (0.5 + 1e-3)
    np.testing.assert_allclose(later[A][2:] - new[A][2:], first_step, rtol=1e-5)
    assert (opt.state[f"n/{A}"] == [[2], [2], [1], [1]]).all()


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi"])
def test_a_restored_optimizer_takes_the_next_step_bit_exactly(name, tmp_path):
    spec = ServerOptimizerSpec(name, lr=0.05)
    rng = np.random.default_rng(0)
    rounds = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in lora().items()} for _ in range(3)]
    whole, x = ServerOptimizer(spec), lora()
    for aggregated in rounds[:2]:
        x = whole.step(x, aggregated, trained_rank=4)
    save_checkpoint(tmp_path, x, {"server_round": 2}, whole.state_dict())
    resumed = ServerOptimizer(spec)
    resumed.load_state_dict(load_optimizer_state(tmp_path))
    expected, got = whole.step(x, rounds[2], 4), resumed.step(x, rounds[2], 4)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    fresh = ServerOptimizer(spec).step(x, rounds[2], 4)  # without the state, the step differs
    assert any(not np.array_equal(fresh[k], expected[k]) for k in expected)


def test_a_fedavg_checkpoint_has_no_optimizer_state():
    assert ServerOptimizer(ServerOptimizerSpec()).state_dict() == {}


def test_the_run_config_checks_the_server_optimizer():
    assert RunConfig().server_optimizer == "fedavg" and RunConfig().server_lr == 1.0
    with pytest.raises(ConfigError, match="server-optimizer must be one of"):
        RunConfig().replace(server_optimizer="sgd")
    with pytest.raises(ConfigError, match="server-beta1 and server-beta2"):
        RunConfig().replace(server_beta1=1.0)
