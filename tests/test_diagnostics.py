"""Update diagnostics: exact norms, sketched cosines close to the exact ones, across ranks."""

import numpy as np
import pytest

from flq.adapter import pad_to_rank
from flq.metrics.records import ClientRoundRecord
from flq.strategy.diagnostics import UpdateDiagnostics, UpdateSketcher, cosine, update_norm

R = 8
TEMPLATE = {
    "m.q.lora_A.weight": np.zeros((R, 64), np.float32),
    "m.q.lora_B.weight": np.zeros((96, R), np.float32),
    "m.score.weight": np.zeros((3, 64), np.float32),
}


def random_update(rng, rank=R):
    return {
        "m.q.lora_A.weight": rng.normal(size=(rank, 64)).astype(np.float32),
        "m.q.lora_B.weight": rng.normal(size=(96, rank)).astype(np.float32),
        "m.score.weight": rng.normal(size=(3, 64)).astype(np.float32),
    }


def exact_cosine(a, b):
    a, b = pad_to_rank(a, R), pad_to_rank(b, R)
    return sum(float(np.vdot(a[k], b[k])) for k in a) / (update_norm(a) * update_norm(b))


@pytest.mark.parametrize("mix", [0.0, 0.5, 0.9, -0.7])
def test_sketched_cosines_are_close_to_exact_ones(mix):
    rng = np.random.default_rng(int(10 * mix) + 20)
    sketcher = UpdateSketcher(TEMPLATE, R, seed=3)
    a, noise = random_update(rng), random_update(rng)
    b = {k: mix * a[k] + np.sqrt(1 - mix**2) * noise[k] for k in a}
    got = cosine(sketcher.sketch(a), update_norm(a), sketcher.sketch(b), update_norm(b))
    assert got == pytest.approx(exact_cosine(a, b), abs=0.05)


def test_a_lower_rank_update_is_compared_component_by_component():
    rng = np.random.default_rng(5)
    sketcher = UpdateSketcher(TEMPLATE, R)
    low = random_update(rng, rank=2)
    full = pad_to_rank(low, R)
    np.testing.assert_array_equal(sketcher.sketch(low), sketcher.sketch(full))
    assert cosine(sketcher.sketch(low), update_norm(low), sketcher.sketch(full), update_norm(full)) == pytest.approx(
        1.0, abs=1e-9
    )


def test_norms_are_exact_and_a_zero_update_has_no_cosine():
    update = {"w": np.array([3.0, 4.0], np.float32)}
    assert update_norm(update) == 5.0
    assert cosine(np.ones(4), 0.0, np.ones(4), 1.0) is None


def test_a_client_pulling_against_the_others_gets_a_negative_cosine():
    rng = np.random.default_rng(7)
    diagnostics = UpdateDiagnostics(R, seed=1)
    previous = random_update(rng)
    common = random_update(rng)
    updates = {1: common, 2: {k: v * 1.1 for k, v in common.items()}, 3: {k: -0.5 * v for k, v in common.items()}}
    records = [ClientRoundRecord(node_id=n, status="ok") for n in updates]
    diagnostics.start_round(previous)
    for record in records:
        diagnostics.note(record, updates[record.node_id])
    aggregated = {k: previous[k] + (updates[1][k] + updates[2][k] + updates[3][k]) / 3 for k in previous}
    diagnostics.finish(records, previous, aggregated)
    by_node = {r.node_id: r for r in records}
    assert by_node[1].cosine_to_aggregate > 0.95 and by_node[2].cosine_to_aggregate > 0.95
    assert by_node[3].cosine_to_aggregate < -0.95
    assert by_node[2].update_norm == pytest.approx(1.1 * by_node[1].update_norm, rel=1e-5)
