"""Paired analysis of interference: log ratios per block, t intervals over the pairs.

The unit of replication is the experiment. Within a block (a repetition), a tenant gets the
same arrival trace alone and co-located, so for a co-located group G, tenant t and figure
m, each block r where both arms completed gives one pair::

    d_r = log(m(G, t, r) / m(t alone, r))

and the arrival-induced variance cancels in the difference. Everything here works on the
*slowdown* scale: ``d`` for latencies, ``-d`` for figures where higher is better
(throughput, goodput, attainment), so that above 0 is always worse. With ``c = log(1 +
margin)``:

* **paired t** (a cell's own variance): estimate ``exp(mean d)``, interval
  ``exp(mean d ± t_{1-a/2, n-1} sd / sqrt(n))``, one-sided p-values of ``mean d > c``
  (hurts) and ``mean d < c`` (shares well) from the same t statistic.
* **pooled** (few pairs): the residual variance of one figure pooled over the campaign's
  cells, ``s² = Σ(n_c - 1) s_c² / Σ(n_c - 1)``, ``df = Σ(n_c - 1)``; a cell's interval is
  ``mean_c ± t_df s / sqrt(n_c)``. This is ordinary least squares of ``d`` on cell dummies
  (tests/unit/test_reports_paired.py checks it against statsmodels). Only cells whose
  pairs are all finite enter the pool.
* **censored** cells (a pair with an infinite ratio: a percentile that is infinite because
  requests failed, or a throughput of zero): the mean is not defined, so the estimate is the
  median of ``d``, the interval the distribution-free one for a median (order statistics,
  binomial), and the p-values those of the sign test. A pair where both arms are infinite
  (or both zero) is undefined and left out (``undefined`` counts them).
* **minimum detectable effect**: ``exp((t_{1-a/2, df} + t_{0.8, df}) σ / sqrt(n)) - 1``
  with σ the residual sd the interval used: the smallest slowdown this design finds with
  80% power at this level.

scipy.stats gives every distribution.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from scipy.stats import binom
from scipy.stats import t as student_t

from reports.settings import POOL_BELOW

PAIRED = "paired t"
POOLED = "paired t, pooled variance"
SIGN = "sign test (censored)"
NO_TEST = "none"
POWER = 0.8
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class CellEstimate:
    """One cell's estimate on the slowdown log scale (exp() of these are ratios)."""

    n: int  # pairs used
    method: str
    log_est: float | None
    log_lo: float | None = None
    log_hi: float | None = None
    sd: float | None = None  # the residual sd the interval used
    df: float | None = None
    p_hurts: float | None = None  # one-sided: slowdown above 1 + margin
    p_well: float | None = None  # one-sided: slowdown below 1 + margin
    mde: float | None = None
    undefined: int = 0  # pairs left out: both arms infinite (or both zero)
    censored: int = 0  # pairs with an infinite ratio

    @property
    def log_half_width(self) -> float | None:
        if self.log_lo is None or self.log_hi is None:
            return None
        return (self.log_hi - self.log_lo) / 2


def log_ratios(coloc: Sequence[float | None], alone: Sequence[float | None]) -> np.ndarray:
    """``log(coloc / alone)`` per pair; +inf where only the co-located arm is infinite (or only
    the alone arm is zero), -inf the other way round, NaN where the ratio is undefined (both
    infinite, both zero, a missing or negative figure)."""
    c = np.array([np.nan if v is None else v for v in coloc], dtype=float)
    a = np.array([np.nan if v is None else v for v in alone], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        lc = np.where(c >= 0, np.log(np.where(c >= 0, c, np.nan)), np.nan)
        la = np.where(a >= 0, np.log(np.where(a >= 0, a, np.nan)), np.nan)
        d = lc - la  # inf - inf and -inf - -inf are NaN: undefined
    return d


def _p_values(z: float, df: float) -> tuple[float, float]:
    return float(student_t.sf(z, df)), float(student_t.cdf(z, df))


def t_estimate(mean: float, sd: float, n: int, df: float, level: float, c: float,
               method: str = PAIRED, undefined: int = 0) -> CellEstimate:
    """The t interval, one-sided p-values against ``c`` and the MDE of a cell's mean."""
    q = float(student_t.ppf(0.5 + level / 2, df))
    se = sd / math.sqrt(n)
    if se == 0:
        p_h, p_w = (0.0, 1.0) if mean > c else ((1.0, 0.0) if mean < c else (1.0, 1.0))
    else:
        p_h, p_w = _p_values((mean - c) / se, df)
    mde = math.expm1((q + float(student_t.ppf(POWER, df))) * se)
    return CellEstimate(n, method, mean, mean - q * se, mean + q * se, sd, df, p_h, p_w, mde,
                        undefined)


def sign_estimate(d: np.ndarray, level: float, c: float, undefined: int = 0) -> CellEstimate:
    """Median, distribution-free median interval and sign-test p-values (``d`` may hold
    infinities; no NaN)."""
    x = np.sort(d)
    n = int(x.size)
    censored = int(np.isinf(x).sum())
    mid = n // 2
    if n % 2:
        est = float(x[mid])
    else:
        lo2, hi2 = float(x[mid - 1]), float(x[mid])
        est = math.nan if math.isinf(lo2) and math.isinf(hi2) and lo2 != hi2 else (
            lo2 if lo2 == hi2 else (lo2 + hi2) / 2)
    a = 1.0 - level
    # the largest k with P(B <= k - 1) <= a/2: [x_(k), x_(n-k+1)] covers the median
    k = 0
    while k < n // 2 and binom.cdf(k, n, 0.5) <= a / 2:
        k += 1
    lo, hi = (float(x[k - 1]), float(x[n - k])) if k >= 1 else (-math.inf, math.inf)
    above, below = int((x > c).sum()), int((x < c).sum())
    p_h = float(binom.sf(above - 1, n, 0.5))  # P(B >= above)
    p_w = float(binom.sf(below - 1, n, 0.5))
    return CellEstimate(n, SIGN, None if math.isnan(est) else est, lo, hi, None, None,
                        p_h, p_w, None, undefined, censored)


def pooled_variance(cells: Sequence[np.ndarray]) -> tuple[float | None, int]:
    """(pooled residual variance, its df) over cells of finite pairs (cells of one pair add
    nothing); (None, 0) when no cell has two pairs."""
    ss, df = 0.0, 0
    for d in cells:
        if d.size >= 2:
            ss += float(((d - d.mean()) ** 2).sum())
            df += int(d.size) - 1
    return (ss / df, df) if df else (None, 0)


def _uses_pool(n: int, own_df: int, pool_df: int, pool: str) -> bool:
    if pool == "never" or pool_df == 0:
        return False
    if pool == "always":
        return True
    return n < POOL_BELOW and pool_df > own_df


def analyse_cells(
    cells: Mapping[K, np.ndarray], level: float, margin: float, pool: str = "auto"
) -> dict[K, CellEstimate]:
    """Every cell of ONE figure: slowdown log ratios per pair in, an estimate per cell out.

    ``pool`` is ``auto`` (a cell with fewer than ``POOL_BELOW`` pairs takes the pooled
    variance, when the pool has more degrees of freedom than the cell), ``always`` or
    ``never``.
    """
    c = math.log1p(margin)
    clean: dict[K, np.ndarray] = {}
    undefined: dict[K, int] = {}
    for key, d in cells.items():
        d = np.asarray(d, dtype=float)
        undefined[key] = int(np.isnan(d).sum())
        clean[key] = d[~np.isnan(d)]
    finite = {k: d for k, d in clean.items() if d.size and np.isfinite(d).all()}
    s2, pool_df = pooled_variance(list(finite.values()))
    out: dict[K, CellEstimate] = {}
    for key, d in clean.items():
        n, u = int(d.size), undefined[key]
        if n == 0:
            out[key] = CellEstimate(0, NO_TEST, None, undefined=u)
        elif key not in finite:
            out[key] = sign_estimate(d, level, c, u)
        elif _uses_pool(n, n - 1, pool_df, pool):
            assert s2 is not None
            out[key] = t_estimate(float(d.mean()), math.sqrt(s2), n, pool_df, level, c, POOLED, u)
        elif n >= 2:
            out[key] = t_estimate(float(d.mean()), float(d.std(ddof=1)), n, n - 1, level, c,
                                  PAIRED, u)
        else:
            out[key] = CellEstimate(1, NO_TEST, float(d[0]), undefined=u)
    return out


def two_sided_p(est: CellEstimate) -> float | None:
    """The smaller one-sided p-value, doubled: the test of "slowdown = 1 + margin" whose
    rejection at ``1 - level`` is the interval excluding 1 + margin."""
    if est.p_hurts is None or est.p_well is None:
        return None
    return min(1.0, 2.0 * min(est.p_hurts, est.p_well))
