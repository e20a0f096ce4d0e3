"""Tier profiles: the packaged presets, user overrides, bad files, and the run config's tier mix."""

import pytest

from flq.sim.tiers import PACKAGED_TIERS, TierError, TierProfile, assign_tiers, load_tiers, tier_from_dict

GOOD = {"compute_factor": 2.0, "uplink_mbps": 10.0, "downlink_mbps": 20.0, "rtt_ms": 30.0}


def write(tmp_path, text):
    path = tmp_path / "tiers.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_packaged_presets_describe_the_four_tiers_and_the_reference():
    tiers = load_tiers()
    assert {"reference", "gpu-24g", "gpu-32g", "cpu-edge", "jetson-nano"} <= set(tiers)
    assert tiers["reference"].compute_factor == 1.0
    for name in ("gpu-24g", "gpu-32g"):
        assert tiers[name].compute_factor < 1 and tiers[name].threads is None
    assert tiers["gpu-24g"].memory_limit_mb == 24576 and tiers["gpu-32g"].memory_limit_mb == 32768
    edge = tiers["cpu-edge"]
    assert edge.compute_factor > 1 and edge.threads is not None and edge.uplink_mbps < tiers["gpu-24g"].uplink_mbps
    nano = tiers["jetson-nano"]
    assert nano.memory_limit_mb == 4096 and nano.batch_size == 16 and nano.mixed_precision
    assert nano.max_rank is not None and nano.max_rank <= 4
    assert all(t.name == name for name, t in tiers.items())


def test_the_packaged_file_is_next_to_the_module():
    assert PACKAGED_TIERS.name == "tiers.toml" and PACKAGED_TIERS.is_file()


def test_a_user_file_overrides_by_name_and_adds_new_tiers(tmp_path):
    path = write(
        tmp_path,
        """
[tiers.gpu-24g]
compute_factor = 0.5
uplink_mbps = 1.0
downlink_mbps = 2.0
rtt_ms = 3.0

[tiers.phone]
compute_factor = 12.0
uplink_mbps = 2.0
downlink_mbps = 8.0
rtt_ms = 90.0
loss = 0.02
threads = 4
max_rank = 2
""",
    )
    tiers = load_tiers(path)
    assert tiers["gpu-24g"] == TierProfile("gpu-24g", 0.5, 1.0, 2.0, 3.0)  # replaced whole, defaults elsewhere
    assert tiers["phone"].threads == 4 and tiers["phone"].loss == 0.02 and tiers["phone"].max_rank == 2
    assert tiers["cpu-edge"] == load_tiers()["cpu-edge"]


def test_unknown_and_missing_keys_are_named(tmp_path):
    path = write(tmp_path, "[tiers.x]\ncompute_factor = 1.0\nuplink_mbps = 1.0\nrtt_ms = 1.0\nbandwidth = 3\n")
    with pytest.raises(TierError, match=r"tier 'x'.*unknown key 'bandwidth'.*missing required key 'downlink_mbps'"):
        load_tiers(path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("loss", 1.0, r"loss must be in \[0, 1\)"),
        ("loss", -0.1, r"loss must be in \[0, 1\)"),
        ("compute_factor", 0.0, "compute_factor must be > 0"),
        ("uplink_mbps", "fast", "uplink_mbps must be a number"),
        ("rtt_ms", -1.0, "rtt_ms must be >= 0"),
        ("startup_s", -0.5, "startup_s must be >= 0"),
        ("threads", 1.5, "threads must be an integer >= 1"),
        ("max_rank", 0, "max_rank must be an integer >= 1"),
        ("batch_size", True, "batch_size must be an integer >= 1"),
        ("mixed_precision", "yes", "mixed_precision must be true or false"),
        ("memory_limit_mb", float("inf"), "memory_limit_mb must be a number"),
    ],
)
def test_bad_values_are_rejected(key, value, message):
    with pytest.raises(TierError, match=message):
        tier_from_dict("t", GOOD | {key: value})


def test_all_problems_of_a_table_are_listed_together():
    with pytest.raises(TierError, match="loss must be.*threads must be"):
        tier_from_dict("t", GOOD | {"loss": 2.0, "threads": 0})


def test_file_level_errors_are_clear(tmp_path):
    with pytest.raises(TierError, match="not found"):
        load_tiers(tmp_path / "missing.toml")
    with pytest.raises(TierError, match="not valid TOML"):
        load_tiers(write(tmp_path, "[tiers.x\n"))
    with pytest.raises(TierError, match=r"unknown top-level keys \['gpu'\]"):
        load_tiers(write(tmp_path, "[gpu]\ncompute_factor = 1.0\n"))
    with pytest.raises(TierError, match="no \\[tiers.NAME\\] tables"):
        load_tiers(write(tmp_path, "# nothing\n"))


# -- the tier mix -------------------------------------------------------------------------
def test_thirds_split_partitions_into_contiguous_groups():
    # 10 partitions in 3 groups: partition p goes to group p * 3 // 10 -> sizes 4, 3, 3.
    assert assign_tiers("thirds:gpu-24g,gpu-32g,cpu-edge", 10) == ["gpu-24g"] * 4 + ["gpu-32g"] * 3 + ["cpu-edge"] * 3
    assert assign_tiers("groups:gpu-24g,cpu-edge", 4) == ["gpu-24g", "gpu-24g", "cpu-edge", "cpu-edge"]


def test_cycle_list_and_single_name():
    assert assign_tiers("cycle:gpu-24g,cpu-edge", 5) == ["gpu-24g", "cpu-edge", "gpu-24g", "cpu-edge", "gpu-24g"]
    assert assign_tiers("list:cpu-edge,jetson-nano,gpu-32g", 3) == ["cpu-edge", "jetson-nano", "gpu-32g"]
    assert assign_tiers("jetson-nano", 2) == ["jetson-nano", "jetson-nano"]


@pytest.mark.parametrize(
    ("spec", "n", "message"),
    [
        ("gpu-48g", 3, r"unknown tier\(s\) \['gpu-48g'\]"),
        ("cycle:gpu-24g,tpu", 3, r"unknown tier\(s\) \['tpu'\]"),
        ("list:gpu-24g,cpu-edge", 3, "has 2 items for 3 partitions"),
        ("thirds:gpu-24g,cpu-edge", 3, "thirds needs exactly three tiers"),
        ("tier:gpu-24g=cpu-edge", 3, "cannot be chosen by tier"),
        ("halves:gpu-24g,cpu-edge", 3, "unknown spec kind"),
        ("gpu-24g", 0, "num_partitions must be >= 1"),
    ],
)
def test_bad_mixes_fail_clearly(spec, n, message):
    with pytest.raises(TierError, match=message):
        assign_tiers(spec, n)


def test_a_mix_can_use_tiers_from_a_user_file():
    assert assign_tiers("cycle:phone,gpu-24g", 3, known={"phone", "gpu-24g"}) == ["phone", "gpu-24g", "phone"]
    with pytest.raises(TierError, match="unknown tier"):
        assign_tiers("phone", 1)
