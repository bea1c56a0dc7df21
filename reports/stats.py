"""The statistics of the reports, in numpy and scipy.stats, so they can be checked by hand.

* Percentiles are linear interpolation between order statistics (numpy's default,
  Polars' ``interpolation="linear"``): p50 of [1, 2, 3, 4] is 2.5, p90 is 3.7.
* A mean's 95% confidence interval is the Student t interval over repetitions:
  ``mean ± t(0.975, n-1) * sd / sqrt(n)`` with the sample standard deviation (ddof 1).
* Two unpaired sets of runs (run B against run A in ``cotenant compare``, where the
  experiments were not paired by construction) get ``welch_log_ratio``: Welch's t on the
  log figures, ``exp(mean log b - mean log a)`` with the Welch-Satterthwaite df.
* ``ratio_ci`` is the *old* unpaired analysis of interference (the ratio of two arithmetic
  means with a delta-method interval). The reports no longer use it: interference is paired
  (`reports.paired`); it stays for benchmarks/stats_coverage.py, which sets the two side by
  side. It is the ratio of two means, ``mean_a / mean_b``, with its interval on the
  log scale by the delta method, with Welch-Satterthwaite degrees of freedom::

      r = mA / mB
      a = sA² / (nA mA²),  b = sB² / (nB mB²)          (squared relative standard errors)
      se = sqrt(a + b),  df = (a + b)² / (a² / (nA-1) + b² / (nB-1))
      CI = r * exp(± t(0.975, df) * se)

  It needs at least two repetitions on each side and positive means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.stats import t as _t

LEVEL = 0.95
# a CI whose half-width is above this share of its mean is too wide to rank on
MAX_REL_HALF_WIDTH = 0.10


# ---- Student t quantile (scipy.stats) -------------------------------------------------------


@lru_cache(maxsize=4096)
def _t_quantile(p: float, df: float) -> float:
    return float(_t.ppf(p, df))


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t (``scipy.stats.t.ppf``): ``t_quantile(0.975, 2) == 4.3027``.

    ``df`` is real-valued (Welch's degrees of freedom are); ``math.inf`` gives the normal's.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0 or math.isnan(df):
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    return _t_quantile(float(p), float(df))


# ---- intervals --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeanCI:
    n: int
    mean: float | None
    sd: float | None
    lo: float | None
    hi: float | None

    @property
    def half_width(self) -> float | None:
        return None if self.lo is None or self.hi is None else (self.hi - self.lo) / 2

    @property
    def rel_half_width(self) -> float | None:
        hw = self.half_width
        if hw is None or self.mean is None or self.mean == 0:
            return None
        return hw / abs(self.mean)

    @property
    def too_wide(self) -> bool:
        """True where the interval cannot rank: one repetition, or half-width > 10% of the mean."""
        rel = self.rel_half_width
        if self.n < 2:
            return True
        if rel is None:
            return self.mean == 0 and (self.half_width or 0) > 0
        return rel > MAX_REL_HALF_WIDTH


def t_half_width(sd: float, n: int, level: float = LEVEL) -> float:
    return t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)


def mean_ci(values: list[float] | np.ndarray, level: float = LEVEL) -> MeanCI:
    """Mean and t interval of repetition values; nulls/NaN are left out."""
    x = np.asarray([v for v in np.asarray(values, dtype=float) if not math.isnan(v)])
    n = int(x.size)
    if n == 0:
        return MeanCI(0, None, None, None, None)
    m = float(x.mean())
    if n == 1:
        return MeanCI(1, m, None, None, None)
    sd = float(x.std(ddof=1))
    hw = t_half_width(sd, n, level)
    return MeanCI(n, m, sd, m - hw, m + hw)


@dataclass(frozen=True)
class RatioCI:
    ratio: float | None
    lo: float | None
    hi: float | None
    df: float | None

    @property
    def contains_one(self) -> bool | None:
        if self.lo is None or self.hi is None:
            return None
        return self.lo <= 1.0 <= self.hi


def ratio_ci(
    mean_a: float | None,
    sd_a: float | None,
    n_a: int,
    mean_b: float | None,
    sd_b: float | None,
    n_b: int,
    level: float = LEVEL,
) -> RatioCI:
    """``mean_a / mean_b`` with a log-scale delta-method t interval (module docstring)."""
    if mean_a is None or mean_b is None or mean_b == 0 or _nan(mean_a) or _nan(mean_b):
        return RatioCI(None, None, None, None)
    r = mean_a / mean_b
    if (
        n_a < 2
        or n_b < 2
        or sd_a is None
        or sd_b is None
        or _nan(sd_a)
        or _nan(sd_b)
        or mean_a <= 0
        or mean_b <= 0
    ):
        return RatioCI(r, None, None, None)
    a = sd_a**2 / (n_a * mean_a**2)
    b = sd_b**2 / (n_b * mean_b**2)
    if a + b == 0:
        return RatioCI(r, r, r, math.inf)
    df = (a + b) ** 2 / (a**2 / (n_a - 1) + b**2 / (n_b - 1))
    se = math.sqrt(a + b)
    t = t_quantile(0.5 + level / 2, df)
    return RatioCI(r, r * math.exp(-t * se), r * math.exp(t * se), df)


def ratio_ci_of(a: list[float], b: list[float], level: float = LEVEL) -> RatioCI:
    """``ratio_ci`` from the repetition values themselves."""
    ca, cb = mean_ci(a, level), mean_ci(b, level)
    return ratio_ci(ca.mean, ca.sd, ca.n, cb.mean, cb.sd, cb.n, level)


@dataclass(frozen=True)
class LogRatio:
    """``b / a`` from unpaired runs, on the log scale (exp() gives the ratio)."""

    n_a: int
    n_b: int
    log_est: float | None
    log_lo: float | None = None
    log_hi: float | None = None
    se: float | None = None
    df: float | None = None


def welch_log_ratio(b: list[float] | np.ndarray, a: list[float] | np.ndarray,
                    level: float = LEVEL) -> LogRatio:
    """Welch's t interval of ``mean log b - mean log a`` (values must be positive and
    finite; others are left out). Needs two values on each side for an interval."""
    lb = np.log([v for v in np.asarray(b, dtype=float) if v > 0 and math.isfinite(v)])
    la = np.log([v for v in np.asarray(a, dtype=float) if v > 0 and math.isfinite(v)])
    na, nb = int(la.size), int(lb.size)
    if na == 0 or nb == 0:
        return LogRatio(na, nb, None)
    est = float(lb.mean() - la.mean())
    if na < 2 or nb < 2:
        return LogRatio(na, nb, est)
    va, vb = float(la.var(ddof=1)) / na, float(lb.var(ddof=1)) / nb
    se = math.sqrt(va + vb)
    if se == 0:
        return LogRatio(na, nb, est, est, est, 0.0, math.inf)
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    q = t_quantile(0.5 + level / 2, df)
    return LogRatio(na, nb, est, est - q * se, est + q * se, se, df)


def percentile(values: list[float] | np.ndarray, q: float) -> float | None:
    """Linear-interpolation percentile (``q`` in [0, 1]); None for no values."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return None
    return float(np.quantile(x, q))


def _nan(v: float) -> bool:
    return isinstance(v, float) and math.isnan(v)
