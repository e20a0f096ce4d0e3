"""The recorder writes what a round snapshot says: scores beside accuracy, and a collapse warning."""

import logging

import numpy as np

from flq.metrics.classification import classification_scores, to_metric_values
from flq.metrics.records import ClientRoundRecord, read_rounds
from flq.run_recorder import RunRecorder, load_checkpoint, load_optimizer_state
from flq.status import ClientStatus
from flq.strategy.accounting import RoundResult
from flq.strategy.recording import RoundSnapshot


def snapshot(metrics, server_round=1):
    client = ClientRoundRecord(node_id=5, status=ClientStatus.OK, rank=4, round_s=2.0)
    return RoundSnapshot(
        server_round=server_round, clock="virtual", clock_s=2.0, deadline_s=None, policy="wait",
        result=RoundResult(server_round, clients=[client], round_s=2.0, num_accepted=1),
        global_state={"w": np.ones(3, np.float32)}, metrics=metrics, client_eval=[], scheduler_name="fixed",
        scheduler_state={}, scheduler_ms=0.1, rng_state=[3, [1, 2], None],
        optimizer_state={"m/w": np.full(3, 0.5)},
    )  # fmt: skip


def server_metrics(labels, predictions, num_classes=3):
    scores = classification_scores(np.array(labels), np.array(predictions), num_classes)
    return {"score": scores.accuracy, "loss": 1.0, "num-examples": len(labels), **to_metric_values(scores)}


def test_a_round_record_carries_balanced_accuracy_macro_f1_and_per_class_scores(tmp_path):
    recorder = RunRecorder(tmp_path, "accuracy", 3, {})
    recorder.on_round(snapshot(server_metrics([0, 0, 1, 1], [0, 1, 1, 1])))  # class 2 absent
    (record,) = read_rounds(tmp_path)
    assert record.score == 0.75 and record.balanced_accuracy == 0.75
    assert record.per_class_score == [0.5, 1.0, None]  # no example of class 2: null, not NaN
    assert record.top_prediction == 1 and record.top_prediction_share == 0.75
    assert record.macro_f1 is not None and record.clients[0].status == "ok"
    state, meta = load_checkpoint(tmp_path)
    assert meta["server_round"] == 1 and meta["rng"] == [3, [1, 2], None]
    np.testing.assert_array_equal(load_optimizer_state(tmp_path)["m/w"], np.full(3, 0.5))


def test_a_global_model_predicting_one_class_is_warned_about(tmp_path, caplog):
    recorder = RunRecorder(tmp_path, "accuracy", 3, {})
    with caplog.at_level(logging.WARNING):
        recorder.on_round(snapshot(server_metrics([0, 1, 2, 0, 1], [1, 1, 1, 1, 0])))
        assert not caplog.records  # 80%: at the line, not past it
        recorder.on_round(snapshot(server_metrics([0, 1, 2, 0, 1], [1, 1, 1, 1, 1]), server_round=2))
    (warning,) = caplog.records
    assert "predicts class 1 for 100% of the held-out set" in warning.getMessage()


def test_a_causal_lm_round_has_no_class_scores(tmp_path):
    RunRecorder(tmp_path, "perplexity", 3, {}).on_round(snapshot({"score": 30.0, "loss": 3.4}))
    (record,) = read_rounds(tmp_path)
    assert record.balanced_accuracy is None and record.per_class_score is None
