"""Every summary metric against hand-computed values."""

import json

import numpy as np
import pytest

from flq.metrics.records import ClientEvalRecord, ClientRoundRecord, RoundRecord
from flq.metrics.summary import (
    best_score,
    bytes_per_round,
    deadline_share,
    dropped_per_tier,
    fairness,
    fairness_at_clock,
    final_score,
    higher_is_better_for,
    jain_index,
    label_mix_fairness_at_clock,
    label_mix_scores,
    late_score_at_clock,
    peak_memory_per_tier,
    rejected_replies,
    round_within_deadline,
    score_at_clock,
    summarize,
    sustained_time_to_target,
    time_to_target,
    work_per_tier,
    write_summary,
)


def make_round(
    server_round,
    clock_s,
    score,
    *,
    round_s=10.0,
    deadline_s=None,
    clients=(),
    client_eval=(),
    rejected=(),
    bytes_up=0,
    bytes_down=0,
    score_name="accuracy",
    policy="drop",
):
    return RoundRecord(
        server_round=server_round,
        clock="virtual",
        clock_s=clock_s,
        round_s=round_s,
        wall_s=float(server_round),
        deadline_s=deadline_s,
        policy=policy,
        score_name=score_name,
        score=score,
        eval_loss=None,
        train_loss=None,
        bytes_up=bytes_up,
        bytes_down=bytes_down,
        num_sampled=len(clients),
        num_accepted=sum(c.status == "ok" for c in clients),
        clients=list(clients),
        client_eval=list(client_eval),
        rejected=list(rejected),
    )


def client(node_id, status="ok", tier="gpu-24g", round_s=5.0, on_time=True, peak_mem_mb=0.0):
    return ClientRoundRecord(
        node_id=node_id, status=status, tier=tier, round_s=round_s, on_time=on_time, peak_mem_mb=peak_mem_mb
    )


def scores_at(scores, clocks, **kw):
    return [make_round(i + 1, c, s, **kw) for i, (s, c) in enumerate(zip(scores, clocks))]


# -- time-to-target -----------------------------------------------------------------------
def test_time_to_target_interpolates_between_the_rounds_around_the_crossing():
    records = scores_at([0.5, 0.7, 0.9], [10.0, 20.0, 30.0])
    # Crossed between round 2 (0.7 at 20 s) and round 3 (0.9 at 30 s): 20 + (0.8 - 0.7) / (0.9 - 0.7) x 10 = 25 s.
    hit = time_to_target(records, 0.8, higher_is_better=True)
    assert hit.rounds == 3
    assert hit.clock_s == pytest.approx(25.0)
    assert hit.clock_s_at_round == 30.0


def test_time_to_target_exactly_at_a_round_is_that_round():
    hit = time_to_target(scores_at([0.5, 0.7, 0.9], [10.0, 20.0, 30.0]), 0.7, True)
    assert (hit.rounds, hit.clock_s) == (2, pytest.approx(20.0))


def test_never_reached_is_none():
    records = scores_at([0.5, 0.7, 0.9], [10.0, 20.0, 30.0])
    assert time_to_target(records, 0.95, True) is None
    summary = summarize(records, 0.95, True)
    assert summary["rounds_to_target"] is None and summary["clock_s_to_target"] is None


def test_reached_at_round_one_is_round_one_end_with_nothing_to_interpolate_from():
    hit = time_to_target(scores_at([0.9, 0.95], [12.0, 24.0]), 0.8, True)
    assert (hit.rounds, hit.clock_s, hit.clock_s_at_round) == (1, 12.0, 12.0)


def test_an_initial_evaluation_as_round_zero_is_interpolated_from():
    records = [make_round(0, 0.0, 0.2), make_round(1, 10.0, 0.6)]
    # 0 + (0.4 - 0.2) / (0.6 - 0.2) x 10 = 5 s.
    hit = time_to_target(records, 0.4, True)
    assert (hit.rounds, hit.clock_s) == (1, pytest.approx(5.0))


def test_lower_is_better_for_perplexity():
    records = scores_at([60.0, 40.0, 20.0], [10.0, 20.0, 30.0], score_name="perplexity")
    # Crossed 30 between 40 at 20 s and 20 at 30 s: 20 + (30 - 40) / (20 - 40) x 10 = 25 s.
    hit = time_to_target(records, 30.0, higher_is_better=False)
    assert (hit.rounds, hit.clock_s) == (3, pytest.approx(25.0))
    # Read the other way round, 60 >= 30 already "reached" it in round 1: the direction matters.
    assert time_to_target(records, 30.0, higher_is_better=True).rounds == 1


def test_rounds_without_a_score_are_skipped():
    records = scores_at([0.5, None, 0.9], [10.0, 20.0, 30.0])
    # Between 0.5 at 10 s and 0.9 at 30 s: 10 + (0.7 - 0.5) / 0.4 x 20 = 20 s.
    assert time_to_target(records, 0.7, True).clock_s == pytest.approx(20.0)


def test_only_the_first_crossing_counts():
    records = scores_at([0.5, 0.9, 0.4, 0.95], [10.0, 20.0, 30.0, 40.0])
    assert time_to_target(records, 0.8, True).rounds == 2


def test_sustained_target_needs_the_next_evaluation_to_stay_at_or_past_it():
    # 0.9 in round 2 falls back to 0.4; 0.95 in round 4 is confirmed by 0.8 (exactly the target) in round 5.
    records = scores_at([0.5, 0.9, 0.4, 0.95, 0.8], [10.0, 20.0, 30.0, 40.0, 50.0])
    assert time_to_target(records, 0.8, True).rounds == 2
    hit = sustained_time_to_target(records, 0.8, True)
    assert (hit.rounds, hit.clock_s, hit.clock_s_at_round) == (4, 40.0, 40.0)
    assert sustained_time_to_target(records, 0.8, True, evaluations=1).clock_s == 20.0  # no interpolation
    assert sustained_time_to_target(records, 0.8, True, evaluations=3) is None
    summary = summarize(records, 0.8, True)
    assert (summary["rounds_to_sustained_target"], summary["clock_s_to_sustained_target"]) == (4, 40.0)


def test_sustained_target_is_none_when_only_the_last_evaluation_crosses():
    assert sustained_time_to_target(scores_at([0.5, 0.6, 0.9], [1.0, 2.0, 3.0]), 0.8, True) is None


def test_sustained_target_skips_unscored_rounds_and_reads_perplexity_downwards():
    # A round without a score neither breaks nor extends a streak: 0.9, (none), 0.85 are two evaluations.
    records = scores_at([0.5, 0.9, None, 0.85], [10.0, 20.0, 30.0, 40.0])
    assert sustained_time_to_target(records, 0.8, True).rounds == 2
    perplexity = scores_at([60.0, 25.0, 28.0], [10.0, 20.0, 30.0], score_name="perplexity")
    assert sustained_time_to_target(perplexity, 30.0, False).rounds == 2
    with pytest.raises(ValueError, match="evaluations"):
        sustained_time_to_target(perplexity, 30.0, False, evaluations=0)


def test_score_at_clock_is_the_last_evaluation_at_or_before_it():
    records = scores_at([0.5, None, 0.9], [10.0, 20.0, 30.0])
    assert score_at_clock(records, 5.0) is None
    assert score_at_clock(records, 10.0) == 0.5
    assert score_at_clock(records, 29.9) == 0.5  # round 2 had no score
    assert score_at_clock(records, 100.0) == 0.9


def test_late_score_is_the_mean_of_the_last_evaluations_at_or_before_the_clock():
    records = scores_at([0.5, None, 0.9, 0.7, 0.8], [10.0, 20.0, 30.0, 40.0, 50.0])
    assert late_score_at_clock(records, 5.0) is None
    assert late_score_at_clock(records, 45.0, evaluations=2) == pytest.approx(0.8)  # 0.9 and 0.7
    assert late_score_at_clock(records, 100.0, evaluations=3) == pytest.approx(0.8)  # 0.9, 0.7, 0.8
    assert late_score_at_clock(records, 100.0) == pytest.approx(0.725)  # all four scored rounds
    with pytest.raises(ValueError, match="evaluations"):
        late_score_at_clock(records, 100.0, evaluations=0)


def test_final_and_best_score():
    records = scores_at([0.5, 0.9, 0.7, None], [1.0, 2.0, 3.0, 4.0])
    assert final_score(records) == 0.7
    assert best_score(records, True) == 0.9 and best_score(records, False) == 0.5
    assert final_score([]) is None and best_score([], True) is None


def test_higher_is_better_by_score_name():
    assert higher_is_better_for("accuracy") and not higher_is_better_for("perplexity")
    with pytest.raises(ValueError, match="unknown score"):
        higher_is_better_for("bleu")


# -- deadlines ----------------------------------------------------------------------------
def test_within_deadline_needs_the_round_on_time_and_nobody_late():
    on_time = make_round(1, 8.0, 0.5, round_s=8.0, deadline_s=10.0, clients=[client(1, round_s=8.0)])
    dropped = make_round(
        2,
        18.0,
        0.5,
        round_s=10.0,
        deadline_s=10.0,
        clients=[client(1, round_s=6.0), client(2, "late", round_s=14.0, on_time=False)],
    )
    failed_only = make_round(
        3, 26.0, 0.5, round_s=8.0, deadline_s=10.0, clients=[client(1, round_s=8.0), client(2, "failed", round_s=0.0)]
    )
    too_long = make_round(4, 38.0, 0.5, round_s=12.0, deadline_s=10.0, clients=[client(1, round_s=12.0)])
    assert round_within_deadline(on_time, 10.0)
    assert not round_within_deadline(dropped, 10.0)  # the round ended at the deadline, but someone was late
    assert round_within_deadline(failed_only, 10.0)  # a crash is a failure, not lateness
    assert not round_within_deadline(too_long, 10.0)
    # 2 of 4 rounds within their deadline.
    assert deadline_share([on_time, dropped, failed_only, too_long]) == pytest.approx(0.5)


def test_a_wait_baseline_is_judged_against_a_given_deadline():
    # wait keeps late replies: status ok, on_time True (no deadline), but 14 s > 10 s.
    fast = make_round(1, 8.0, 0.5, round_s=8.0, policy="wait", clients=[client(1, round_s=8.0)])
    slow = make_round(2, 22.0, 0.5, round_s=14.0, policy="wait", clients=[client(1, round_s=14.0)])
    assert deadline_share([fast, slow]) is None  # no deadline anywhere: not applicable
    assert deadline_share([fast, slow], deadline_s=10.0) == pytest.approx(0.5)
    assert deadline_share([fast, slow], deadline_s=20.0) == pytest.approx(1.0)


def test_an_accepted_reply_marked_late_misses_the_deadline():
    r = make_round(1, 8.0, 0.5, round_s=8.0, deadline_s=10.0, clients=[client(1, round_s=8.0, on_time=False)])
    assert not round_within_deadline(r, 10.0)


# -- bytes --------------------------------------------------------------------------------
def test_bytes_per_round_mean_and_totals():
    records = [
        make_round(1, 1.0, None, bytes_up=100, bytes_down=1000),
        make_round(2, 2.0, None, bytes_up=300, bytes_down=3000),
    ]
    assert bytes_per_round(records) == {
        "bytes_up_per_round": 200.0,
        "bytes_down_per_round": 2000.0,
        "bytes_up_total": 400,
        "bytes_down_total": 4000,
        "bytes_total": 4400,
    }


# -- fairness -----------------------------------------------------------------------------
def evals(scores):
    return [
        ClientEvalRecord(node_id=i, partition_id=i, tier=None, score=s, loss=0.0, num_examples=10)
        for i, s in enumerate(scores)
    ]


def test_jain_index_hand_computed():
    # (0.2 + 0.4 + 0.6 + 0.8 + 1.0)^2 / (5 x (0.04 + 0.16 + 0.36 + 0.64 + 1.0)) = 9 / 11 = 0.8181...
    assert jain_index([0.2, 0.4, 0.6, 0.8, 1.0]) == pytest.approx(9 / 11)
    assert jain_index([0.7, 0.7, 0.7]) == pytest.approx(1.0)
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)  # one client has everything: 1/n
    assert jain_index([0.0, 0.0]) == 1.0
    with pytest.raises(ValueError):
        jain_index([])


def test_fairness_uses_the_last_round_that_evaluated_clients():
    records = [
        make_round(1, 1.0, 0.5, client_eval=evals([0.1, 0.1])),
        make_round(2, 2.0, 0.6, client_eval=evals([1.0, 0.8, 0.6, 0.4, 0.2])),
        make_round(3, 3.0, 0.7),  # no client evaluation this round
    ]
    f = fairness(records, higher_is_better=True)
    assert f["round"] == 2 and f["clients"] == 5
    assert f["worst"] == pytest.approx(0.2)
    # Linear percentile: position 0.10 x (5 - 1) = 0.4 between 0.2 and 0.4 -> 0.2 + 0.4 x 0.2 = 0.28.
    assert f["p10"] == pytest.approx(0.28)
    assert f["p10"] == pytest.approx(np.percentile([0.2, 0.4, 0.6, 0.8, 1.0], 10))
    assert f["mean"] == pytest.approx(0.6)
    assert f["jain"] == pytest.approx(9 / 11)


def test_fairness_at_clock_reads_the_last_client_evaluation_by_then():
    records = [
        make_round(1, 10.0, 0.5, client_eval=evals([0.1, 0.3])),
        make_round(2, 20.0, 0.6),
        make_round(3, 30.0, 0.7, client_eval=evals([0.5, 0.9])),
    ]
    assert fairness_at_clock(records, 5.0, True) is None
    early = fairness_at_clock(records, 25.0, True)
    assert (early["round"], early["clock_s"], early["worst"]) == (1, 10.0, 0.1)
    assert fairness_at_clock(records, 30.0, True)["worst"] == 0.5


def test_label_mix_scores_weight_per_class_accuracy_by_each_clients_labels():
    per_class = [0.9, 0.5, None, 0.1]
    hists = [[3, 1, 0, 0], [0, 0, 0, 2], [1, 1, 5, 1], [0, 0, 4, 0]]
    scores = label_mix_scores(per_class, hists)
    assert scores[0] == pytest.approx((3 * 0.9 + 0.5) / 4)
    assert scores[1] == pytest.approx(0.1)
    assert scores[2] == pytest.approx((0.9 + 0.5 + 0.1) / 3)  # the unmeasured class leaves the weights
    assert np.isnan(scores[3])  # none of its classes measured
    with pytest.raises(ValueError, match="3 classes against 4"):
        label_mix_scores(per_class, [[1, 2, 3]])


def test_label_mix_fairness_reads_the_last_per_class_score_by_then():
    records = [make_round(1, 10.0, 0.5), make_round(2, 20.0, 0.6), make_round(3, 30.0, 0.7)]
    records[0].per_class_score = [0.2, 0.8]
    records[2].per_class_score = [1.0, 0.0]
    hists = [[1, 0], [0, 1], [1, 1], [3, 1], [1, 3]]
    assert label_mix_fairness_at_clock(records, 5.0, hists) is None
    early = label_mix_fairness_at_clock(records, 25.0, hists)
    assert (early["round"], early["clients"], early["worst"]) == (1, 5, pytest.approx(0.2))
    assert early["mean"] == pytest.approx(np.mean([0.2, 0.8, 0.5, 0.35, 0.65]))
    late = label_mix_fairness_at_clock(records, 30.0, hists)
    # scores 1, 0, 0.5, 0.75, 0.25: p10 at position 0.4 between 0 and 0.25
    assert (late["worst"], late["p10"]) == (0.0, pytest.approx(0.1))


def test_fairness_for_perplexity_counts_from_the_high_end():
    f = fairness([make_round(1, 1.0, 30.0, client_eval=evals([10.0, 20.0, 30.0, 40.0, 50.0]))], False)
    # Worst is the highest perplexity; p10 from the bad end is the 90th percentile:
    # position 0.9 x 4 = 3.6 -> 40 + 0.6 x 10 = 46.
    assert f["worst"] == 50.0 and f["p10"] == pytest.approx(46.0)


def test_fairness_without_client_evaluation_is_none():
    assert fairness([make_round(1, 1.0, 0.5)], True) is None


# -- per tier -----------------------------------------------------------------------------
def tiered_rounds():
    return [
        make_round(
            1,
            10.0,
            0.5,
            deadline_s=10.0,
            clients=[
                client(1, tier="gpu-24g", peak_mem_mb=900.0),
                client(2, "late", tier="cpu-edge", on_time=False, peak_mem_mb=1500.0),
                client(3, tier=None, peak_mem_mb=100.0),
            ],
        ),
        make_round(
            2,
            20.0,
            0.6,
            deadline_s=10.0,
            rejected=[{"node_id": 1, "reason": "bad shape"}],
            clients=[
                client(1, "rejected", tier="gpu-24g", peak_mem_mb=1200.0),
                client(2, "late", tier="cpu-edge", on_time=False, peak_mem_mb=1400.0),
                client(4, "oom", tier="jetson-nano", peak_mem_mb=0.0),
            ],
        ),
    ]


def test_peak_memory_is_the_highest_any_client_of_the_tier_reported():
    # jetson-nano only ever reported out-of-memory (no measurement): it is left out, not 0 MB.
    assert peak_memory_per_tier(tiered_rounds()) == {"cpu-edge": 1500.0, "gpu-24g": 1200.0, "untiered": 100.0}


def test_dropped_counts_late_client_rounds_per_tier():
    assert dropped_per_tier(tiered_rounds()) == {"cpu-edge": 2, "gpu-24g": 0, "jetson-nano": 0, "untiered": 0}


def test_work_per_tier_counts_examples_that_reached_the_model_per_sampled_client_round():
    records = tiered_rounds()
    records[0].clients[0].num_examples = 32  # gpu-24g, accepted
    records[0].clients[1].num_examples = 8  # cpu-edge, late: its examples never counted
    records[1].clients[0].num_examples = 16  # gpu-24g, rejected
    work = work_per_tier(records)
    assert work["gpu-24g"] == {"client_rounds": 2, "accepted_share": 0.5, "examples_per_client_round": 16.0}
    assert work["cpu-edge"] == {"client_rounds": 2, "accepted_share": 0.0, "examples_per_client_round": 0.0}
    assert sorted(work) == ["cpu-edge", "gpu-24g", "jetson-nano", "untiered"]


def test_rejected_replies_are_counted():
    assert rejected_replies(tiered_rounds()) == 1


# -- all together -------------------------------------------------------------------------
def test_summary_is_json_and_written_atomically(tmp_path):
    records = tiered_rounds()
    summary = summarize(records, 0.55, True)
    assert summary["rounds"] == 2 and summary["clock"] == "virtual" and summary["deadline_s"] == 10.0
    assert summary["rounds_to_target"] == 2 and summary["clock_s_to_target"] == pytest.approx(15.0)
    assert summary["within_deadline_share"] == 0.0
    assert summary["final_score"] == 0.6 and summary["fairness"] is None
    path = write_summary(tmp_path / "run", summary)
    assert json.loads(path.read_text()) == json.loads(json.dumps(summary))
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]


def test_summary_of_no_target():
    summary = summarize(tiered_rounds(), None, True)
    assert summary["target"] is None and summary["rounds_to_target"] is None
