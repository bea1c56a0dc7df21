"""reports.stats against hand-computed values (and SciPy's, copied here as constants or called)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import t as student_t

from reports.stats import (
    MeanCI,
    mean_ci,
    percentile,
    ratio_ci,
    ratio_ci_of,
    t_quantile,
)


@pytest.mark.parametrize(
    ("df", "expected"),
    [
        (1, 12.706204736174694),
        (2, 4.302652729749462),
        (3, 3.1824463052837078),
        (10, 2.228138851986274),
        (30, 2.0422724563012378),
        (2.5, 3.5746548420036817),  # Welch's df is real-valued
        (1e6, 1.959966356814107),
        (math.inf, 1.959963984540054),  # the normal's
    ],
)
def test_t_quantile_matches_tables(df: float, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, rel=1e-9)


def test_t_quantile_is_symmetric_and_rejects_nonsense() -> None:
    assert t_quantile(0.025, 4) == pytest.approx(-t_quantile(0.975, 4))
    assert t_quantile(0.5, 7) == 0.0
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        t_quantile(0.9, 0)


@settings(max_examples=60, deadline=None)
@given(p=st.floats(0.001, 0.999), df=st.floats(0.5, 200))
def test_t_quantile_inverts_the_cdf(p: float, df: float) -> None:
    assert student_t.cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-9)


def test_percentiles_interpolate_linearly() -> None:
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([1, 2, 3, 4], 0.9) == pytest.approx(3.7)
    assert percentile([4, 1, 3, 2], 0.99) == pytest.approx(3.97)
    assert percentile([], 0.5) is None
    assert percentile([float("nan"), 5.0], 0.5) == 5.0


def test_mean_ci_by_hand() -> None:
    # mean 2, sd 1, half-width t(0.975, 2) / sqrt(3) = 4.302652729749462 / 1.7320508 = 2.4841377
    ci = mean_ci([1.0, 2.0, 3.0])
    assert (ci.n, ci.mean, ci.sd) == (3, 2.0, 1.0)
    assert ci.half_width == pytest.approx(2.4841377117503303)
    assert ci.lo == pytest.approx(2.0 - 2.4841377117503303)
    assert ci.too_wide  # 124% of the mean


def test_mean_ci_narrow_enough_to_rank() -> None:
    ci = mean_ci([99.0, 100.0, 101.0])  # half-width 2.48 = 2.5% of 100
    assert ci.rel_half_width == pytest.approx(0.024841377117503303)
    assert not ci.too_wide


def test_mean_ci_with_one_or_no_value() -> None:
    one = mean_ci([5.0])
    assert (one.n, one.mean, one.lo, one.hi) == (1, 5.0, None, None)
    assert one.too_wide
    assert mean_ci([]) == MeanCI(0, None, None, None, None)
    assert mean_ci([float("nan"), 3.0]).n == 1


def test_ratio_ci_by_hand() -> None:
    # A = [2.0, 2.2], B = [1.0, 1.1]: r = 2.1 / 1.05 = 2
    # a = 0.02 / (2 * 2.1^2) = 0.00226757, b = 0.005 / (2 * 1.05^2) = 0.00226757
    # se = sqrt(a + b) = 0.0673435, df = (a + b)^2 / (a^2 + b^2) = 2, t = 4.3026527
    # CI = 2 * exp(+-4.3026527 * 0.0673435) = [1.49689, 2.67220]
    ci = ratio_ci_of([2.0, 2.2], [1.0, 1.1])
    assert ci.ratio == pytest.approx(2.0)
    assert ci.df == pytest.approx(2.0)
    assert ci.lo == pytest.approx(1.4968927710914197)
    assert ci.hi == pytest.approx(2.67220209573429)
    assert ci.contains_one is False


def test_ratio_ci_needs_two_repetitions_and_a_baseline() -> None:
    assert ratio_ci_of([2.0], [1.0, 1.1]).lo is None
    assert ratio_ci_of([2.0], [1.0, 1.1]).ratio == pytest.approx(2 / 1.05)
    assert ratio_ci(1.0, 0.1, 3, 0.0, 0.1, 3).ratio is None
    assert ratio_ci(None, None, 0, 1.0, 0.1, 3).ratio is None
    same = ratio_ci(2.0, 0.0, 3, 1.0, 0.0, 3)  # no spread: a point
    assert (same.lo, same.hi) == (2.0, 2.0)


def test_ratio_ci_of_equal_runs_contains_one() -> None:
    ci = ratio_ci_of([1.0, 1.1, 0.9], [1.05, 0.95, 1.0])
    assert ci.contains_one


@settings(max_examples=60, deadline=None)
@given(
    a=st.lists(st.floats(0.1, 100), min_size=2, max_size=8),
    b=st.lists(st.floats(0.1, 100), min_size=2, max_size=8),
)
def test_ratio_ci_is_symmetric_on_the_log_scale(a: list[float], b: list[float]) -> None:
    ci = ratio_ci_of(a, b)
    assert ci.ratio is not None and ci.lo is not None and ci.hi is not None
    assert ci.lo <= ci.ratio <= ci.hi
    assert math.log(ci.ratio) - math.log(ci.lo) == pytest.approx(
        math.log(ci.hi) - math.log(ci.ratio), rel=1e-6, abs=1e-9
    )
    inv = ratio_ci_of(b, a)
    assert inv.ratio == pytest.approx(1 / ci.ratio)
    assert inv.lo == pytest.approx(1 / ci.hi)
