"""The experiments' statistics against hand computations."""

from __future__ import annotations

import math

import pytest

from p2pgan.experiments.statistics import mean_se, paired_test

pytestmark = pytest.mark.timeout(30)


def test_mean_and_standard_error_by_hand() -> None:
    # values 1, 2, 6: mean 3, sample variance (4 + 1 + 9) / 2 = 7, s.e. sqrt(7 / 3)
    m, se = mean_se([1.0, 2.0, 6.0])
    assert m == pytest.approx(3.0) and se == pytest.approx(math.sqrt(7 / 3))
    assert mean_se([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError):
        mean_se([])


def test_paired_t_test_by_hand() -> None:
    # differences 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.4641; one-sided p (2 dof) = 0.03709
    a, b = [11.0, 22.0, 33.0], [10.0, 20.0, 30.0]
    res = paired_test(a, b, alternative="greater")
    assert res["t"] == pytest.approx(2 * math.sqrt(3)) and res["p"] == pytest.approx(0.037089, abs=1e-5)
    assert res["significant"] and res["n"] == 3 and res["mean_difference"] == pytest.approx(2.0)
    # the other direction is not significant, two-sided doubles the p-value
    assert not paired_test(a, b, alternative="less")["significant"]
    assert paired_test(a, b, alternative="two-sided")["p"] == pytest.approx(2 * 0.037089, abs=1e-5)
    # no spread in the differences: t undefined; equal samples are "no difference", never significant
    same = paired_test([1.0, 2.0], [1.0, 2.0])
    assert math.isnan(same["t"]) and same["p"] == 1.0 and not same["significant"]
    with pytest.raises(ValueError):
        paired_test([1.0], [2.0])
