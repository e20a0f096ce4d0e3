"""``flq calibrate``: measured step times -> a tier file the tier loader accepts.

The pure half (flq/sim/calibration.py: summaries, factors, references, the TOML text) is tested
on made-up step times; the command (flq/launch/calibrate.py) on bad input (exit 2, one line, no
traceback, nothing written) and on a tiny random Llama, a few steps at one thread. Nothing here
asserts on how long a step took: only on the structure and consistency of what was written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from flq.cli import main
from flq.launch import calibrate as cmd
from flq.sim.calibration import (
    FORMAT,
    THIS_RUN,
    CalibrationError,
    Measurement,
    Reference,
    calibrated_tiers,
    calibration_record,
    check_prefix,
    compute_factor,
    fit_step_cost,
    header_lines,
    load_note,
    noise_notes,
    reference_from_record,
    reference_from_run,
    summarize,
    tier_file_text,
    tier_name,
    tokens_note,
    workload_differences,
)
from flq.sim.clock import PICKUP_S
from flq.sim.tiers import PACKAGED_TIERS, load_tiers

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = {
    "model": "smollm2-135m",
    "task": "causal-lm",
    "data": "bbc-news",
    "architecture": {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30},
    "backbone_bits": 16,
    "quant_type": None,
    "batch_size": 8,
    "max_seq_length": 64,
    "lora_rank": 8,
    "lora_targets": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "packing": False,
    "device": "cpu",
}
MACHINE = {"cpu_model": "Test CPU", "logical_cores": 4, "hostname": "box", "torch": "2.x", "usable_cores": 4}
SETTINGS = {"created": "2026-01-01 00:00:00 UTC", "warmup_steps": 2, "steps": 5, "pinned": True}


def measurements() -> list[Measurement]:
    return [
        Measurement(1, (4.0, 4.2, 3.9, 4.1, 4.0), (0,), 512.0, 8.0, 900.0),
        Measurement(2, (2.1, 2.0, 2.2, 2.0, 2.1), (0, 1), 512.0, 8.0, 910.0),
        Measurement(4, (1.2, 1.1, 1.0, 1.1, 1.3), (0, 1, 2, 3), 512.0, 8.0, 930.0),
    ]


def make_tiers(ms=None, reference=None, base="reference", **kw):
    ms = measurements() if ms is None else ms
    reference = reference or reference_from_run(ms, "Test CPU")
    return calibrated_tiers(ms, reference, load_tiers()[base], cpu_model="Test CPU", **kw), reference


# -- summaries and factors ----------------------------------------------------------------------
def test_summary_is_median_and_linear_percentiles():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.n, s.median_s, s.min_s, s.max_s) == (5, 3.0, 1.0, 5.0)
    assert s.p10_s == pytest.approx(1.4) and s.p90_s == pytest.approx(4.6)
    assert s.spread == pytest.approx((4.6 - 1.4) / 3.0)
    assert summarize([2.5]).median_s == summarize([2.5]).p10_s == 2.5


@pytest.mark.parametrize("bad", [[], [1.0, 0.0], [1.0, -2.0], [float("nan")], [float("inf")]])
def test_summary_refuses_no_steps_and_impossible_times(bad):
    with pytest.raises(CalibrationError):
        summarize(bad)


def test_factor_is_the_ratio_to_four_significant_digits():
    assert compute_factor(3.0, 1.5) == 2.0
    assert compute_factor(1.0, 3.0) == 0.3333
    assert compute_factor(123456.0, 1.0) == 123500.0
    for bad in [(0.0, 1.0), (1.0, 0.0), (float("nan"), 1.0), (1.0, float("inf"))]:
        with pytest.raises(CalibrationError):
            compute_factor(*bad)


# -- the reference ------------------------------------------------------------------------------
def test_without_a_reference_file_the_largest_thread_count_is_the_reference():
    ms = measurements()
    ref = reference_from_run(ms, "Test CPU")
    assert ref.from_this_run and ref.source == THIS_RUN and ref.threads == 4 and ref.step_s == 1.1
    assert reference_from_run(ms, "Test CPU", threads=2).step_s == 2.1
    with pytest.raises(CalibrationError, match="no measurement at 3 threads"):
        reference_from_run(ms, "Test CPU", threads=3)


def test_a_written_record_serves_as_the_reference_of_another_machine():
    tiers, ref = make_tiers()
    record = json.loads(json.dumps(calibration_record(MACHINE, WORKLOAD, SETTINGS, measurements(), ref, tiers)))
    assert record["format"] == FORMAT
    assert record["workload"]["lora_targets"] == list(WORKLOAD["lora_targets"])  # JSON: a list
    other, notes = reference_from_record(record, "ref.json", WORKLOAD)  # tuple vs list is no difference
    assert (other.threads, other.step_s, other.source) == (4, 1.1, "ref.json") and not other.from_this_run
    assert other.machine == "Test CPU, 4 logical cores, host box" and notes == []
    assert reference_from_record(record, "ref.json", WORKLOAD, threads=1)[0].step_s == 4.0
    with pytest.raises(CalibrationError, match="no measurement at 8 threads"):
        reference_from_record(record, "ref.json", WORKLOAD, threads=8)
    # the same step on other data is allowed, and said
    _, notes = reference_from_record(record, "ref.json", {**WORKLOAD, "data": "my.csv"})
    assert len(notes) == 1 and "my.csv" in notes[0]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("batch_size", 16),
        ("max_seq_length", 128),
        ("backbone_bits", 4),
        ("lora_rank", 4),
        ("lora_targets", ["q_proj"]),
        ("task", "sequence-classification"),
        ("architecture", {"model_type": "llama", "hidden_size": 960, "num_hidden_layers": 32}),
    ],
)
def test_a_reference_of_another_step_is_refused_naming_the_difference(key, value):
    tiers, ref = make_tiers()
    record = json.loads(json.dumps(calibration_record(MACHINE, WORKLOAD, SETTINGS, measurements(), ref, tiers)))
    ours = {**WORKLOAD, key: value}
    assert [d.split(":")[0] for d in workload_differences(ours, record["workload"])] == [key]
    with pytest.raises(CalibrationError, match=f"different step \\({key}: "):
        reference_from_record(record, "ref.json", ours)


@pytest.mark.parametrize(
    "record",
    [
        [],
        {"format": "something-else"},
        {"format": FORMAT},
        {"format": FORMAT, "workload": WORKLOAD, "measurements": []},
    ],
)
def test_a_reference_that_is_not_a_calibration_is_refused(record):
    with pytest.raises(CalibrationError, match="reference r.json"):
        reference_from_record(record, "r.json", WORKLOAD)


def test_tokens_and_noise_notes():
    ms = measurements()
    here = reference_from_run(ms, "x")
    assert tokens_note(ms, here) is None  # its own run: nothing to compare
    other = Reference(1.0, 2, "ref.json", "y", tokens_per_step=300.0)
    assert "512 tokens" in tokens_note(ms, other)
    assert tokens_note(ms, Reference(1.0, 2, "ref.json", "y", tokens_per_step=510.0)) is None
    assert noise_notes(ms) == []
    noisy = [Measurement(2, (1.0, 1.0, 5.0, 1.0, 3.0))]
    assert len(noise_notes(noisy)) == 1 and "2 threads" in noise_notes(noisy)[0]
    assert load_note([0.4, 2.0, 2.0], 2) is None and load_note(None, 2) is None
    assert "load average 3.5 on 2 usable cores" in load_note([3.5, 3.0, 3.0], 2)


# -- tiers and the tier file --------------------------------------------------------------------
def test_one_tier_per_thread_count_with_the_base_tiers_network():
    tiers, ref = make_tiers(prefix="lab")
    base = load_tiers()["reference"]
    assert (
        [t.name for t in tiers]
        == ["lab-cpu-1t", "lab-cpu-2t", "lab-cpu-4t"]
        == [tier_name("lab", t) for t in (1, 2, 4)]
    )
    assert [t.threads for t in tiers] == [1, 2, 4]
    for tier, m in zip(tiers, measurements()):
        assert tier.compute_factor == pytest.approx(m.summary.median_s / ref.step_s, rel=1e-3)
        assert (tier.uplink_mbps, tier.downlink_mbps, tier.rtt_ms, tier.loss) == (
            base.uplink_mbps,
            base.downlink_mbps,
            base.rtt_ms,
            base.loss,
        )
        assert tier.memory_limit_mb == base.memory_limit_mb
        assert "Test CPU" in tier.description
    assert tiers[-1].compute_factor == 1.0  # the reference itself


def test_hints_of_the_base_tier_are_not_copied_and_memory_can_be_set():
    tiers, _ = make_tiers(base="jetson-nano", memory_limit_mb=2048)
    nano = load_tiers()["jetson-nano"]
    for tier in tiers:
        assert tier.batch_size is None and tier.max_rank is None and tier.mixed_precision is False
        assert tier.rtt_ms == nano.rtt_ms and tier.loss == nano.loss and tier.memory_limit_mb == 2048


def test_measured_start_up_becomes_the_tiers_startup_s_and_round_trips(tmp_path):
    ms = [
        Measurement(1, (4.0, 4.1, 3.9), (0,), startup_process_s=(9.0, 11.0, 30.0)),  # one slow outlier
        Measurement(2, (2.0, 2.1, 1.9), (0, 1)),  # not probed: no startup_s
    ]
    tiers, ref = make_tiers(ms)
    assert ms[0].startup_s == round(11.0 + PICKUP_S, 2) and tiers[0].startup_s == ms[0].startup_s  # the median
    assert ms[1].startup_s is None and tiers[1].startup_s == 0.0
    text = tier_file_text(tiers, header_lines(tiers, ms, ref, MACHINE, WORKLOAD, SETTINGS, "reference"))
    path = tmp_path / "tiers.toml"
    path.write_text(text, encoding="utf-8")
    loaded = load_tiers(path)
    assert loaded["local-cpu-1t"] == tiers[0] and loaded["local-cpu-2t"] == tiers[1]
    assert text.count("\nstartup_s = ") == 1 and "mean wait on Flower's polling" in flat(text.splitlines())
    record = calibration_record(MACHINE, WORKLOAD, SETTINGS, ms, ref, tiers)
    assert record["measurements"][0]["startup_process_s"] == [9.0, 11.0, 30.0]
    assert [t["startup_s"] for t in record["tiers"]] == [tiers[0].startup_s, 0.0]


def test_the_tier_file_round_trips_through_the_tier_loader(tmp_path):
    tiers, ref = make_tiers()
    header = header_lines(tiers, measurements(), ref, MACHINE, WORKLOAD, SETTINGS, "reference")
    text = tier_file_text(tiers, header)
    path = tmp_path / "tiers.toml"
    path.write_text(text, encoding="utf-8")
    loaded = load_tiers(path)
    for tier in tiers:
        assert loaded[tier.name] == tier  # every key, exactly
    assert set(load_tiers()) < set(loaded)  # the packaged tiers are still there
    # the layout of flq/sim/tiers.toml: comments, then [tiers.NAME] tables with its key order
    assert all(line.startswith("#") for line in text.split("\n[tiers.")[0].splitlines() if line)
    table = text.split("[tiers.local-cpu-1t]\n")[1].split("\n\n")[0].splitlines()
    assert [line.split(" = ")[0] for line in table] == [
        "description",
        "compute_factor",
        "memory_limit_mb",
        "threads",
        "uplink_mbps",
        "downlink_mbps",
        "rtt_ms",
        "loss",
    ]
    packaged = tomllib.loads(PACKAGED_TIERS.read_text(encoding="utf-8"))["tiers"]["reference"]
    assert list(packaged)[: len(table)] == [line.split(" = ")[0] for line in table]


def test_descriptions_with_quotes_backslashes_and_unicode_survive(tmp_path):
    tiers, ref = make_tiers()
    odd = 'Intel "Xeon" C:\\cpu \u00e9\u00e8 \t tab'
    tiers = calibrated_tiers(measurements(), ref, load_tiers()["cpu-edge"], cpu_model=odd)
    path = tmp_path / "t.toml"
    path.write_text(tier_file_text(tiers, ['a header with "quotes"']), encoding="utf-8")
    assert load_tiers(path)["local-cpu-2t"].description.startswith(odd)


def flat(lines) -> str:
    """Comment lines as one line of text, however they were wrapped."""
    return " ".join(line.lstrip("#").strip() for line in lines)


def test_the_header_says_what_the_factors_are_relative_to():
    tiers, ref = make_tiers()
    own = flat(header_lines(tiers, measurements(), ref, MACHINE, WORKLOAD, SETTINGS, "reference"))
    assert "THIS machine at 4 threads" in own and "relative to this machine at full threads" in own
    assert "--reference" in own and 'tiers = "groups:local-cpu-1t,local-cpu-2t,local-cpu-4t"' in own
    other = Reference(2.0, 2, "sim-box.json", "Sim CPU, 2 logical cores")
    tiers, _ = make_tiers(reference=other)
    lines = header_lines(tiers, measurements(), other, MACHINE, WORKLOAD, SETTINGS, "reference")
    theirs = flat(lines)
    assert "Reference: sim-box.json, measured on Sim CPU" in theirs and "THIS machine" not in theirs
    assert all(len(line) <= 112 for line in lines)


@pytest.mark.parametrize("prefix", ["", "a:b", "a,b", "a b", "-x", "a=b", "ü"])
def test_tier_name_prefixes_that_would_break_a_tier_mix_are_refused(prefix):
    with pytest.raises(CalibrationError, match="prefix"):
        check_prefix(prefix)


def test_one_measurement_per_thread_count():
    ms = measurements()
    with pytest.raises(CalibrationError, match="one measurement per thread count"):
        calibrated_tiers([ms[0], ms[0]], reference_from_run(ms, "x"), load_tiers()["reference"])


# -- the command: inputs ------------------------------------------------------------------------
def test_thread_counts_default_and_limits():
    assert cmd.check_threads(None, 6, 8, pin=True) == [1, 2, 4, 6]
    assert cmd.check_threads(None, 1, 1, pin=True) == [1]
    assert cmd.check_threads([2, 1, 2], 4, 4, pin=True) == [2, 1]
    with pytest.raises(CalibrationError, match="may use 2 of this machine's 8"):
        cmd.check_threads([4], 2, 8, pin=True)
    assert cmd.check_threads([4], 2, 8, pin=False) == [4]  # unpinned: the machine's cores bound it
    with pytest.raises(CalibrationError, match="has 8 logical cores"):
        cmd.check_threads([9], 2, 8, pin=False)
    with pytest.raises(CalibrationError, match=">= 1"):
        cmd.check_threads([0], 2, 2, pin=True)


def args_for(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_run_config_follows_the_app_then_c_then_flags(tmp_path):
    cfg = cmd.run_config(args_for("--app", str(ROOT)))
    assert (cfg.model, cfg.batch_size, cfg.max_seq_length) == ("smollm2-135m", 8, 64)
    cfg = cmd.run_config(args_for("--app", str(ROOT), "-c", "batch-size=4 max-seq-length=32", "--batch-size", "2"))
    assert (cfg.batch_size, cfg.max_seq_length) == (2, 32)
    # a causal-LM step does not depend on the federation's partitioner and target, fitted unless given
    cfg = cmd.run_config(args_for("--app", str(ROOT), "--task", "causal-lm"))
    assert cfg.task == "causal-lm" and cfg.partitioner == "iid"
    with pytest.raises(CalibrationError, match="partitioner"):
        cmd.run_config(args_for("--app", str(ROOT), "--task", "causal-lm", "-c", 'partitioner="dirichlet"'))
    toml = tmp_path / "over.toml"
    toml.write_text("batch-size = 3\n", encoding="utf-8")
    assert cmd.run_config(args_for("--app", str(ROOT), "-c", str(toml))).batch_size == 3


def calibrate_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["calibrate", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "no-such-model", "--threads", "1"], "unknown model 'no-such-model'"),
        (["--model", "./missing-folder", "--threads", "1"], "no such file or directory"),
        (["--threads", str((os.cpu_count() or 1) + 1)], f"--threads {(os.cpu_count() or 1) + 1}: "),
        (["--threads", "1", "--steps", "0"], "--steps must be >= 1"),
        (["--backbone-bits", "3", "--threads", "1"], "backbone-bits must be one of"),
        (["-c", "no-such-key=1", "--threads", "1"], "unknown key 'no-such-key'"),
        (["--threads", "1", "--base-tier", "nope"], "base tier 'nope' not found"),
        (["--threads", "1", "--prefix", "a,b"], "prefix"),
        (["--threads", "1", "--reference", "missing.json"], "reference missing.json not found"),
        (["--threads", "1", "--reference-threads", "3"], "--reference-threads 3"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = calibrate_cli(capsys, *argv, "--app", str(ROOT), "--out", str(tmp_path / "out"))
    assert code == 2
    assert err.startswith("flq calibrate: error: ") and err.count("\n") == 1 and message in err
    assert "Traceback" not in out + err
    assert not (tmp_path / "out").exists()


def test_an_unwritable_output_is_refused_before_measuring(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x", encoding="utf-8")
    code, out, err = calibrate_cli(capsys, "--app", str(ROOT), "--threads", "1", "--out", str(blocker / "sub"))
    assert code == 2 and err.startswith("flq calibrate: error: cannot write to --out") and err.count("\n") == 1
    assert out == ""  # nothing measured: no progress


def test_existing_results_and_the_reference_itself_are_not_overwritten(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "tiers.toml").write_text("keep me", encoding="utf-8")
    code, _, err = calibrate_cli(capsys, "--app", str(ROOT), "--threads", "1", "--out", str(out))
    assert code == 2 and "--force" in err and (out / "tiers.toml").read_text(encoding="utf-8") == "keep me"
    ref = out / "calibration.json"
    ref.write_text("{}", encoding="utf-8")
    code, _, err = calibrate_cli(
        capsys, "--app", str(ROOT), "--threads", "1", "--out", str(out), "--reference", str(ref), "--force"
    )
    assert code == 2 and "would overwrite the reference" in err


# -- the command: a real calibration of a tiny model --------------------------------------------
def tiny_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--app",
        str(ROOT),
        "--model",
        str(model),
        "--task",
        "causal-lm",
        "-c",
        f'data="{data}"',
        "--batch-size",
        "4",
        "--max-seq-length",
        "16",
        "--threads",
        "1",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--prefix",
        "tiny",
        "--startup-runs",
        "1",
        "--out",
        str(out),
        *extra,
    ]


def check_written(out: Path) -> tuple[dict, dict]:
    record = json.loads((out / "calibration.json").read_text(encoding="utf-8"))
    assert record["format"] == FORMAT
    assert {"hostname", "cpu_model", "logical_cores", "usable_cores", "torch", "cpu_flags"} <= set(record["machine"])
    workload = record["workload"]
    assert workload["task"] == "causal-lm" and workload["batch_size"] == 4 and workload["max_seq_length"] == 16
    assert workload["architecture"]["model_type"] == "llama" and workload["device"] == "cpu"
    [m] = record["measurements"]
    assert (
        m["threads"] == 1 and m["steps"] == 3 and len(m["step_s"]) == 3 and (m["cores"] is None or len(m["cores"]) == 1)
    )
    assert m["median_s"] == pytest.approx(summarize(m["step_s"]).median_s)
    assert min(m["step_s"]) <= m["p10_s"] <= m["median_s"] <= m["p90_s"] <= max(m["step_s"])
    assert m["examples_per_step"] == 4 and 0 < m["tokens_per_step"] <= 4 * 16
    tiers = load_tiers(out / "tiers.toml")  # the loader's validation passes
    [entry] = record["tiers"]
    tier = tiers[entry["name"]]
    assert tier.name == "tiny-cpu-1t" and tier.threads == 1 and tier.compute_factor == entry["compute_factor"]
    reference = load_tiers()["reference"]
    assert (tier.uplink_mbps, tier.rtt_ms, tier.loss) == (reference.uplink_mbps, reference.rtt_ms, reference.loss)
    assert tier.compute_factor == pytest.approx(m["median_s"] / record["reference"]["median_s"], rel=1e-3)
    # a deployed round's start-up: the (one) fresh probe process plus the mean wait on Flower's polling
    [process_s] = m["startup_process_s"]
    assert process_s > 0 and tier.startup_s == entry["startup_s"] == m["startup_s"] == round(process_s + PICKUP_S, 2)
    return record, m


def test_calibrating_a_tiny_model_then_against_that_reference(capsys, tmp_path, tiny_llama_dir, keyword_csv):
    import torch

    threads, affinity = torch.get_num_threads(), os.sched_getaffinity(0)
    first = tmp_path / "first"
    code, out, err = calibrate_cli(capsys, *tiny_args(tiny_llama_dir, keyword_csv, first))
    assert code == 0, err
    assert (torch.get_num_threads(), os.sched_getaffinity(0)) == (threads, affinity)  # restored
    assert "1t step 3/3" in out and "wrote" in out  # progress, then where the files are
    record, m = check_written(first)
    assert record["reference"]["source"] == THIS_RUN and record["reference"]["threads"] == 1
    assert "THIS machine at 1 thread" in flat((first / "tiers.toml").read_text(encoding="utf-8").splitlines())

    second = tmp_path / "second"
    ref = first / "calibration.json"
    code, out, err = calibrate_cli(capsys, *tiny_args(tiny_llama_dir, keyword_csv, second, "--reference", str(ref)))
    assert code == 0, err
    record2, m2 = check_written(second)
    assert record2["reference"]["source"] == str(ref) and record2["reference"]["median_s"] == m["median_s"]
    tier = load_tiers(second / "tiers.toml")["tiny-cpu-1t"]
    assert tier.compute_factor == pytest.approx(m2["median_s"] / m["median_s"], rel=1e-3)
    assert f"Reference: {ref}, measured on" in flat((second / "tiers.toml").read_text(encoding="utf-8").splitlines())

    # the same reference for another step (batch 2) is refused after loading, before measuring
    code, out, err = calibrate_cli(
        capsys,
        *tiny_args(tiny_llama_dir, keyword_csv, tmp_path / "third", "--reference", str(ref), "--batch-size", "2"),
    )
    assert code == 2 and "different step (batch_size: 2 here vs 4 there)" in err and "step 1/3" not in out
    assert not (tmp_path / "third").exists()


@pytest.mark.e2e
def test_the_flq_command_calibrates_in_its_own_process(tmp_path, tiny_llama_dir, keyword_csv):
    env = {**os.environ, "FLWR_DISABLE_UPDATE_CHECK": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "flq.cli", "calibrate", *tiny_args(tiny_llama_dir, keyword_csv, tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    check_written(tmp_path / "out")
    bad = subprocess.run(
        [sys.executable, "-m", "flq.cli", "calibrate", "--app", str(ROOT), "--threads", "1", "--model", "nope"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_a_start_up_probe_that_fails_stops_calibration_with_its_last_error_line():
    from flq.launch.startup_probe import time_probes

    with pytest.raises(CalibrationError, match=r"start-up probe failed \(exit 1\): .*unknown key 'no-such-key'"):
        time_probes({"no-such-key": 1}, 8, None, 1, 1, progress=lambda _: None)


def test_a_steps_fixed_cost_is_fitted_in_examples_worth():
    batches = [1, 2, 4, 8, 16]
    line = fit_step_cost(batches, [0.002 * (6 + b) for b in batches])  # 12 ms fixed, 2 ms an example
    assert line.fixed_s == pytest.approx(0.012) and line.per_example_s == pytest.approx(0.002)
    assert line.fixed_examples == pytest.approx(6.0)
    assert fit_step_cost([1, 8], [0.001, 0.008]).fixed_examples == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="two or more batch sizes"):
        fit_step_cost([8, 8], [0.05, 0.06])
    with pytest.raises(ValueError, match="does not grow with its batch"):
        fit_step_cost([1, 8], [0.05, 0.04])
