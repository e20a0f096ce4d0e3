"""``flq report``: table and figures rebuilt from a synthetic run directory."""

import json

import numpy as np
import pytest

from flq.cli import main
from flq.metrics.records import ClientEvalRecord, ClientRoundRecord, RoundRecord, append_round

FIGURES = ("score_vs_clock.png", "tier_time_breakdown.png", "rank_heatmap.png", "update_cosine_heatmap.png")


def synthetic_round(server_round, clock_s, score, late_edge):
    edge_status = "late" if late_edge else "ok"
    edge_compute_s, edge_comm_s = (70.0, 25.0) if late_edge else (35.0, 15.0)  # 95 s vs 50 s, deadline 60 s
    clients = [
        ClientRoundRecord(
            node_id=11,
            status="ok",
            partition_id=0,
            tier="gpu-24g",
            rank=8,
            bits=16,
            steps=8,
            compute_s=0.4,
            comm_s=0.6,
            round_s=1.0,
            bytes_up=1_000_000,
            bytes_down=1_000_000,
            peak_mem_mb=900.0,
            num_examples=64,
        ),
        ClientRoundRecord(
            node_id=12,
            status="ok",
            partition_id=1,
            tier="gpu-32g",
            rank=8,
            bits=16,
            steps=8,
            compute_s=0.3,
            comm_s=0.1,
            round_s=0.4,
            bytes_up=1_000_000,
            bytes_down=1_000_000,
            peak_mem_mb=950.0,
            num_examples=64,
        ),
        ClientRoundRecord(
            node_id=13,
            status=edge_status,
            partition_id=2,
            tier="cpu-edge",
            rank=4,
            bits=16,
            steps=8,
            compute_s=edge_compute_s,
            comm_s=edge_comm_s,
            round_s=edge_compute_s + edge_comm_s,
            bytes_up=500_000,
            bytes_down=1_000_000,
            peak_mem_mb=1400.0,
            num_examples=64,
            on_time=not late_edge,
        ),
    ]
    return RoundRecord(
        server_round=server_round,
        clock="virtual",
        clock_s=clock_s,
        round_s=60.0,
        wall_s=5.0 * server_round,
        deadline_s=60.0,
        policy="drop",
        score_name="accuracy",
        score=score,
        eval_loss=1.0,
        train_loss=1.0,
        bytes_up=2_500_000,
        bytes_down=3_000_000,
        num_sampled=3,
        num_accepted=2 if late_edge else 3,
        clients=clients,
        client_eval=[
            ClientEvalRecord(n, p, t, s, 1.0, 20)
            for n, p, t, s in [(11, 0, "gpu-24g", 0.9), (12, 1, "gpu-32g", 0.8), (13, 2, "cpu-edge", 0.5)]
        ],
    )


@pytest.fixture
def run_dir(tmp_path):
    directory = tmp_path / "drop-run"
    # Scores 0.4, 0.6, 0.8 at 60, 120, 180 s; round 2 on time (the edge client made it).
    for rnd, score in ((1, 0.4), (2, 0.6), (3, 0.8)):
        append_round(directory, synthetic_round(rnd, 60.0 * rnd, score, late_edge=rnd != 2))
    (directory / "run.json").write_text(json.dumps({"config": {"target-score": 0.7}}), encoding="utf-8")
    return directory


def table_row(out, label):
    for line in out.splitlines():
        if line.startswith(label + " "):
            return line.split()[len(label.split()) :]
    raise AssertionError(f"no row {label!r} in:\n{out}")


def test_report_prints_the_summary_and_writes_the_figures(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert table_row(out, "metric") == ["drop-run"]
    assert table_row(out, "target") == ["0.7"]  # from run.json
    assert table_row(out, "rounds to target") == ["3"]
    # 120 + (0.7 - 0.6) / (0.8 - 0.6) x 60 = 150 s.
    assert table_row(out, "clock s to target") == ["150.0"]
    assert table_row(out, "rounds within deadline") == ["33%"]  # only round 2 had nobody late
    assert table_row(out, "MB up / round") == ["2.50"]
    assert table_row(out, "client worst") == ["0.5000"]
    # Jain: (0.9 + 0.8 + 0.5)^2 / (3 x (0.81 + 0.64 + 0.25)) = 4.84 / 5.1 = 0.9490.
    assert table_row(out, "Jain's index") == ["0.9490"]
    # what each tier gave: the edge client's update was dropped in 2 of its 3 rounds
    assert table_row(out, "examples / client-round [cpu-edge]") == ["21.3", "(33%", "in)"]
    assert table_row(out, "examples / client-round [gpu-24g]") == ["64.0", "(100%", "in)"]
    assert table_row(out, "peak MB [cpu-edge]") == ["1400"]
    assert table_row(out, "dropped [cpu-edge]") == ["2"]
    assert table_row(out, "dropped [gpu-24g]") == ["0"]
    for name in FIGURES:
        path = run_dir / "figures" / name
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run_dir / "figures" / "summary.json").read_text())
    assert summary["rounds_to_target"] == 3 and summary["clock_s_to_target"] == pytest.approx(150.0)


def test_target_on_the_command_line_wins(run_dir, capsys):
    assert main(["report", str(run_dir), "--target", "0.5", "--out", str(run_dir / "alt")]) == 0
    out = capsys.readouterr().out
    # 60 + (0.5 - 0.4) / (0.6 - 0.4) x 60 = 90 s, in round 2.
    assert table_row(out, "rounds to target") == ["2"] and table_row(out, "clock s to target") == ["90.0"]
    assert (run_dir / "alt" / "score_vs_clock.png").is_file()


def test_several_runs_side_by_side_with_a_comparison_plot(run_dir, tmp_path, capsys):
    other = tmp_path / "wait-run"
    for rnd, score in ((1, 0.7), (2, 0.9)):
        append_round(other, synthetic_round(rnd, 95.0 * rnd, score, late_edge=False))
    out_dir = tmp_path / "report"
    assert main(["report", str(run_dir), str(other), "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert table_row(out, "metric") == ["drop-run", "wait-run"]
    assert table_row(out, "target") == ["0.7", "n/a"]  # the second run has no run.json
    assert table_row(out, "rounds to target") == ["3", "n/a"]
    assert table_row(out, "final score") == ["0.8000", "0.9000"]
    assert (out_dir / "compare_score_vs_clock.png").is_file()
    for label in ("drop-run", "wait-run"):
        assert all((out_dir / label / name).is_file() for name in FIGURES)


def test_a_directory_that_is_not_a_run_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no rounds.jsonl" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_a_corrupt_rounds_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "rounds.jsonl").write_text("{not json\n", encoding="utf-8")
    assert main(["report", str(tmp_path)]) == 2
    assert "not a round record" in capsys.readouterr().err


# -- the figures' data --------------------------------------------------------------------
def test_rank_matrix_orders_clients_by_partition_and_marks_the_late():
    from flq.metrics.plots import rank_matrix

    first = synthetic_round(1, 60.0, 0.4, late_edge=True)
    second = synthetic_round(2, 120.0, 0.6, late_edge=False)
    second.clients = second.clients[1:]  # partition 0 not sampled in round 2
    labels, ranks, marks = rank_matrix([first, second])
    assert labels == ["p0 (gpu-24g)", "p1 (gpu-32g)", "p2 (cpu-edge)"]
    assert ranks[0, 0] == 8 and ranks[0, 1] != ranks[0, 1]  # NaN where not sampled
    assert ranks[2].tolist() == [4, 4]
    assert marks == [["", ""], ["", ""], ["late", ""]]


def test_slowest_client_per_tier_ignores_clients_without_an_update():
    from flq.metrics.plots import slowest_per_tier

    record = synthetic_round(1, 60.0, 0.4, late_edge=True)
    record.clients.append(ClientRoundRecord(node_id=14, status="failed", tier="gpu-24g", round_s=500.0))
    record.clients.append(ClientRoundRecord(node_id=15, status="ok", tier="gpu-24g", round_s=2.0))
    slowest = slowest_per_tier(record)
    assert {t: c.node_id for t, c in slowest.items()} == {"gpu-24g": 15, "gpu-32g": 12, "cpu-edge": 13}


def test_figures_of_rounds_without_clients_or_scores_are_still_drawn(tmp_path):
    from flq.metrics.plots import write_run_figures

    bare = synthetic_round(1, 10.0, None, late_edge=False)
    bare.clients, bare.client_eval = [], []
    paths = write_run_figures([bare], tmp_path, target=0.7)
    assert [p.name for p in paths] == list(FIGURES) and all(p.is_file() for p in paths)


def test_the_cosine_heatmap_shows_each_clients_cosine_and_blanks_clients_without_one(tmp_path):
    from flq.metrics.plots import client_round_matrix, plot_cosine_heatmap

    first = synthetic_round(1, 10.0, 0.5, late_edge=False)
    for i, c in enumerate(first.clients):
        c.cosine_to_aggregate = None if i == 0 else 0.5 - i
    labels, values, _ = client_round_matrix([first], lambda c: c.cosine_to_aggregate)
    by_label = dict(zip(labels, values[:, 0], strict=True))
    expected = {lbl: (None if i == 0 else 0.5 - i) for i, lbl in enumerate(_labels_in_record_order(first))}
    for label, want in expected.items():
        assert np.isnan(by_label[label]) if want is None else by_label[label] == want
    assert plot_cosine_heatmap([first], tmp_path / "cos.png").is_file()


def _labels_in_record_order(record):
    from flq.metrics.plots import _client_label

    return [_client_label(c) for c in record.clients]
