import math

import numpy as np
import pytest

from ferlab.stats import summarize, welch


def test_summary_by_hand():
    s = summarize([0.6, 0.7, 0.8])
    assert (s.n, s.mean, s.min, s.max) == (3, pytest.approx(0.7), 0.6, 0.8)
    # sample variance: ((-.1)^2 + 0 + .1^2) / (3 - 1) = 0.01
    assert s.var == pytest.approx(0.01) and s.std == pytest.approx(0.1)
    assert s.sem == pytest.approx(0.1 / math.sqrt(3))
    one = summarize([0.5])
    assert math.isnan(one.std) and math.isnan(one.sem) and one.mean == 0.5
    with pytest.raises(ValueError):
        summarize([])


def test_welch_by_hand():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0]
    c = welch(a, b)
    # means 2 and 5; var/n: 1/3 and (20/3)/4 = 5/3; se = sqrt(2); t = 3/sqrt(2)
    # df = (2)^2 / ((1/3)^2/2 + (5/3)^2/3) = 4 / (1/18 + 25/27) = 4.0754...
    assert c.diff == pytest.approx(3.0)
    assert c.df == pytest.approx(4 / (1 / 18 + 25 / 27))
    from scipy import stats

    assert c.p == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue)
    half = stats.t.ppf(0.975, c.df) * math.sqrt(2)
    assert (c.low, c.high) == pytest.approx((3 - half, 3 + half))
    assert math.isnan(welch([1.0], [2.0, 3.0]).p)
    same = welch([0.5, 0.5], [0.5, 0.5])
    assert same.p == 1.0 and same.diff == 0


def test_welch_detects_a_real_difference():
    rng = np.random.default_rng(0)
    assert welch(rng.normal(0.60, 0.01, 8), rng.normal(0.70, 0.01, 8)).p < 1e-6


def test_welch_on_constant_samples_ignores_rounding_noise():
    v = 0.2449150181108944  # three copies average to a value one ulp away from v
    same = welch([v] * 3, [v] * 2)
    assert (same.diff, same.low, same.high, same.p) == (0.0, 0.0, 0.0, 1.0)
    apart = welch([v] * 3, [0.16] * 2)
    assert apart.p == 0.0 and apart.diff == pytest.approx(0.16 - v)
