"""Tail figures (p99 TTFT, TPOT, E2E): pooled over the requests of each arm, intervals by
resampling blocks.

A per-run p99 is a noisy figure and an average of them is not a p99. For a co-located
group G, tenant t and tail figure m, the estimate is

    p99(requests of t in G, pooled over the blocks) / p99(requests of t alone, pooled)

over the blocks where both arms completed; requests that are not ok count as +inf
(censoring, `reports.request_figures`). The interval is a paired block bootstrap: resample
the block indices with replacement, the same indices for both arms, recompute both pooled
p99s and their log ratio; the percentile interval of those, and one-sided p-values
``(1 + #{L <= c}) / (B + 1)`` (and ``>= c``) against ``c = log(1 + margin)``. It needs at
least ``MIN_BLOCKS`` blocks; with fewer the figure is "not established (too few blocks for
a tail)". numpy with a fixed seed per cell, so a report is reproducible.

Only the top of each block matters for a p99: a resample holds at most ``n x max n_b``
requests, so its p99 lies within the top ``ceil(0.01 x n x max n_b) + 2`` values of some
block it contains; each block keeps only those (``_truncate``), and the weighted order
statistics of the resample are read from the cumulative weights of that short array.

The requests are read with the lazy scans of `reports.scan`, one co-located group (and the
baselines of its tenants) at a time, so memory stays flat as the campaign grows.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
from scipy.stats import norm

from reports.metrics import QUANTILES, TAIL_METRICS
from reports.paired import POWER, CellEstimate
from reports.request_figures import _derived
from reports.scan import REQUEST_COLUMNS, scan_files, windows_frame
from rundir.reader import RunDir
from rundir.schema import REQUEST_SCHEMA

MIN_BLOCKS = 5
BOOTSTRAP = 2000
SEED = 20261124
BOOT = "pooled p99, block bootstrap"
TOO_FEW = "too few blocks for a tail"
_CHUNK = 250

Blocks = list[np.ndarray]  # one array of request values per block, in block order


def _truncate(blocks: Blocks, q: float, n_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top values of every block, descending; their block labels; each block's size)."""
    keep = int(math.ceil((1.0 - q) * n_max)) + 2
    vals, labels = [], []
    for b, x in enumerate(blocks):
        top = np.sort(x)[::-1][:keep]
        vals.append(top)
        labels.append(np.full(top.size, b))
    v = np.concatenate(vals) if vals else np.empty(0)
    lab = np.concatenate(labels) if labels else np.empty(0, dtype=int)
    order = np.argsort(-v, kind="stable")
    return v[order], lab[order], np.array([x.size for x in blocks], dtype=float)


def pooled_quantiles(blocks: Blocks, weights: np.ndarray, q: float) -> np.ndarray:
    """The linear-interpolation ``q`` quantile of the multiset "block b, ``weights[k, b]``
    times" for each row k of ``weights``; +inf values allowed; NaN for an empty multiset."""
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    sizes = np.array([x.size for x in blocks], dtype=float)
    n_max = int((w @ sizes).max()) if w.size else 0
    top, lab, sizes = _truncate(blocks, q, max(n_max, 1))
    out = np.full(w.shape[0], np.nan)
    if top.size == 0:
        return out
    for s in range(0, w.shape[0], _CHUNK):
        ws = w[s:s + _CHUNK]
        total = ws @ sizes
        cum = np.cumsum(ws[:, lab], axis=1)
        h = (total - 1.0) * q
        j = np.floor(h)
        f = h - j
        r1 = total - 1.0 - j  # rank from the top of x_j (0 = the largest)
        i1 = np.argmax(cum > r1[:, None], axis=1)
        i2 = np.argmax(cum > np.maximum(r1 - 1.0, 0.0)[:, None], axis=1)
        v1, v2 = top[i1], top[i2]
        with np.errstate(invalid="ignore"):
            val = np.where(f == 0, v1, np.where(np.isinf(v2), v2, v1 + f * (v2 - v1)))
        out[s:s + _CHUNK] = np.where(total > 0, val, np.nan)
    return out


def _log_ratio(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(c) - np.log(a)


def tail_estimate(coloc: Blocks, alone: Blocks, q: float, level: float, margin: float,
                  key: str = "", n_boot: int = BOOTSTRAP) -> CellEstimate:
    """Pooled-quantile log ratio of two arms with the same blocks (paired block bootstrap)."""
    n = len(coloc)
    assert len(alone) == n
    one = np.ones((1, n))
    est = float(_log_ratio(pooled_quantiles(coloc, one, q), pooled_quantiles(alone, one, q))[0])
    est_or_none = None if math.isnan(est) else est
    if n < MIN_BLOCKS:
        return CellEstimate(n, TOO_FEW, est_or_none)
    rng = np.random.default_rng(SEED ^ zlib.crc32(key.encode()))
    idx = rng.integers(0, n, size=(n_boot, n))
    w = np.zeros((n_boot, n))
    np.add.at(w, (np.arange(n_boot)[:, None], idx), 1.0)
    boot = _log_ratio(pooled_quantiles(coloc, w, q), pooled_quantiles(alone, w, q))
    boot = np.sort(boot[~np.isnan(boot)])
    b = boot.size
    if b == 0 or est_or_none is None:
        return CellEstimate(n, BOOT, est_or_none)
    a = 1.0 - level
    lo = float(boot[min(b - 1, int(math.floor(a / 2 * b)))])
    hi = float(boot[max(0, int(math.ceil((1 - a / 2) * b)) - 1)])
    c = math.log1p(margin)
    p_h = (1.0 + float((boot <= c).sum())) / (b + 1.0)
    p_w = (1.0 + float((boot >= c).sum())) / (b + 1.0)
    fin = boot[np.isfinite(boot)]
    se = float(fin.std(ddof=1)) if fin.size > 1 else None
    z = float(norm.ppf(0.5 + level / 2) + norm.ppf(POWER))
    mde = None if se is None else math.expm1(z * se)
    censored = int(np.isinf(boot).sum())
    return CellEstimate(n, BOOT, est, lo, hi, se, None, p_h, p_w, mde, 0, censored)


# ---- reading the requests --------------------------------------------------------------------


def _group_requests(run: RunDir, experiments: Sequence[str], tenants: Sequence[str],
                    engine: str) -> pl.DataFrame:
    """experiment_id, tenant and the censored latencies of in-window requests (lazy scan)."""
    wanted = set(experiments)
    files = [e.file("requests.parquet") for e in run.completed
             if e.id in wanted and e.file("requests.parquet").is_file()]
    win = windows_frame(run).filter(pl.col("experiment_id").is_in(list(wanted))).lazy()
    cols = [f"{m.rsplit('_', 2)[0]}_censored_s" for m in TAIL_METRICS]
    lf = (
        scan_files(files, dict(REQUEST_SCHEMA), REQUEST_COLUMNS)
        .filter(pl.col("in_window").fill_null(False) & pl.col("tenant").is_in(list(tenants)))
        .join(win, on=["experiment_id", "tenant"], how="inner")
        .pipe(_derived)
        .select("experiment_id", "tenant", *cols)
    )
    return lf.collect(engine=engine)  # type: ignore[call-overload]


def _block(parts: Mapping[Any, pl.DataFrame], eid: str, col: str) -> np.ndarray:
    df = parts.get((eid,))
    return np.empty(0) if df is None else df[col].drop_nulls().to_numpy()


def tail_estimates(
    run: RunDir,
    pairs: Mapping[tuple[str, str], list[tuple[str, str]]],
    level: float,
    margin: float,
    metrics: Sequence[str] = TAIL_METRICS,
    engine: str = "streaming",
) -> dict[tuple[str, str, str], CellEstimate]:
    """(group_id, tenant, metric) -> estimate, for each co-located group x tenant of ``pairs``:
    (group_id, tenant) -> [(co-located experiment id, alone experiment id)] per block."""
    out: dict[tuple[str, str, str], CellEstimate] = {}
    by_group: dict[str, list[str]] = {}
    for gid, tenant in pairs:
        by_group.setdefault(gid, []).append(tenant)
    for gid, tenants in by_group.items():
        ids = {x for t in tenants for pair in pairs[(gid, t)] for x in pair}
        req = _group_requests(run, sorted(ids), tenants, engine)
        for t in tenants:
            mine = req.filter(pl.col("tenant") == t)
            parts = mine.partition_by("experiment_id", as_dict=True)
            for m in metrics:
                col = f"{m.rsplit('_', 2)[0]}_censored_s"
                q = QUANTILES[m.rsplit("_", 2)[1]]

                bp = [(_block(parts, c, col), _block(parts, a, col)) for c, a in pairs[(gid, t)]]
                bp = [(c, a) for c, a in bp if c.size and a.size]
                if not bp:
                    continue
                out[(gid, t, m)] = tail_estimate([c for c, _ in bp], [a for _, a in bp], q,
                                                 level, margin, key=f"{gid}/{t}/{m}")
    return out
