"""reports.paired against hand-computed values, scipy and statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats as sps

from reports.paired import (
    NO_TEST,
    PAIRED,
    POOLED,
    SIGN,
    analyse_cells,
    log_ratios,
    pooled_variance,
    sign_estimate,
    t_estimate,
    two_sided_p,
)

C = math.log(1.1)


def test_log_ratios_and_infinities() -> None:
    d = log_ratios([2.0, math.inf, 1.0, math.inf, 0.0, 0.0, None, 3.0],
                   [1.0, 1.0, math.inf, math.inf, 1.0, 0.0, 1.0, -1.0])
    assert d[0] == pytest.approx(math.log(2))
    assert d[1] == math.inf  # co-located infinite, alone finite: an infinite slowdown
    assert d[2] == -math.inf
    assert math.isnan(d[3])  # both infinite: undefined
    assert d[4] == -math.inf  # a throughput of zero co-located
    assert math.isnan(d[5]) and math.isnan(d[6]) and math.isnan(d[7])


def test_paired_t_by_hand() -> None:
    # co-located [2.0, 2.2, 2.6] against alone [1.0, 1.2, 1.25] in the same blocks
    d = np.log([2.0 / 1.0, 2.2 / 1.2, 2.6 / 1.25])
    est = analyse_cells({"cell": d}, 0.95, 0.10, "never")["cell"]
    mean, sd = d.mean(), d.std(ddof=1)
    hw = 4.302652729749462 * sd / math.sqrt(3)  # t(0.975, 2)
    assert est.method == PAIRED and est.n == 3 and est.df == 2
    assert est.log_est == pytest.approx(mean)
    assert est.log_lo == pytest.approx(mean - hw) and est.log_hi == pytest.approx(mean + hw)
    # one-sided p-values of the t test of mean d against log(1.1), as scipy computes them
    ref = sps.ttest_1samp(d, C, alternative="greater")
    assert est.p_hurts == pytest.approx(ref.pvalue)
    assert est.p_well == pytest.approx(sps.ttest_1samp(d, C, alternative="less").pvalue)
    assert two_sided_p(est) == pytest.approx(sps.ttest_1samp(d, C).pvalue)
    # minimum detectable effect: exp((t(.975, 2) + t(.8, 2)) sd / sqrt(3)) - 1
    assert est.mde == pytest.approx(math.exp((4.302652729749462 + 1.0606601717798212) * sd / math.sqrt(3)) - 1)


def test_interval_excludes_margin_iff_two_sided_p_below_alpha() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        d = rng.normal(rng.uniform(-0.2, 0.4), 0.1, rng.integers(2, 8))
        e = analyse_cells({0: d}, 0.95, 0.10, "never")[0]
        excludes = e.log_lo > C or e.log_hi < C  # type: ignore[operator]
        assert excludes == (two_sided_p(e) < 0.05)  # type: ignore[operator]


def test_pooled_equals_ols_on_cell_dummies() -> None:
    rng = np.random.default_rng(11)
    cells = {("s1", "a"): rng.normal(0.3, 0.1, 2), ("s1", "b"): rng.normal(0.0, 0.1, 3),
             ("s2", "a"): rng.normal(0.1, 0.1, 2), ("s2", "c"): rng.normal(0.5, 0.1, 4)}
    ests = analyse_cells(cells, 0.95, 0.10, "always")
    y = np.concatenate(list(cells.values()))
    keys = list(cells)
    x = np.zeros((y.size, len(keys)))
    row = 0
    for j, k in enumerate(keys):
        x[row:row + cells[k].size, j] = 1.0
        row += cells[k].size
    fit = sm.OLS(y, x).fit()
    ci = fit.conf_int(0.05)
    assert fit.df_resid == 1 + 2 + 1 + 3
    for j, k in enumerate(keys):
        e = ests[k]
        assert e.method == POOLED and e.df == fit.df_resid
        assert e.log_est == pytest.approx(fit.params[j])
        assert e.log_lo == pytest.approx(ci[j, 0]) and e.log_hi == pytest.approx(ci[j, 1])
        assert e.sd == pytest.approx(math.sqrt(fit.scale))
        # the one-sided test against log(1.1): OLS's t statistic of (beta_j - c)
        tt = fit.t_test((np.eye(len(keys))[j], C))
        assert e.p_hurts == pytest.approx(float(sps.t.sf(float(tt.tvalue.item()), fit.df_resid)))


def test_auto_pools_only_small_cells() -> None:
    rng = np.random.default_rng(5)
    cells = {"small": rng.normal(0.2, 0.1, 3), "big": rng.normal(0.0, 0.1, 6), "one": np.array([0.4])}
    e = analyse_cells(cells, 0.95, 0.10, "auto")
    assert e["small"].method == POOLED and e["small"].df == 2 + 5
    assert e["big"].method == PAIRED and e["big"].df == 5
    assert e["one"].method == POOLED and e["one"].n == 1  # one pair: the pool gives it an interval
    never = analyse_cells(cells, 0.95, 0.10, "never")
    assert never["one"].method == NO_TEST and never["one"].log_lo is None
    s2, df = pooled_variance([cells["small"], cells["big"], cells["one"]])
    assert df == 7 and s2 == pytest.approx(
        (2 * cells["small"].var(ddof=1) + 5 * cells["big"].var(ddof=1)) / 7)


def test_censored_cells_use_the_sign_test_and_stay_out_of_the_pool() -> None:
    cells = {"cens": np.array([math.inf, math.inf, math.inf, math.inf, math.inf, math.inf]),
             "mixed": np.array([0.2, math.inf, 0.3, np.nan]),
             "fine": np.array([0.1, 0.12, 0.09])}
    e = analyse_cells(cells, 0.95, 0.10, "always")
    c = e["cens"]
    assert c.method == SIGN and c.log_est == math.inf and c.censored == 6
    # 6 of 6 above log(1.1): P(B >= 6) = 1/64; the median interval [x_(1), x_(6)] (k = 1 at n = 6)
    assert c.p_hurts == pytest.approx(1 / 64) and c.log_lo == math.inf
    m = e["mixed"]
    assert m.method == SIGN and m.n == 3 and m.undefined == 1
    assert m.log_est == pytest.approx(0.3)  # median of 0.2, 0.3, inf
    assert (m.log_lo, m.log_hi) == (-math.inf, math.inf)  # three pairs: no distribution-free interval
    assert e["fine"].method == POOLED and e["fine"].df == 2  # the pool holds only the finite cell


def test_sign_estimate_interval_by_hand() -> None:
    # n = 10: P(B <= 1) = 11/1024 <= .025 < P(B <= 2) = 56/1024, so k = 2: [x_(2), x_(9)]
    x = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, math.inf])
    e = sign_estimate(x, 0.95, C)
    assert (e.log_lo, e.log_hi) == (0.1, 0.7)
    assert e.log_est == pytest.approx(0.375)
    above = int((x > C).sum())
    assert e.p_hurts == pytest.approx(sps.binom.sf(above - 1, 10, 0.5))


def test_zero_spread_is_a_point() -> None:
    e = t_estimate(0.0, 0.0, 4, 3, 0.95, C)
    assert e.log_lo == e.log_hi == 0.0 and e.p_well == 0.0 and e.p_hurts == 1.0
