"""Summaries over seeds: mean, sample sd, a t-based 95 % confidence interval, Welch's t-test."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    sd: float  # sample sd (n - 1); nan for one value
    low: float  # the 95 % confidence interval of the mean: mean -+ t(0.975, n - 1) * sd / sqrt(n)
    high: float


def summarize(values) -> Summary:
    from scipy import stats

    x = np.asarray(values, dtype=float)
    n = len(x)
    if n < 2:
        return Summary(n, float(x.mean()) if n else math.nan, math.nan, math.nan, math.nan)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + LEVEL) / 2, n - 1)) * sd / math.sqrt(n)
    mean = float(x.mean())
    return Summary(n, mean, sd, mean - half, mean + half)


def welch_p(a, b) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances) that a and b have the same mean; nan where it
    is undefined (fewer than two values on a side, or no spread on either)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2 or (a.std() == 0 and b.std() == 0):
        return math.nan
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def percent(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value * 100:.{digits}f} %"


def mean_sd(s: Summary) -> str:
    """`85.10 % ± 0.20` (sd in points of accuracy), or the one value with `(n = 1)`."""
    if s.n < 2:
        return f"{percent(s.mean)} (n = 1)"
    return f"{percent(s.mean)} ± {s.sd * 100:.2f}"


def interval(s: Summary) -> str:
    return "n/a (n = 1)" if s.n < 2 else f"[{s.low * 100:.2f}, {s.high * 100:.2f}] %"
