"""Repetitions, interference ratios and strategy ranking, by hand (bottleneck readings:
test_reports_bottleneck.py)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl
import pytest

from reports.batch import batch_table, flagged
from reports.interference import (
    REASON_NO_BASELINE,
    baselines,
    block_pairs,
    interference_table,
    pair_matrix,
    tenant_verdicts,
)
from reports.paired import PAIRED, POOLED
from reports.repetitions import group_stats
from reports.settings import ReportSettings
from reports.strategy import CLASS_BASELINE, CLASS_HURTS, CLASS_UNKNOWN, CLASS_WELL, strategy_table
from reports.verdicts import HURTS, NOT_ESTABLISHED, WELL

KIND = {"a": "vllm", "b": "encoder", "c": "vllm"}


def rep_rows(active: str, values: dict[str, dict[str, list[float]]], scale: float = 1.0,
             resident: str = "a+b+c") -> list[dict[str, Any]]:
    """values: tenant -> metric -> one value per repetition."""
    rows = []
    gid = f"{active}__all__x{scale:g}"
    for t, metrics in values.items():
        n = len(next(iter(metrics.values())))
        for r in range(n):
            row = {
                "experiment_id": f"{gid}__r{r}", "group_id": gid, "tenant": t, "tenant_kind": KIND[t],
                "active_set": active, "resident_set": resident, "n_active": len(active.split("+")),
                "colocated": "+" in active, "rate_scale": scale, "repetition": r,
                "requests": 100, "met": 100,
            }
            row |= {m: v[r] for m, v in metrics.items()}
            rows.append(row)
    return rows


def frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    cols = sorted({k for r in rows for k in r})
    return pl.DataFrame([{c: r.get(c) for c in cols} for r in rows])


@pytest.fixture
def exp() -> pl.DataFrame:
    rows = []
    rows += rep_rows("a", {"a": {"e2e_p99_s": [1.0, 1.2], "goodput_rps": [4.0, 4.0], "ttft_p99_s": [0.1, 0.1]}})
    rows += rep_rows("b", {"b": {"e2e_p99_s": [0.02, 0.02], "goodput_rps": [6.0, 6.0]}})
    rows += rep_rows("c", {"c": {"e2e_p99_s": [1.0, 1.1, 0.9], "goodput_rps": [2.0, 2.0, 2.0]}})
    rows += rep_rows("a+b", {
        "a": {"e2e_p99_s": [2.0, 2.2], "goodput_rps": [4.0, 4.0], "ttft_p99_s": [0.1, 0.1]},
        "b": {"e2e_p99_s": [0.0201, 0.0199], "goodput_rps": [6.0, 6.0]},
    })
    rows += rep_rows("a+c", {
        "a": {"e2e_p99_s": [1.1, 1.0], "goodput_rps": [4.0, 4.0], "ttft_p99_s": [0.1, 0.1]},
        "c": {"e2e_p99_s": [1.0, 1.2, 1.0], "goodput_rps": [2.0, 2.0, 2.0]},
    })
    rows += rep_rows("b+c", {"b": {"e2e_p99_s": [0.04], "goodput_rps": [3.0]},
                             "c": {"e2e_p99_s": [1.0], "goodput_rps": [2.0]}})
    return frame(rows)


def test_group_stats_mean_and_t_interval(exp: pl.DataFrame) -> None:
    s = group_stats(exp, ["e2e_p99_s", "goodput_rps"])
    r = s.filter((pl.col("group_id") == "c__all__x1") & (pl.col("metric") == "e2e_p99_s")).row(0, named=True)
    # 1.0 1.1 0.9: mean 1, sd .1, half-width 4.302652729749462 * .1 / sqrt(3)
    assert (r["n"], r["mean"], r["sd"]) == (3, pytest.approx(1.0), pytest.approx(0.1))
    assert r["half_width"] == pytest.approx(0.24841377117503303)
    assert r["too_wide"]  # 24.8% of the mean
    g = s.filter((pl.col("group_id") == "c__all__x1") & (pl.col("metric") == "goodput_rps")).row(0, named=True)
    assert g["half_width"] == 0.0 and not g["too_wide"]
    one = s.filter((pl.col("group_id") == "b+c__all__x1") & (pl.col("tenant") == "b")).row(0, named=True)
    assert one["n"] == 1 and one["half_width"] is None and one["too_wide"]


def test_group_stats_skips_nulls_and_handles_empty() -> None:
    rows = rep_rows("a", {"a": {"e2e_p99_s": [1.0, None, 3.0]}})  # type: ignore[list-item]
    s = group_stats(frame(rows), ["e2e_p99_s"])
    assert s.row(0, named=True)["n"] == 2 and s.row(0, named=True)["mean"] == 2.0
    assert group_stats(frame(rows).clear(), ["e2e_p99_s"]).height == 0


def test_baseline_is_the_tenant_alone_at_the_same_load(exp: pl.DataFrame) -> None:
    b = baselines(exp)
    assert b[("a+b__all__x1", "a")] == "a__all__x1"
    assert b[("a+b__all__x1", "b")] == "b__all__x1"
    other = frame(rep_rows("a", {"a": {"e2e_p99_s": [9.0]}}, scale=2.0))
    b2 = baselines(pl.concat([exp, other], how="diagonal_relaxed"))
    assert b2[("a__all__x2", "a")] == "a__all__x2"


def test_exact_residency_baseline() -> None:
    rows = rep_rows("a", {"a": {"e2e_p99_s": [1.0, 1.0]}}, resident="a")
    rows += rep_rows("a", {"a": {"e2e_p99_s": [5.0, 5.0]}}, resident="a+b+c")
    rows[-1]["group_id"] = rows[-2]["group_id"] = "a__other__x1"
    rows += rep_rows("a+b", {"a": {"e2e_p99_s": [2.0, 2.0]}}, resident="a+b")
    b = baselines(frame(rows))
    assert b[("a+b__all__x1", "a")] == "a__all__x1"  # only a resident, as exact residency runs it


def _get(inter: pl.DataFrame, gid: str, t: str, m: str) -> dict[str, Any]:
    return inter.filter((pl.col("group_id") == gid) & (pl.col("tenant") == t) & (pl.col("metric") == m)).row(0, named=True)


def test_block_pairs_only_where_both_arms_completed(exp: pl.DataFrame) -> None:
    pairs = block_pairs(exp)
    assert pairs[("a+b__all__x1", "a")] == [("a+b__all__x1__r0", "a__all__x1__r0"),
                                            ("a+b__all__x1__r1", "a__all__x1__r1")]
    assert len(pairs[("a+c__all__x1", "c")]) == 3
    assert pairs[("b+c__all__x1", "b")] == [("b+c__all__x1__r0", "b__all__x1__r0")]
    gone = exp.filter(pl.col("experiment_id") != "a__all__x1__r1")  # block 1 of a alone failed
    assert block_pairs(gone)[("a+b__all__x1", "a")] == [("a+b__all__x1__r0", "a__all__x1__r0")]


def test_interference_is_paired_by_block(exp: pl.DataFrame) -> None:
    inter = interference_table(exp, ReportSettings(pool_variance="never"))
    r = _get(inter, "a+b__all__x1", "a", "e2e_p99_s")  # [2, 2.2] against [1, 1.2], block by block
    d = np.log([2.0 / 1.0, 2.2 / 1.2])
    hw = 12.706204736174694 * d.std(ddof=1) / math.sqrt(2)
    assert r["n"] == 2 and r["method"] == PAIRED
    assert r["ratio"] == pytest.approx(math.exp(d.mean()))  # geometric mean, not 2.1 / 1.1
    assert r["slowdown_lo"] == pytest.approx(math.exp(d.mean() - hw))
    assert r["slowdown_hi"] == pytest.approx(math.exp(d.mean() + hw))
    assert r["mean"] == pytest.approx(2.1) and r["baseline_mean"] == pytest.approx(1.1)
    assert r["co_tenants"] == "b" and r["headline"] and r["in_family"]
    one = _get(inter, "b+c__all__x1", "b", "goodput_rps")  # 3 / 6, one block
    assert one["ratio"] == pytest.approx(0.5)
    assert one["slowdown"] == pytest.approx(2.0)  # goodput: higher is better, so alone / together
    assert one["verdict"] is None and one["reason"] == "no interval (1 block)"
    flat = _get(inter, "a+c__all__x1", "a", "goodput_rps")  # identical in every block: a point
    assert flat["slowdown_lo"] == flat["slowdown_hi"] == pytest.approx(1.0)


def test_pooled_variance_gives_small_cells_an_interval(exp: pl.DataFrame) -> None:
    inter = interference_table(exp, ReportSettings(pool_variance="auto"))
    one = _get(inter, "b+c__all__x1", "b", "e2e_p99_s")  # a single block, pooled variance
    assert one["method"] == POOLED and one["n"] == 1 and one["slowdown_lo"] is not None
    # e2e_p99_s cells: (a, a+b) 2 pairs, (b, a+b) 2, (a, a+c) 2, (c, a+c) 3, (b, b+c) 1, (c, b+c) 1
    assert one["df"] == 1 + 1 + 1 + 2


def test_no_baseline(exp: pl.DataFrame) -> None:
    only = exp.filter(pl.col("group_id") != "a__all__x1")
    inter = interference_table(only)
    r = _get(inter, "a+b__all__x1", "a", "e2e_p99_s")
    assert r["verdict"] == NOT_ESTABLISHED and r["reason"] == REASON_NO_BASELINE and r["ratio"] is None


def headline_exp(shift: dict[str, float], reps: int = 5, noise: float = 0.02, seed: int = 0) -> pl.DataFrame:
    """Tenant a (decoder) and b (encoder) alone and together; ``shift``: figure -> true slowdown."""
    rng = np.random.default_rng(seed)
    figs = {"a": ("tpot_p50_s", "ttft_p99_s", "e2e_p99_s"), "b": ("e2e_p50_s", "e2e_p99_s")}
    alone: dict[str, dict[str, list[float]]] = {}
    both: dict[str, dict[str, list[float]]] = {}
    for t, ms in figs.items():
        alone[t], both[t] = {}, {}
        for m in ms:
            arrivals = rng.normal(0, 0.2, reps)  # shared by the two arms of a block
            alone[t][m] = list(np.exp(arrivals + rng.normal(0, noise, reps)))
            both[t][m] = list(shift.get(f"{t}.{m}", 1.0) * np.exp(arrivals + rng.normal(0, noise, reps)))
    rows = rep_rows("a", {"a": alone["a"]}) + rep_rows("b", {"b": alone["b"]}) + rep_rows("a+b", both)
    return frame(rows)


def test_verdicts_hurts_shares_well_and_not_established() -> None:
    exp = headline_exp({"a.tpot_p50_s": 1.5})
    inter = interference_table(exp)
    assert _get(inter, "a+b__all__x1", "a", "tpot_p50_s")["verdict"] == HURTS
    assert _get(inter, "a+b__all__x1", "b", "e2e_p50_s")["verdict"] == WELL
    assert inter["in_family"].sum() == 5  # the headline figures: 3 of the decoder, 2 of the encoder
    assert set(inter.filter(~pl.col("headline"))["verdict"].to_list()) <= {None}
    s = strategy_table(exp, group_stats(exp, ["goodput_rps"]), inter)
    assert s.filter(pl.col("group_id") == "a+b__all__x1")["classification"][0] == CLASS_HURTS
    tv = tenant_verdicts(inter)
    assert dict(zip(tv["tenant"], tv["tenant_verdict"], strict=True)) == {"a": HURTS, "b": WELL}
    calm = headline_exp({})
    c = strategy_table(calm, group_stats(calm, ["goodput_rps"]), interference_table(calm))
    assert c.filter(pl.col("group_id") == "a+b__all__x1")["classification"][0] == CLASS_WELL
    wide = headline_exp({}, reps=3, noise=0.3)  # noisy: intervals straddle 1.1
    w = strategy_table(wide, group_stats(wide, ["goodput_rps"]), interference_table(wide))
    row = w.filter(pl.col("group_id") == "a+b__all__x1").row(0, named=True)
    assert row["classification"] == CLASS_UNKNOWN and row["rank"] is None
    assert "not established:" in row["verdict"]


def test_an_interval_can_exclude_the_margin_and_not_survive_the_correction() -> None:
    exp = headline_exp({"a.tpot_p50_s": 1.3}, reps=4, noise=0.06, seed=3)
    holm = _get(interference_table(exp), "a+b__all__x1", "a", "tpot_p50_s")
    none = _get(interference_table(exp, ReportSettings(multiplicity="none")), "a+b__all__x1", "a", "tpot_p50_s")
    assert none["slowdown_lo"] > 1.1 and none["verdict"] == HURTS
    assert holm["p_value"] < 0.05 <= holm["p_adjusted"]
    assert holm["verdict"] == NOT_ESTABLISHED
    assert "excludes 1.1, but not after Holm correction across 5 figures" in holm["reason"]


def test_pair_matrix(exp: pl.DataFrame) -> None:
    m = pair_matrix(interference_table(exp))
    cell = m.filter((pl.col("victim") == "a") & (pl.col("co_tenant") == "b")).row(0, named=True)
    assert cell["metric"] == "e2e_p99_s" and cell["n"] == 2
    assert set(zip(m["victim"], m["co_tenant"], strict=True)) == {
        ("a", "b"), ("b", "a"), ("a", "c"), ("c", "a"), ("b", "c"), ("c", "b")}


def test_strategy_ranks_only_established_sets() -> None:
    hurt = headline_exp({"a.tpot_p50_s": 1.5, "b.e2e_p99_s": 1.3})
    calm = headline_exp({}, seed=1)
    wide = headline_exp({}, reps=3, noise=0.3, seed=2)

    def rename(df: pl.DataFrame, sfx: str) -> pl.DataFrame:
        return df.with_columns(pl.col("group_id").str.replace("__all", f"{sfx}__all"),
                               pl.col("experiment_id").str.replace("__all", f"{sfx}__all"),
                               pl.col("resident_set") + sfx)

    exp = pl.concat([rename(hurt, "-h"), rename(calm, "-c"), rename(wide, "-w")], how="diagonal_relaxed")
    # the baselines of each copy: same resident set
    s = strategy_table(exp, group_stats(exp, ["goodput_rps"]), interference_table(exp))
    assert "gain" not in s.columns and not any("apart" in c for c in s.columns)
    co = s.filter(pl.col("n_active") > 1)
    ranked = co.filter(pl.col("rank").is_not_null()).sort("rank")
    assert ranked["classification"].to_list() == [CLASS_WELL, CLASS_HURTS]  # hurts last
    assert co.filter(pl.col("rank").is_null())["classification"].to_list() == [CLASS_UNKNOWN]
    alone = s.filter(pl.col("n_active") == 1)
    assert alone["rank"].null_count() == 6 and set(alone["classification"]) == {CLASS_BASELINE}
    assert s["group_id"].to_list().index(co.filter(pl.col("rank").is_null())["group_id"][0]) > 1


def test_slo_attainment_is_pooled(exp: pl.DataFrame) -> None:
    exp = exp.with_columns(
        pl.when((pl.col("group_id") == "a+b__all__x1") & (pl.col("tenant") == "a"))
        .then(50).otherwise(pl.col("met")).alias("met")
    )
    stats = group_stats(exp, ["e2e_p99_s", "goodput_rps"])
    s = strategy_table(exp, stats, interference_table(exp))
    ab = s.filter(pl.col("group_id") == "a+b__all__x1").row(0, named=True)
    assert ab["slo_attainment"] == pytest.approx((50 + 50 + 100 + 100) / 400)
    assert ab["alone_slo_attainment"] == pytest.approx(1.0)
    assert "SLO attainment 75.0%" in ab["verdict"] and "(alone 100%)" in ab["verdict"]


def test_batch_limit_by_littles_law() -> None:
    rows = rep_rows("a", {"a": {"throughput_rps": [10.0, 10.0], "e2e_mean_s": [6.0, 6.0],
                                "requests_running_mean": [30.0, 30.0]}})
    rows += rep_rows("a+c", {"a": {"throughput_rps": [10.0, 10.0], "e2e_mean_s": [3.0, 3.0],
                                   "requests_running_mean": [30.0, 30.0]},
                             "c": {"throughput_rps": [5.0, 5.0], "e2e_mean_s": [1.0, 1.0],
                                   "requests_running_mean": [62.0, 61.0]}})
    exp = frame(rows)
    dev = pl.DataFrame({"experiment_id": exp["experiment_id"].unique()})
    spec = {"tenants": [{"name": "a", "kind": "vllm", "max_num_seqs": 64},
                        {"name": "c", "kind": "vllm", "max_num_seqs": 64}]}
    b = batch_table(exp, dev, spec)
    alone = b.filter(pl.col("group_id") == "a__all__x1").row(0, named=True)
    assert alone["in_flight"] == pytest.approx(60.0) and alone["batch_fraction"] == pytest.approx(60 / 64)
    assert alone["batch_limit"] and alone["limits"].startswith("batch limit")
    co = b.filter(pl.col("group_id") == "a+c__all__x1")
    assert co.filter(pl.col("tenant") == "a")["batch_limit"][0] is False  # 30 in flight
    assert co.filter(pl.col("tenant") == "c")["batch_limit"][0] is True  # vLLM's own count: 61.5
    flags = flagged(b, {("a+c__all__x1", "a"): "a__all__x1", ("a+c__all__x1", "c"): "c__all__x1"})
    assert flags == {("a__all__x1", "a"), ("a+c__all__x1", "a"), ("a+c__all__x1", "c")}


