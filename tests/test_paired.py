"""Paired statistics over seeds against hand-checked cases."""

import math

import numpy as np
import pytest

from flq.metrics.paired import (
    bootstrap_ci,
    geometric_mean,
    mean_std,
    paired_ratio,
    proportion_ci_half_width,
)


def test_mean_std_over_present_values():
    assert mean_std([1.0, 2.0, None, 3.0]) == (2.0, 1.0, 3)  # sample std of 1, 2, 3 is 1
    assert mean_std([4.0]) == (4.0, None, 1)
    assert mean_std([None]) == (None, None, 0)


def test_identical_arms_give_ratio_one_with_a_point_interval():
    times = {0: 30.0, 1: 55.0, 2: 41.0, 3: 12.5, 4: 80.0}
    r = paired_ratio(times, dict(times))
    assert r.estimate == pytest.approx(1.0)
    assert r.ci == pytest.approx((1.0, 1.0))
    assert r.includes_one and r.missing == ()


def test_an_arm_twice_as_fast_in_every_seed_gives_two_with_a_point_interval():
    reference = {0: 30.0, 1: 55.0, 2: 41.0}
    r = paired_ratio(reference, {s: t / 2 for s, t in reference.items()})
    assert r.ratios == pytest.approx({0: 2.0, 1: 2.0, 2: 2.0})
    assert r.ci == pytest.approx((2.0, 2.0)) and not r.includes_one
    assert r.describe() == "2.00x [2.00, 2.00]"


def test_one_pair_is_described_without_an_interval():
    r = paired_ratio({7: 13.3, 71: 13.1}, {7: 9.7, 71: None})
    assert r.ratios == pytest.approx({7: 13.3 / 9.7}) and r.missing == (71,)
    assert r.describe() == "1.37x, one pair: no CI (1 of 2 pairs)"


def test_two_seeds_ratios_one_and_four_bootstrap_to_the_whole_range():
    # Resampling two values: {1,1} -> 1 (p 1/4), {1,4} -> geometric mean 2 (p 1/2), {4,4} -> 4 (p 1/4);
    # the 2.5th and 97.5th percentiles fall inside the first and last quarters: [1, 4]. Estimate sqrt(4) = 2.
    r = paired_ratio({0: 10.0, 1: 40.0}, {0: 10.0, 1: 10.0})
    assert r.estimate == pytest.approx(2.0)
    assert r.ci == pytest.approx((1.0, 4.0))
    assert r.includes_one and r.describe().endswith("CI includes 1")


def test_seeds_without_a_value_are_left_out_and_listed():
    r = paired_ratio({0: 10.0, 1: 20.0, 2: None}, {0: 5.0, 1: 10.0, 2: 8.0, 3: 4.0})
    assert r.ratios == {0: 2.0, 1: 2.0} and r.missing == (2, 3)
    assert r.describe() == "2.00x [2.00, 2.00] (2 of 4 pairs)"
    none = paired_ratio({0: None}, {0: 5.0})
    assert none.estimate is None and none.ci is None and none.includes_one is None and none.describe() == "n/a"


def test_the_ratio_reads_the_same_both_ways():
    a, b = {0: 10.0, 1: 30.0, 2: 20.0}, {0: 20.0, 1: 15.0, 2: 10.0}
    assert paired_ratio(a, b).estimate == pytest.approx(1 / paired_ratio(b, a).estimate)


def test_bootstrap_is_seeded_and_takes_another_statistic():
    values = [1.0, 2.0, 3.0, 10.0]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    low, high = bootstrap_ci(values, lambda s: s.mean(axis=1), resamples=20_000)
    assert low < np.mean(values) < high
    assert 1.0 <= low and high <= 10.0
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        geometric_mean([1.0, 0.0])


def test_proportion_half_width():
    # 0.8 on 600 examples: 1.96 x sqrt(0.16 / 600) = 0.0320
    assert proportion_ci_half_width(0.8, 600) == pytest.approx(1.959964 * math.sqrt(0.16 / 600))
    assert proportion_ci_half_width(0.8, 600) == pytest.approx(0.0320, abs=1e-4)
    assert proportion_ci_half_width(1.0, 10) == 0.0
