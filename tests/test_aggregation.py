"""Heterogeneous-rank aggregation rules: hand-checked numbers and hypothesis properties.

Notation: a client's adapter is at its own rank r_i; "FedAvg of the factors" is the
weighted average of A and B separately; "FedAvg of the products" is
``sum_i w_i B_i A_i / sum_i w_i``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flq.adapter import adapter_rank, pad_to_rank, truncate_to_rank
from flq.strategy.aggregation import (
    AGGREGATION_RULES,
    SvdAggregator,
    aggregate,
    client_adapter_from_delta,
    client_weight,
    fairness_factor,
    make_aggregator,
    split_by_svd,
)

A = "m.lora_A.weight"
B = "m.lora_B.weight"
HEAD = "score.weight"
FACTOR_RULES = ("zero-pad", "rank-wise")
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None)


def f32(rows: list) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def product(state: dict[str, np.ndarray], prefix: str = "m") -> np.ndarray:
    return state[f"{prefix}.lora_B.weight"].astype(np.float64) @ state[f"{prefix}.lora_A.weight"]


# --------------------------------------------------------------------------------------
# Hand-checked: 2 clients (rank 1, weight 1; rank 2, weight 3), 2x2 module, r_max = 3
# --------------------------------------------------------------------------------------

PREVIOUS = {A: f32([[9, 9], [5, 6], [7, 7]]), B: f32([[9, 7, 1], [9, 8, 2]]), HEAD: f32([[0, 0]])}
CLIENT_RANK_1 = {A: f32([[1, 2]]), B: f32([[1], [0]]), HEAD: f32([[1, 2]])}
CLIENT_RANK_2 = {A: f32([[3, 0], [0, 4]]), B: f32([[1, 0], [2, 1]]), HEAD: f32([[5, 6]])}
HAND_CLIENTS = [CLIENT_RANK_1, CLIENT_RANK_2]
HAND_WEIGHTS = [1, 3]


def test_client_weight_by_examples_or_per_step():
    assert client_weight("examples", 40, 4) == 40.0
    assert client_weight("examples-per-step", 40, 4) == 10.0
    assert client_weight("examples-per-step", 40, 0) == 40.0  # no step taken: a zero delta, counted as one
    with pytest.raises(ValueError, match="examples-per-step"):
        client_weight("steps", 40, 4)


def test_fairness_factor_leaves_a_reply_without_a_loss_at_its_plain_weight():
    assert fairness_factor(2.0, None) == fairness_factor(2.0, float("nan")) == fairness_factor(0.0, 3.0) == 1.0
    assert fairness_factor(1.0, 0.0) > 0  # a perfect client still counts
    assert fairness_factor(20.0, 0.0) > 0 and math.isfinite(fairness_factor(20.0, 1e300))  # nor under- nor overflow
    assert fairness_factor(2.0, 3.0) == 9.0


def test_equal_steps_give_fedavg_weights_under_either_mode():
    # Under equal steps the per-step weights are FedAvg's scaled by one constant, so every
    # rule (which divides by the total weight) returns the same average.
    rng = np.random.default_rng(3)
    previous = {A: rng.normal(size=(4, 6)).astype(np.float32), B: rng.normal(size=(5, 4)).astype(np.float32)}
    states = [
        {A: rng.normal(size=(r, 6)).astype(np.float32), B: rng.normal(size=(5, r)).astype(np.float32)}
        for r in (2, 4, 3)
    ]
    examples = [30, 50, 20]
    for rule in AGGREGATION_RULES:
        by_examples = aggregate(rule, states, [client_weight("examples", n, 4) for n in examples], previous, 4)
        per_step = aggregate(rule, states, [client_weight("examples-per-step", n, 4) for n in examples], previous, 4)
        for key in previous:
            np.testing.assert_array_equal(by_examples[key], per_step[key])


def test_zero_pad_hand_checked():
    # A row 0: (1*[1,2] + 3*[3,0]) / 4; row 1: (1*[0,0] + 3*[0,4]) / 4; row 2: all padding.
    # B col 0: (1*[1,0] + 3*[1,2]) / 4; col 1: (1*[0,0] + 3*[0,1]) / 4; col 2: all padding.
    out = aggregate("zero-pad", HAND_CLIENTS, HAND_WEIGHTS, PREVIOUS, r_max=3)
    np.testing.assert_array_equal(out[A], f32([[2.5, 0.5], [0, 3], [0, 0]]))
    np.testing.assert_array_equal(out[B], f32([[1, 0, 0], [1.5, 0.75, 0]]))


def test_rank_wise_hand_checked():
    # Component 0: both clients, weights 1 and 3 (as zero-pad). Component 1: only the
    # rank-2 client, weight renormalised to 1. Component 2: nobody trained it: previous.
    out = aggregate("rank-wise", HAND_CLIENTS, HAND_WEIGHTS, PREVIOUS, r_max=3)
    np.testing.assert_array_equal(out[A], f32([[2.5, 0.5], [0, 4], [7, 7]]))
    np.testing.assert_array_equal(out[B], f32([[1, 0, 1], [1.5, 1, 2]]))


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
def test_dense_head_is_weighted_average_under_every_rule(rule):
    out = aggregate(rule, HAND_CLIENTS, HAND_WEIGHTS, PREVIOUS, r_max=3)
    np.testing.assert_array_equal(out[HEAD], f32([[4, 5]]))  # (1*[1,2] + 3*[5,6]) / 4


def test_svd_hand_checked_rank_one_average():
    # Products: [[4],[2]] @ [[1,2]] = [[4,8],[2,4]] and 0 (B = 0); equal weights average
    # to [[2,4],[1,2]] = [2,1]^T [1,2], singular value 5, u = [2,1]/sqrt5, v = [1,2]/sqrt5,
    # so B = u sqrt5 = [2,1] and A = sqrt5 v = [1,2]; the second component is zero.
    clients = [
        {A: f32([[1, 2]]), B: f32([[4], [2]])},
        {A: f32([[1, 0], [0, 1]]), B: f32([[0, 0], [0, 0]])},
    ]
    previous = {A: f32([[1, 1], [1, 1]]), B: f32([[1, 1], [1, 1]])}
    out = aggregate("svd", clients, [1, 1], previous, r_max=2)
    np.testing.assert_allclose(out[A], f32([[1, 2], [0, 0]]), atol=1e-6)
    np.testing.assert_allclose(out[B], f32([[2, 0], [1, 0]]), atol=1e-6)


def test_svd_hand_checked_orders_components_and_pads_beyond_min_dimension():
    # Products [[4,0],[0,0]] and 2*I average to diag(3, 1): U = V = I, S = [3, 1], so
    # B = A = diag(sqrt3, 1); a 2x2 matrix has 2 singular values, so component 3 is zero.
    clients = [
        {A: f32([[2, 0]]), B: f32([[2], [0]])},
        {A: f32([[2, 0], [0, 2]]), B: f32([[1, 0], [0, 1]])},
    ]
    previous = {A: np.ones((3, 2), np.float32), B: np.ones((2, 3), np.float32)}
    out = aggregate("svd", clients, [1, 1], previous, r_max=3)
    root3 = np.sqrt(3.0)
    np.testing.assert_allclose(out[A], [[root3, 0], [0, 1], [0, 0]], atol=1e-6)
    np.testing.assert_allclose(out[B], [[root3, 0, 0], [0, 1, 0]], atol=1e-6)
    # A rank-1 client receives the top direction only: diag(3, 0).
    np.testing.assert_allclose(product(truncate_to_rank(out, 1)), [[3, 0], [0, 0]], atol=1e-6)


def test_factor_averaging_differs_from_product_averaging():
    # Same clients as the rank-one SVD case: the average product is [[2,4],[1,2]], but
    # FedAvg of the factors gives A = [[1,1],[0,.5]], B = [[2,0],[1,0]], product [[2,2],[1,1]].
    clients = [
        {A: f32([[1, 2]]), B: f32([[4], [2]])},
        {A: f32([[1, 0], [0, 1]]), B: f32([[0, 0], [0, 0]])},
    ]
    previous = {A: f32([[1, 1], [1, 1]]), B: f32([[1, 1], [1, 1]])}
    zero_pad = aggregate("zero-pad", clients, [1, 1], previous, r_max=2)
    svd = aggregate("svd", clients, [1, 1], previous, r_max=2)
    np.testing.assert_allclose(product(zero_pad), [[2, 2], [1, 1]])
    np.testing.assert_allclose(product(svd), [[2, 4], [1, 2]], atol=1e-6)


def test_client_adapter_from_delta_adds_delta_to_truncated_global():
    delta = {A: f32([[1, 1]]), B: f32([[1], [-1]]), HEAD: f32([[1, 1]])}
    full = client_adapter_from_delta(PREVIOUS, delta)
    np.testing.assert_array_equal(full[A], f32([[10, 10]]))
    np.testing.assert_array_equal(full[B], f32([[10], [8]]))
    np.testing.assert_array_equal(full[HEAD], f32([[1, 1]]))
    assert all(v.dtype == np.float32 for v in full.values())


def test_split_by_svd_signs_make_factors_a_function_of_the_matrix():
    matrix = np.array([[2.0, 4.0], [1.0, 2.0]])
    a, b = split_by_svd(matrix, 1)
    a_neg, b_neg = split_by_svd(-matrix, 1)
    np.testing.assert_allclose(b, [[2], [1]])  # largest entry of u positive
    np.testing.assert_allclose(b_neg, [[2], [1]])  # the sign moves to A
    np.testing.assert_allclose(a_neg, -a)


# --------------------------------------------------------------------------------------
# API edges
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
def test_no_clients_returns_a_copy_of_the_previous_global(rule):
    aggregator = make_aggregator(rule, PREVIOUS, r_max=3)
    out = aggregator.result()
    for key, value in PREVIOUS.items():
        np.testing.assert_array_equal(out[key], value)
        assert out[key] is not value
    assert aggregator.num_clients == 0


def test_unknown_rule_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="zero-pad, rank-wise, svd"):
        make_aggregator("mean", PREVIOUS, r_max=3)


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
def test_previous_global_must_be_at_r_max(rule):
    with pytest.raises(ValueError, match="rank 3, expected r_max=4"):
        make_aggregator(rule, PREVIOUS, r_max=4)


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
@pytest.mark.parametrize("weight", [0, -1, float("nan"), float("inf")])
def test_non_positive_or_non_finite_weight_is_refused(rule, weight):
    with pytest.raises(ValueError, match="positive finite"):
        make_aggregator(rule, PREVIOUS, r_max=3).add(CLIENT_RANK_1, weight)


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
def test_refused_client_leaves_the_aggregate_untouched(rule):
    too_high = {A: np.ones((4, 2), np.float32), B: np.ones((2, 4), np.float32), HEAD: f32([[9, 9]])}
    aggregator = make_aggregator(rule, PREVIOUS, r_max=3)
    aggregator.add(CLIENT_RANK_1, 1)
    with pytest.raises(ValueError, match="above r_max=3"):
        aggregator.add(too_high, 5)
    aggregator.add(CLIENT_RANK_2, 3)
    expected = aggregate(rule, HAND_CLIENTS, HAND_WEIGHTS, PREVIOUS, r_max=3)
    assert aggregator.num_clients == 2 and aggregator.total_weight == 4
    for key in expected:
        np.testing.assert_array_equal(aggregator.result()[key], expected[key])


def test_aggregate_refuses_mismatched_weights():
    with pytest.raises(ValueError):
        aggregate("zero-pad", HAND_CLIENTS, [1], PREVIOUS, r_max=3)


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------


def random_adapter(rng, modules, rank, head_shape) -> dict[str, np.ndarray]:
    state = {}
    for prefix, (out_features, in_features) in modules.items():
        state[f"{prefix}.lora_A.weight"] = rng.standard_normal((rank, in_features)).astype(np.float32)
        state[f"{prefix}.lora_B.weight"] = rng.standard_normal((out_features, rank)).astype(np.float32)
    if head_shape is not None:
        state[HEAD] = rng.standard_normal(head_shape).astype(np.float32)
    return state


@st.composite
def federations(draw, equal_ranks=False, max_total_rank=None):
    """(previous_global, client_states, weights, ranks, r_max) of small random adapters."""
    r_max = draw(st.integers(1, 6))
    num_clients = draw(st.integers(1, 5))
    if equal_ranks:
        ranks = [draw(st.integers(1, r_max))] * num_clients
    else:
        ranks = draw(st.lists(st.integers(1, r_max), min_size=num_clients, max_size=num_clients))
    if max_total_rank == "r_max":
        while sum(ranks) > r_max:  # keep the average product's rank <= r_max
            ranks = ranks[:-1] if len(ranks) > 1 else [r_max]
    shape = st.tuples(st.integers(1, 6), st.integers(1, 6))
    modules = {f"layer{i}": draw(shape) for i in range(draw(st.integers(1, 2)))}
    head_shape = draw(st.none() | shape)
    weights = draw(st.lists(st.integers(1, 1000), min_size=len(ranks), max_size=len(ranks)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    previous = random_adapter(rng, modules, r_max, head_shape)
    clients = [random_adapter(rng, modules, rank, head_shape) for rank in ranks]
    return previous, clients, weights, ranks, r_max


def weighted_mean(arrays, weights) -> np.ndarray:
    return np.average(np.stack([np.asarray(a, np.float64) for a in arrays]), axis=0, weights=weights)


def module_prefixes(state) -> list[str]:
    return [k[: -len(".lora_A.weight")] for k in state if k.endswith(".lora_A.weight")]


def average_product(clients, weights, prefix) -> np.ndarray:
    return weighted_mean([product(c, prefix) for c in clients], weights)


def assert_close(actual, expected, scale=1.0):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * max(1.0, scale))


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
@PROPERTY_SETTINGS
@given(federation=federations())
def test_output_keeps_keys_and_shapes_at_r_max_in_float32(rule, federation):
    previous, clients, weights, _, r_max = federation
    out = aggregate(rule, clients, weights, previous, r_max)
    assert list(out) == list(previous)
    assert all(out[k].shape == previous[k].shape and out[k].dtype == np.float32 for k in out)
    assert adapter_rank(out) == r_max
    for r in range(1, r_max + 1):
        assert adapter_rank(truncate_to_rank(out, r)) == r


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
@PROPERTY_SETTINGS
@given(federation=federations())
def test_dense_tensors_are_weighted_fedavg(rule, federation):
    previous, clients, weights, _, r_max = federation
    out = aggregate(rule, clients, weights, previous, r_max)
    if HEAD in previous:
        assert_close(out[HEAD], weighted_mean([c[HEAD] for c in clients], weights))


@pytest.mark.parametrize("rule", FACTOR_RULES)
@PROPERTY_SETTINGS
@given(federation=federations(equal_ranks=True))
def test_equal_ranks_factor_rules_are_fedavg_of_the_factors(rule, federation):
    # Every client at rank r: the first r components are FedAvg of A and B; the rest are
    # zero (zero-pad) or the previous global's (rank-wise). At r = r_max: plain FedAvg.
    previous, clients, weights, ranks, r_max = federation
    rank = ranks[0]
    out = aggregate(rule, clients, weights, previous, r_max)
    for prefix in module_prefixes(previous):
        a_key, b_key = f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight"
        assert_close(out[a_key][:rank], weighted_mean([c[a_key] for c in clients], weights))
        assert_close(out[b_key][:, :rank], weighted_mean([c[b_key] for c in clients], weights))
        tail_a = np.zeros_like(previous[a_key][rank:]) if rule == "zero-pad" else previous[a_key][rank:]
        tail_b = np.zeros_like(previous[b_key][:, rank:]) if rule == "zero-pad" else previous[b_key][:, rank:]
        np.testing.assert_array_equal(out[a_key][rank:], tail_a)
        np.testing.assert_array_equal(out[b_key][:, rank:], tail_b)


@PROPERTY_SETTINGS
@given(federation=federations(equal_ranks=True, max_total_rank="r_max"))
def test_equal_ranks_svd_product_is_fedavg_of_the_products(federation):
    previous, clients, weights, _, r_max = federation
    out = aggregate("svd", clients, weights, previous, r_max)
    for prefix in module_prefixes(previous):
        expected = average_product(clients, weights, prefix)
        assert_close(product(out, prefix), expected, scale=np.abs(expected).max())


@PROPERTY_SETTINGS
@given(federation=federations(max_total_rank="r_max"))
def test_svd_product_is_fedavg_of_the_products_when_ranks_permit(federation):
    previous, clients, weights, _, r_max = federation
    out = aggregate("svd", clients, weights, previous, r_max)
    for prefix in module_prefixes(previous):
        expected = average_product(clients, weights, prefix)
        assert_close(product(out, prefix), expected, scale=np.abs(expected).max())


@PROPERTY_SETTINGS
@given(federation=federations())
def test_svd_truncation_to_r_is_the_best_rank_r_approximation(federation):
    # Eckart-Young: the best rank-r fit misses exactly the singular values beyond r.
    previous, clients, weights, _, r_max = federation
    out = aggregate("svd", clients, weights, previous, r_max)
    for prefix in module_prefixes(previous):
        target = average_product(clients, weights, prefix)
        singular_values = np.linalg.svd(target, compute_uv=False)
        for r in range(1, r_max + 1):
            error = np.linalg.norm(product(truncate_to_rank(out, r), prefix) - target)
            best = np.sqrt(np.sum(singular_values[r:] ** 2))
            assert error == pytest.approx(best, abs=1e-4 * max(1.0, singular_values[0]))


@PROPERTY_SETTINGS
@given(federation=federations())
def test_zero_pad_is_fedavg_of_clients_padded_with_zeros(federation):
    previous, clients, weights, _, r_max = federation
    out = aggregate("zero-pad", clients, weights, previous, r_max)
    padded = [pad_to_rank(c, r_max) for c in clients]
    for key in out:
        assert_close(out[key], weighted_mean([p[key] for p in padded], weights))


@PROPERTY_SETTINGS
@given(federation=federations())
def test_rank_wise_averages_each_component_over_the_clients_that_trained_it(federation):
    previous, clients, weights, ranks, r_max = federation
    out = aggregate("rank-wise", clients, weights, previous, r_max)
    for prefix in module_prefixes(previous):
        a_key, b_key = f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight"
        for k in range(r_max):
            trained = [i for i, rank in enumerate(ranks) if rank > k]
            if not trained:  # untrained this round: the previous global value, bit for bit
                np.testing.assert_array_equal(out[a_key][k], previous[a_key][k])
                np.testing.assert_array_equal(out[b_key][:, k], previous[b_key][:, k])
                continue
            kept_weights = [weights[i] for i in trained]  # renormalised over these clients
            assert_close(out[a_key][k], weighted_mean([clients[i][a_key][k] for i in trained], kept_weights))
            assert_close(out[b_key][:, k], weighted_mean([clients[i][b_key][:, k] for i in trained], kept_weights))


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
@PROPERTY_SETTINGS
@given(federation=federations(), scale=st.sampled_from([0.001, 7.0, 1e4]))
def test_only_relative_weights_matter(rule, federation, scale):
    previous, clients, weights, _, r_max = federation
    out = aggregate(rule, clients, weights, previous, r_max)
    scaled = aggregate(rule, clients, [w * scale for w in weights], previous, r_max)
    assert_same_aggregate(rule, scaled, out)


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
@PROPERTY_SETTINGS
@given(federation=federations(), data=st.data())
def test_client_order_does_not_matter(rule, federation, data):
    previous, clients, weights, _, r_max = federation
    order = data.draw(st.permutations(range(len(clients))))
    out = aggregate(rule, clients, weights, previous, r_max)
    shuffled = aggregate(rule, [clients[i] for i in order], [weights[i] for i in order], previous, r_max)
    assert_same_aggregate(rule, shuffled, out)


@PROPERTY_SETTINGS
@given(federation=federations())
def test_svd_buffer_size_does_not_change_the_result(federation):
    previous, clients, weights, _, r_max = federation
    results = []
    for buffer_rank in (1, 1000):  # flush after (almost) every client vs never before result()
        aggregator = SvdAggregator(previous, r_max, buffer_rank=buffer_rank)
        for client, weight in zip(clients, weights):
            aggregator.add(client, weight)
        results.append(aggregator.result())
    assert_same_aggregate("svd", *results)


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
@PROPERTY_SETTINGS
@given(federation=federations())
def test_result_midway_does_not_disturb_the_stream(rule, federation):
    previous, clients, weights, _, r_max = federation
    aggregator = make_aggregator(rule, previous, r_max)
    for client, weight in zip(clients, weights):
        aggregator.add(client, weight)
        aggregator.result()
    assert_same_aggregate(rule, aggregator.result(), aggregate(rule, clients, weights, previous, r_max))


def assert_same_aggregate(rule, actual, expected):
    """Equal tensors; for svd equal products (an SVD basis is not unique for tied values)."""
    for key in expected:
        if rule == "svd" and ".lora_" in key:
            continue
        assert_close(actual[key], expected[key], scale=np.abs(expected[key]).max(initial=0))
    if rule == "svd":
        for prefix in module_prefixes(expected):
            target = product(expected, prefix)
            assert_close(product(actual, prefix), target, scale=np.abs(target).max(initial=0))


def test_a_client_given_a_smaller_batch_weighs_per_step_as_at_its_own_batch():
    # 6 examples in 2 steps at batch 3, its own batch being 12: per step it counts as 12 examples.
    assert client_weight("examples-per-step", 6, 2, batch_scale=12 / 3) == 12.0
    assert client_weight("examples", 6, 2, batch_scale=12 / 3) == 6.0  # FedAvg counts what it trained


def test_a_client_adapter_is_float32_whatever_the_delta_dtype():
    previous = {A: np.ones((4, 3), np.float32), B: np.ones((5, 4), np.float32), HEAD: np.ones((2, 3), np.float32)}
    delta = {A: np.full((2, 3), 0.5), B: np.full((5, 2), 0.5), HEAD: np.full((2, 3), 0.5)}  # float64
    adapter = client_adapter_from_delta(previous, delta)
    assert {v.dtype for v in adapter.values()} == {np.dtype(np.float32)}
    np.testing.assert_array_equal(adapter[A], np.full((2, 3), 1.5, np.float32))


def test_svd_factors_have_a_positive_largest_entry_in_each_column_of_b():
    # The sign convention that makes the split a function of the matrix, hence reproducible.
    rng = np.random.default_rng(3)
    for _ in range(5):
        a, b = split_by_svd(rng.normal(size=(7, 5)), 3)
        leading = b[np.argmax(np.abs(b), axis=0), np.arange(3)]
        assert (leading > 0).all()
        a2, b2 = split_by_svd(-rng.normal(size=(7, 5)), 3)
        assert (b2[np.argmax(np.abs(b2), axis=0), np.arange(3)] > 0).all()
