"""Do the report's intervals and verdicts mean what they say? Simulated campaigns with known
interference, run through the report's own analysis code, old unpaired analysis beside it.

Each simulated campaign has one decoder tenant alone and co-located, ``n`` blocks, and a
per-run log figure (its TPOT p50, the primary figure)::

    log m(alone, r)      = mu + a_r + e_r1
    log m(co-located, r) = mu + log(theta) + a_r + e_r2
    a_r ~ N(0, s_a)  (the arrival realization: the same trace in both arms of block r)
    e   ~ N(0, s_e)  (everything else), s_a^2 + s_e^2 = sigma^2, s_a^2 = RHO sigma^2

with true interference theta in {1.0, 1.1, 1.3} and per-run log-sd sigma in {0.10, 0.15,
0.25}. The campaigns are written as experiment tables (the columns `reports.aggregate`
produces) and fed to ``reports.interference.interference_table`` itself, many campaigns
at a time as separate tenants (pooling off, one figure per campaign: the family of each is
one figure, so no correction), and once more campaign by campaign with six cells each and
the pooled variance on. The old analysis is ``reports.stats.ratio_ci`` (ratio of the two
arms' arithmetic means, delta-method Welch interval), judged by the same verdict rule.

It prints a table and ends with one line of JSON:
* coverage of the 95% intervals (goal 93-97%),
* how often a true 1.0 is called "hurts" (goal <= 5%) and a true 1.3 "shares well" (goal 0),
* the repetitions needed to establish a 10% effect at sigma 0.15 (an interval that excludes
  1.0 with 80% power: margin 0 for this one), paired against unpaired.

    python benchmarks/stats_coverage.py [--campaigns 500] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import numpy as np
import polars as pl

from reports.interference import interference_table
from reports.settings import ReportSettings
from reports.stats import ratio_ci
from reports.verdicts import HURTS, WELL, classify

RHO = 0.7  # share of the per-run variance that comes from the arrivals (shared in a block)
MU = math.log(0.02)  # 20 ms TPOT
THETAS = (1.0, 1.1, 1.3)
SIGMAS = (0.10, 0.15, 0.25)
BLOCKS = (3, 5, 10)
FIGURE = "tpot_p50_s"


def simulate(rng: np.random.Generator, k: int, n: int, theta: float, sigma: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """(alone, co-located): k campaigns x n blocks of the figure."""
    s_a, s_e = math.sqrt(RHO) * sigma, math.sqrt(1 - RHO) * sigma
    a = rng.normal(0.0, s_a, (k, n))
    alone = np.exp(MU + a + rng.normal(0.0, s_e, (k, n)))
    coloc = np.exp(MU + math.log(theta) + a + rng.normal(0.0, s_e, (k, n)))
    return alone, coloc


def table(alone: np.ndarray, coloc: np.ndarray, cells_per_campaign: int = 1) -> pl.DataFrame:
    """The experiment table of k campaigns: tenant ``t{i}`` alone and with ``b`` (a pair)."""
    rows: dict[str, list[Any]] = {c: [] for c in (
        "experiment_id", "group_id", "tenant", "tenant_kind", "active_set", "resident_set",
        "n_active", "colocated", "rate_scale", "repetition", FIGURE)}
    k, n = alone.shape
    for i in range(k):
        t = f"t{i}"
        for arm, values in (("alone", alone[i]), ("coloc", coloc[i])):
            active = t if arm == "alone" else f"{t}+b{i % cells_per_campaign}"
            for r in range(n):
                gid = f"{active}__all__x1"
                rows["experiment_id"].append(f"{gid}__r{r}")
                rows["group_id"].append(gid)
                rows["tenant"].append(t)
                rows["tenant_kind"].append("vllm")
                rows["active_set"].append(active)
                rows["resident_set"].append("shared")
                rows["n_active"].append(1 if arm == "alone" else 2)
                rows["colocated"].append(arm != "alone")
                rows["rate_scale"].append(1.0)
                rows["repetition"].append(r)
                rows[FIGURE].append(float(values[r]))
    return pl.DataFrame(rows)


def new_analysis(alone: np.ndarray, coloc: np.ndarray, settings: ReportSettings) -> pl.DataFrame:
    """The report's own interference table, one row per campaign, in campaign order."""
    out = interference_table(table(alone, coloc), settings, metrics=[FIGURE])
    order = {f"t{i}": i for i in range(alone.shape[0])}
    return out.with_columns(pl.col("tenant").replace_strict(order, return_dtype=pl.Int64).alias("_i")
                            ).sort("_i")


def old_analysis(alone: np.ndarray, coloc: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    los, his, verdicts = [], [], []
    for a, c in zip(alone, coloc, strict=True):
        ci = ratio_ci(float(c.mean()), float(c.std(ddof=1)), c.size, float(a.mean()), float(a.std(ddof=1)), a.size)
        los.append(ci.lo)
        his.append(ci.hi)
        verdicts.append(classify(ci.lo, ci.hi, margin))
    return np.array(los, dtype=float), np.array(his, dtype=float), verdicts


def score(theta: float, lo: np.ndarray, hi: np.ndarray, verdicts: list[str]) -> dict[str, float]:
    return {
        "coverage": float(np.mean((lo <= theta) & (theta <= hi))),
        "hurts": float(np.mean([v == HURTS for v in verdicts])),
        "shares_well": float(np.mean([v == WELL for v in verdicts])),
        "median_hi_over_lo": float(np.median(hi / lo)),
    }


def grid(k: int, seed: int) -> list[dict[str, Any]]:
    """Paired (the report) and unpaired (the old analysis) on the same simulated campaigns."""
    settings = ReportSettings(multiplicity="none", pool_variance="never")
    rows = []
    for s_i, sigma in enumerate(SIGMAS):
        for t_i, theta in enumerate(THETAS):
            for n in BLOCKS:
                rng = np.random.default_rng([seed, s_i, t_i, n])
                alone, coloc = simulate(rng, k, n, theta, sigma)
                new = new_analysis(alone, coloc, settings)
                lo_n, hi_n = new["slowdown_lo"].to_numpy(), new["slowdown_hi"].to_numpy()
                lo_o, hi_o, v_o = old_analysis(alone, coloc, settings.margin)
                rows.append({"sigma": sigma, "theta": theta, "n": n,
                             "paired": score(theta, lo_n, hi_n, new["verdict"].to_list()),
                             "unpaired": score(theta, lo_o, hi_o, v_o)})
    return rows


def pooled(k: int, seed: int, cells: int = 6) -> list[dict[str, Any]]:
    """Campaign by campaign with ``cells`` co-located cells each and the pooled variance on."""
    settings = ReportSettings(multiplicity="none", pool_variance="always")
    out = []
    for n in (2, 3):
        for theta in THETAS:
            rng = np.random.default_rng([seed, 99, n, int(theta * 10)])
            cover, hurts, well = [], [], []
            for _ in range(k // 2):
                alone, coloc = simulate(rng, cells, n, theta, 0.15)
                t = interference_table(table(alone, coloc, cells), settings, metrics=[FIGURE])
                lo, hi = t["slowdown_lo"].to_numpy(), t["slowdown_hi"].to_numpy()
                cover += list((lo <= theta) & (theta <= hi))
                hurts += [v == HURTS for v in t["verdict"]]
                well += [v == WELL for v in t["verdict"]]
            out.append({"n": n, "theta": theta, "coverage": float(np.mean(cover)),
                        "hurts": float(np.mean(hurts)), "shares_well": float(np.mean(well))})
    return out


def power(n: int, paired: bool, k: int, seed: int, sigma: float = 0.15, theta: float = 1.1) -> float:
    """P(the interval excludes 1.0 from above) with n blocks (margin 0)."""
    rng = np.random.default_rng([seed, 7, n])
    alone, coloc = simulate(rng, k, n, theta, sigma)
    if paired:
        lo = new_analysis(alone, coloc, ReportSettings(margin=0.0, multiplicity="none",
                                                       pool_variance="never"))["slowdown_lo"].to_numpy()
    else:
        lo, _, _ = old_analysis(alone, coloc, 0.0)
    return float(np.mean(lo > 1.0))


def repetitions_needed(paired: bool, k: int, seed: int, top: int = 120) -> int:
    """The smallest n with power >= 80% (power grows with n; bisection on the grid 2..top)."""
    lo, hi = 2, top
    if power(hi, paired, k, seed) < 0.8:
        return top
    while lo < hi:
        mid = (lo + hi) // 2
        if power(mid, paired, k, seed) >= 0.8:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _pct(v: float) -> str:
    return f"{100 * v:5.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--campaigns", type=int, default=500, help="simulated campaigns per cell of the grid")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = grid(args.campaigns, args.seed)
    print(f"{'sigma':>5} {'theta':>5} {'n':>3} | {'coverage':>8} {'hurts':>6} {'well':>6} {'hi/lo':>6}"
          f" | {'coverage':>8} {'hurts':>6} {'well':>6} {'hi/lo':>6}")
    print(f"{'':>17}| {'paired (the report)':^31} | {'unpaired (old)':^31}")
    for r in rows:
        p, u = r["paired"], r["unpaired"]
        print(f"{r['sigma']:5.2f} {r['theta']:5.1f} {r['n']:3d} | {_pct(p['coverage']):>8} {_pct(p['hurts']):>6} "
              f"{_pct(p['shares_well']):>6} {p['median_hi_over_lo']:6.2f} | {_pct(u['coverage']):>8} "
              f"{_pct(u['hurts']):>6} {_pct(u['shares_well']):>6} {u['median_hi_over_lo']:6.2f}")
    pool = pooled(args.campaigns, args.seed)
    print("\npooled variance (6 cells per campaign, sigma 0.15):")
    for r in pool:
        print(f"  n={r['n']} theta={r['theta']:.1f}: coverage {_pct(r['coverage'])}, hurts {_pct(r['hurts'])}, "
              f"shares well {_pct(r['shares_well'])}")
    need_p = repetitions_needed(True, args.campaigns, args.seed)
    need_u = repetitions_needed(False, args.campaigns, args.seed)
    print(f"\nrepetitions to establish a 10% effect at sigma 0.15 (80% power, margin 0): "
          f"paired {need_p}, unpaired {need_u} (SCIENCE.md's unpaired estimate: 39)")
    cov_p = [r["paired"]["coverage"] for r in rows]
    cov_u = [r["unpaired"]["coverage"] for r in rows]
    summary = {
        "campaigns_per_cell": args.campaigns,
        "coverage_paired_min": round(min(cov_p), 4), "coverage_paired_max": round(max(cov_p), 4),
        "coverage_unpaired_min": round(min(cov_u), 4), "coverage_unpaired_max": round(max(cov_u), 4),
        "coverage_pooled_min": round(min(r["coverage"] for r in pool), 4),
        "coverage_pooled_max": round(max(r["coverage"] for r in pool), 4),
        "true_1_0_called_hurts_max": round(max(r["paired"]["hurts"] for r in rows if r["theta"] == 1.0), 4),
        "true_1_3_called_shares_well_max": round(max(r["paired"]["shares_well"] for r in rows if r["theta"] == 1.3), 4),
        "pooled_true_1_0_called_hurts_max": round(max(r["hurts"] for r in pool if r["theta"] == 1.0), 4),
        "pooled_true_1_3_called_shares_well_max": round(max(r["shares_well"] for r in pool if r["theta"] == 1.3), 4),
        "repetitions_10pct_sigma_0_15_paired": need_p,
        "repetitions_10pct_sigma_0_15_unpaired": need_u,
        "rho_arrival_share": RHO,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
