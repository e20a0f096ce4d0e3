"""The non-IID benchmark's per-run figures, read from a run folder written by hand."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from noniid_benchmark import run_figures, skipped  # noqa: E402

from flq.config import RunConfig
from flq.metrics.records import ClientEvalRecord, RoundRecord, append_round
from flq.metrics.summary import label_mix_scores
from flq.task.partition import partition_label_histograms
from flq.task.specs import data_spec


def test_run_figures_give_the_target_round_and_both_fairness_measures(tmp_path):
    config = RunConfig().replace(partitioner="dirichlet", dirichlet_alpha=0.3, server_test_size=200, seed=5)
    (tmp_path / "run.json").write_text(json.dumps({"config": config.to_dict(), "nodes": [{"num_partitions": 4}]}))
    per_class = [0.9, 0.1, 0.5, 0.7, 0.3]
    evals = [ClientEvalRecord(p, p, None, s, 1.0, 5) for p, s in enumerate([0.2, 1.0, 0.6])]
    for server_round, score in enumerate([0.3, 0.6, 0.55], 1):
        last = server_round == 3
        record = RoundRecord(
            server_round, "virtual", float(server_round), 1.0, 1.0, None, "wait", "accuracy", score,
            None, None, 0, 0, 3, 3,
            client_eval=evals if last else [],
            macro_f1=0.5 if last else None,
            top_prediction_share=0.4 if last else None,
            per_class_score=per_class if last else None,
        )  # fmt: skip
        append_round(tmp_path, record)
    figures = run_figures(tmp_path, majority=0.25)
    assert (figures["rounds_to_target"], figures["held"], figures["final"]) == (2, True, 0.55)
    assert (figures["worst"], figures["macro_f1"], figures["top_share"]) == (0.2, 0.5, 0.4)
    mix = label_mix_scores(per_class, partition_label_histograms(data_spec(config), 4))
    assert figures["mix_worst"] == pytest.approx(min(mix))
    assert min(mix) < figures["mix_p10"] < max(mix)
    # halfway between majority 0.25 and the final 0.55 is 0.40: the own-split worst (0.2) misses it
    assert figures["fair"] is False
    assert figures["mix_fair"] is False  # the label-mix worst is 0.18 on this partition
    assert run_figures(tmp_path, majority=-0.2)["fair"] is True  # halfway 0.175: 0.2 clears it


def test_skip_patterns_leave_out_only_the_cells_they_match():
    patterns = ["bbc-news/pathological:2/*", "*/dirichlet:0.3/fedadam"]
    assert skipped("bbc-news/pathological:2/defaults", patterns)
    assert skipped("digits/dirichlet:0.3/fedadam", patterns)
    assert not skipped("bbc-news-minilm/pathological:2/defaults", patterns)  # another data set
    assert not skipped("digits/dirichlet:0.3/fedadam@0.1", patterns)  # another arm label
    assert not skipped("bbc-news/dirichlet:0.1/defaults", [])
