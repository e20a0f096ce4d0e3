"""The non-IID benchmark's per-run figures, read from a run folder written by hand."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from noniid_benchmark import run_figures  # noqa: E402

from flq.config import RunConfig
from flq.metrics.summary import label_mix_scores
from flq.task.partition import partition_label_histograms
from flq.task.specs import data_spec


def test_run_figures_give_the_target_round_and_both_fairness_measures(tmp_path):
    config = RunConfig().replace(partitioner="dirichlet", dirichlet_alpha=0.3, server_test_size=200, seed=5)
    (tmp_path / "run.json").write_text(json.dumps({"config": config.to_dict(), "nodes": [{"num_partitions": 4}]}))
    per_class = [0.9, 0.1, 0.5, 0.7, 0.3]
    rounds = [
        {"server_round": 1, "clock_s": 1.0, "score": 0.3},
        {"server_round": 2, "clock_s": 2.0, "score": 0.6},
        {
            "server_round": 3,
            "clock_s": 3.0,
            "score": 0.55,
            "macro_f1": 0.5,
            "top_prediction_share": 0.4,
            "per_class_score": per_class,
            "client_eval": [{"score": 0.2}, {"score": 1.0}, {"score": 0.6}],
        },
    ]
    (tmp_path / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    figures = run_figures(tmp_path, majority=0.25)
    assert (figures["rounds_to_target"], figures["held"], figures["final"]) == (2, True, 0.55)
    assert figures["worst"] == 0.2
    mix = label_mix_scores(per_class, partition_label_histograms(data_spec(config), 4))
    assert figures["mix_worst"] == pytest.approx(min(mix))
    assert min(mix) < figures["mix_p10"] < max(mix)
