"""Statistics over repeated runs: the report's Max/Min/Std/Variance/Mean, SEM, Welch tests."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); nan for a single run
    var: float  # sample variance (ddof=1)
    min: float
    max: float

    @property
    def sem(self) -> float:
        """Standard error of the mean."""
        return self.std / math.sqrt(self.n) if self.n > 1 else math.nan


def summarize(values: Sequence[float]) -> Summary:
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("summarize needs at least one value")
    std = float(x.std(ddof=1)) if x.size > 1 else math.nan
    return Summary(int(x.size), float(x.mean()), std, std**2, float(x.min()), float(x.max()))


@dataclass(frozen=True)
class Comparison:
    diff: float  # mean(b) - mean(a)
    low: float  # 95% confidence interval of the difference (Welch)
    high: float
    p: float  # two-sided Welch t-test p-value
    df: float


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Comparison:
    """Welch's unequal-variance t-test of mean(b) - mean(a), with its confidence interval."""
    from scipy import stats

    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = float(y.mean() - x.mean())
    if x.size < 2 or y.size < 2:
        return Comparison(diff, math.nan, math.nan, math.nan, math.nan)
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(vx + vy)
    # constant samples: means of equal floats can differ in the last bit, which a t-test
    # would read as a (noise-sized) effect with a meaningful-looking p
    eps = 1e-12 * max(1.0, float(np.abs(np.concatenate([x, y])).max()))
    if se <= eps:
        diff = 0.0 if abs(diff) <= eps else diff
        return Comparison(diff, diff, diff, 1.0 if diff == 0 else 0.0, math.inf)
    df = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    t = diff / se
    p = float(2 * stats.t.sf(abs(t), df))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return Comparison(diff, diff - half, diff + half, p, float(df))
