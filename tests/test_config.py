"""Run config: the shipped defaults parse, and bad values fail early and clearly."""

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
