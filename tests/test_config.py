"""Run config: the shipped defaults parse, and bad values fail early and clearly."""

import re
import tomllib

import pytest
from flwr.common.config import flatten_dict

from flq.config import ConfigError, RunConfig
from harness.simulation import PROJECT_DIR as PROJECT


def shipped_run_config() -> dict:
    with open(PROJECT / "pyproject.toml", "rb") as fh:
        return flatten_dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


def test_shipped_defaults_parse_and_cover_every_field():
    raw = shipped_run_config()
    cfg = RunConfig.from_flower(raw)
    assert set(raw) == set(cfg.to_dict()), "pyproject.toml and RunConfig must list the same knobs"
    assert cfg.model == "smollm2-135m" and cfg.data == "bbc-news"


def test_override_types_are_checked():
    raw = shipped_run_config() | {"lora-rank": "8"}
    with pytest.raises(ConfigError, match="lora-rank.*expected an integer"):
        RunConfig.from_flower(raw)


def test_unknown_key_lists_known_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'lora-rnak'.*known keys:.*lora-rank"):
        RunConfig.from_flower({"lora-rnak": 4})


def test_every_error_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flower({"backbone-bits": 3, "task": "translation", "learning-rate": -1.0})
    message = str(err.value)
    assert "backbone-bits" in message and "task" in message and "learning-rate" in message


def test_aggregation_weight_is_checked():
    assert RunConfig().aggregation_weight == "examples-per-step"
    assert RunConfig.from_flower({"aggregation-weight": "examples"}).aggregation_weight == "examples"
    with pytest.raises(ConfigError, match="aggregation-weight must be one of"):
        RunConfig.from_flower({"aggregation-weight": "steps"})


def test_clock_budget_is_off_by_default_and_checked():
    assert RunConfig().clock_budget is None
    assert RunConfig.from_flower({"clock-budget-s": 90}).clock_budget == 90.0
    with pytest.raises(ConfigError, match="clock-budget-s must be >= 0"):
        RunConfig.from_flower({"clock-budget-s": -1.0})


def test_ints_are_accepted_for_floats_and_scaling_is_alpha_over_rank():
    cfg = RunConfig.from_flower({"learning-rate": 1, "lora-alpha": 32, "lora-rank": 16})
    assert cfg.learning_rate == 1.0 and cfg.lora_scaling == 2.0


def test_target_list_parsing():
    assert RunConfig(lora_targets="q_proj, v_proj").lora_target_list() == ["q_proj", "v_proj"]
    assert RunConfig(lora_targets="all-linear").lora_target_list() == "all-linear"


def test_every_knob_is_documented():
    documented = (PROJECT / "docs" / "configuration.md").read_text()
    missing = [key for key in RunConfig().to_dict() if f"`{key}`" not in documented]
    assert not missing, f"undocumented run-config keys: {missing}"


# -- data-encoding and cross-checks: combinations that cannot work fail at configuration ----
def test_data_encoding_defaults_to_utf8_and_must_be_a_text_encoding():
    assert RunConfig().data_encoding == "utf-8"
    assert RunConfig.from_flower({"data-encoding": "latin-1"}).data_encoding == "latin-1"
    with pytest.raises(ConfigError, match="data-encoding: unknown encoding 'latin-9000'"):
        RunConfig.from_flower({"data-encoding": "latin-9000"})
    with pytest.raises(ConfigError, match="data-encoding: 'base64' is not a text encoding"):
        RunConfig.from_flower({"data-encoding": "base64"})


def test_causal_lm_with_the_default_partitioner_fails_naming_the_keys_and_the_fix():
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flower({"task": "causal-lm", "target-score": 30})
    message = str(err.value)
    assert "\n" not in message
    assert 'partitioner="dirichlet" splits clients by label' in message and 'task="causal-lm"' in message
    assert 'set partitioner="iid"' in message
    with pytest.raises(ConfigError, match='partitioner="pathological"'):
        RunConfig.from_flower({"task": "causal-lm", "target-score": 30, "partitioner": "pathological"})
    cfg = RunConfig.from_flower({"task": "causal-lm", "target-score": 30, "partitioner": "iid"})
    assert cfg.score_name == "perplexity"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"task": "image-classification"}, 'data="bbc-news" is text and task="image-classification" needs images'),
        ({"task": "image-classification", "data": "x.csv"}, 'data="x.csv" is text'),
        ({"task": "image-classification", "data": "hf:ag_news"}, 'data="hf:ag_news" is text'),
        ({"data": "digits"}, 'data="digits" is images and task="sequence-classification" needs text'),
        ({"data": "imgs.npz"}, 'data="imgs.npz" is images'),
        ({"data": "corpus.txt"}, 'data="corpus.txt" is plain text without labels'),
        ({"task": "causal-lm", "partitioner": "iid"}, "target-score=0.85 is below 1, which no perplexity reaches"),
        ({"target-score": 85}, 'target-score=85 is an accuracy for task="sequence-classification"'),
        ({"task": "instruction", "data": "notes.txt"}, 'data="notes.txt" is plain text and task="instruction"'),
        ({"task": "instruction"}, 'data="bbc-news" is not instruction data: set data="bbc-headlines"'),
        ({"data": "bbc-headlines"}, 'data="bbc-headlines" is instruction data: set task="instruction"'),
        ({"task": "instruction", "data": "bbc-headlines", "target-score": 2}, "target-score=2 is a ROUGE-L"),
        ({"task": "instruction", "data": "bbc-headlines", "generation-samples": 0}, "set generation-samples >= 1"),
        ({"packing": True}, 'packing joins instruction examples and task="sequence-classification"'),
    ],
)
def test_task_data_and_target_combinations_that_cannot_work(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        RunConfig.from_flower(overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        {"task": "image-classification", "data": "digits"},
        {"task": "image-classification", "data": "some/folder"},
        {"task": "causal-lm", "data": "corpus.txt", "partitioner": "iid", "target-score": 20},
        {"task": "causal-lm", "data": "d.jsonl", "partitioner": "iid", "target-score": 20},
        {"data": "d.parquet", "partitioner": "pathological"},
        {"data": "some/folder"},
        {"task": "instruction", "data": "bbc-headlines", "target-score": 0.3, "packing": True},
        {"task": "instruction", "data": "chats.jsonl", "partitioner": "iid"},
    ],
)
def test_combinations_that_work_pass(overrides):
    RunConfig.from_flower(overrides)


def test_instruction_runs_are_scored_by_rouge_l_higher_is_better():
    cfg = RunConfig.from_flower({"task": "instruction", "data": "bbc-headlines", "target-score": 0.3})
    assert cfg.score_name == "rouge-l" and cfg.higher_is_better


def test_the_server_app_reports_a_config_error_in_one_line_before_anything_loads(caplog):
    from types import SimpleNamespace

    from flq import server_app

    context = SimpleNamespace(run_config={"task": "causal-lm", "target-score": 30.0})
    with caplog.at_level("ERROR", logger="flwr.flq"), pytest.raises(server_app.RunFailed):
        server_app.main(None, context)  # the grid is never reached
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(lines) == 1 and lines[0].startswith("FLQ cannot run: bad run config:") and "partitioner" in lines[0]


def test_a_deadline_is_set_in_seconds_or_in_reference_steps_and_not_both():
    with pytest.raises(ConfigError, match="policy 'budget' needs a deadline"):
        RunConfig.from_flower({"policy": "budget"})
    assert RunConfig.from_flower({"policy": "budget", "deadline-steps": 14}).deadline_steps == 14.0
    assert RunConfig.from_flower({"policy": "drop", "deadline-s": 20}).deadline_s == 20.0
    with pytest.raises(ConfigError, match="not both"):
        RunConfig.from_flower({"policy": "budget", "deadline-s": 20, "deadline-steps": 14})
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="deadline-steps must be a finite number >= 0"):
            RunConfig.from_flower({"policy": "budget", "deadline-steps": bad})


def test_a_deadline_in_reference_steps_resolves_to_that_many_estimated_steps_of_the_model(tiny_llama_dir):
    from flq.server_app import round_deadline_s
    from flq.task.cost import estimate_step_seconds, model_shape

    cfg = RunConfig(model=str(tiny_llama_dir), policy="budget", deadline_steps=14, batch_size=4, max_seq_length=32)
    step_s = estimate_step_seconds(model_shape(tiny_llama_dir), cfg.backbone_bits, 4, 32)
    assert step_s > 0 and round_deadline_s(cfg) == pytest.approx(14 * step_s)
    # the run's batch and bits count: twice the batch is twice the step
    assert round_deadline_s(cfg.replace(batch_size=8)) == pytest.approx(2 * round_deadline_s(cfg))
    assert round_deadline_s(cfg.replace(deadline_steps=0, deadline_s=7.5)) == 7.5
    assert round_deadline_s(cfg.replace(policy="wait")) is None


def test_a_deadline_in_steps_of_a_model_not_on_disk_says_to_set_seconds(tmp_path):
    from flq.server_app import round_deadline_s

    cfg = RunConfig(model=str(tmp_path / "no-such-model"), policy="budget", deadline_steps=14)
    with pytest.raises(ConfigError, match="deadline-steps needs the size of model.*set deadline-s"):
        round_deadline_s(cfg)


def test_the_main_job_file_is_a_valid_run_config_over_the_shipped_defaults():
    with open(PROJECT / "experiments" / "main-job.toml", "rb") as fh:
        main_job = tomllib.load(fh)
    cfg = RunConfig.from_flower(shipped_run_config() | main_job)  # unknown keys or bad values fail here
    assert cfg.policy != "wait" and cfg.deadline_steps > 0  # the main job runs under a deadline
