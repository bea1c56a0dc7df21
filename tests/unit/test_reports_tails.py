"""Tail figures: pooled quantiles of resampled blocks, the paired block bootstrap, censoring."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reports.tails import BOOT, MIN_BLOCKS, TOO_FEW, pooled_quantiles, tail_estimate


def _blocks(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.lognormal(0.0, 0.5, int(rng.integers(30, 400))) for _ in range(n)]


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_pooled_quantile_of_a_resample_is_numpys(q: float) -> None:
    blocks = _blocks(1, 6)
    rng = np.random.default_rng(2)
    w = rng.integers(0, 4, size=(40, 6)).astype(float)
    w[w.sum(axis=1) == 0, 0] = 1.0
    got = pooled_quantiles(blocks, w, q)
    for k in range(w.shape[0]):
        pooled = np.concatenate([np.tile(b, int(c)) for b, c in zip(blocks, w[k], strict=True)])
        assert got[k] == pytest.approx(np.quantile(pooled, q), rel=1e-12)


def test_pooled_quantile_with_censored_requests() -> None:
    # 99 fast requests and one that failed: position 0.99 * 99 = 98.01 lies between 1 and inf
    assert pooled_quantiles([np.r_[np.ones(99), math.inf]], np.ones((1, 1)), 0.99)[0] == math.inf
    # 100 fast and one failed: position 99 is exactly an ok request
    assert pooled_quantiles([np.r_[np.ones(100), math.inf]], np.ones((1, 1)), 0.99)[0] == 1.0
    assert pooled_quantiles([np.r_[np.ones(3), math.inf]], np.ones((1, 1)), 0.5)[0] == 1.0


def test_too_few_blocks_for_a_tail() -> None:
    a = _blocks(3, MIN_BLOCKS - 1)
    e = tail_estimate([x * 1.5 for x in a], a, 0.99, 0.95, 0.10)
    assert e.method == TOO_FEW and e.log_lo is None and e.p_hurts is None
    assert e.log_est == pytest.approx(math.log(1.5))  # the pooled ratio is still estimated


def test_the_bootstrap_pairs_blocks() -> None:
    a = _blocks(4, 8)
    # the co-located arm is each block's requests slowed by 1.3: every resample gives 1.3
    e = tail_estimate([x * 1.3 for x in a], a, 0.99, 0.95, 0.10, key="k")
    assert e.method == BOOT and e.n == 8
    assert math.exp(e.log_lo) == pytest.approx(1.3) and math.exp(e.log_hi) == pytest.approx(1.3)
    assert e.p_hurts == pytest.approx(1 / (2000 + 1))
    # unrelated arms: a real interval, reproducible (fixed seed per cell)
    b = _blocks(5, 8)
    e1 = tail_estimate(b, a, 0.99, 0.95, 0.10, key="k")
    e2 = tail_estimate(b, a, 0.99, 0.95, 0.10, key="k")
    assert e1 == e2 and e1.log_lo < e1.log_est < e1.log_hi  # type: ignore[operator]


def test_censored_co_located_arm_is_an_infinite_slowdown() -> None:
    a = _blocks(6, 6)
    c = [np.r_[x, np.full(x.size // 10, math.inf)] for x in a]  # 10% of requests failed
    e = tail_estimate(c, a, 0.99, 0.95, 0.10)
    assert e.log_est == math.inf and e.log_lo == math.inf and e.p_hurts < 0.01  # type: ignore[operator]
    both = tail_estimate(c, c, 0.99, 0.95, 0.10)
    assert both.log_est is None  # infinite in both arms: undefined
