"""Repetitions, interference ratios and strategy ranking, by hand (bottleneck readings:
test_reports_bottleneck.py)."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from reports.interference import (
    VERDICT_NO_BASELINE,
    VERDICT_NO_CI,
    VERDICT_NONE,
    VERDICT_WORSE,
    baselines,
    interference_table,
    pair_matrix,
)
from reports.repetitions import group_stats
from reports.strategy import CLASS_BASELINE, CLASS_HURTS, CLASS_UNKNOWN, CLASS_WELL, strategy_table

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


def test_interference_ratios(exp: pl.DataFrame) -> None:
    stats = group_stats(exp, ["e2e_p99_s", "goodput_rps", "ttft_p99_s"])
    inter = interference_table(exp, stats)

    def get(gid: str, t: str, m: str) -> dict[str, Any]:
        return inter.filter((pl.col("group_id") == gid) & (pl.col("tenant") == t) & (pl.col("metric") == m)).row(0, named=True)

    r = get("a+b__all__x1", "a", "e2e_p99_s")  # [2, 2.2] / [1, 1.2]
    assert r["ratio"] == pytest.approx(2.1 / 1.1)
    assert r["slowdown"] == r["ratio"]
    assert r["ratio_lo"] > 1.0 and r["verdict"] == VERDICT_WORSE and r["significant"]
    assert r["co_tenants"] == "b" and r["headline"]
    enc = get("a+b__all__x1", "b", "e2e_p99_s")  # [.0201, .0199] / [.02, .02]
    assert enc["ratio"] == pytest.approx(1.0)
    assert enc["verdict"] == VERDICT_NONE and enc["significant"] is False
    one = get("b+c__all__x1", "b", "goodput_rps")  # 3 / 6, one repetition
    assert one["ratio"] == pytest.approx(0.5)
    assert one["slowdown"] == pytest.approx(2.0)  # goodput: higher is better, so alone / together
    assert one["verdict"] == VERDICT_NO_CI
    assert get("a+c__all__x1", "a", "goodput_rps")["significant"] is False  # no spread: a point


def test_no_baseline(exp: pl.DataFrame) -> None:
    only = exp.filter(pl.col("group_id") != "a__all__x1")
    inter = interference_table(only, group_stats(only, ["e2e_p99_s"]))
    r = inter.filter((pl.col("group_id") == "a+b__all__x1") & (pl.col("tenant") == "a")).row(0, named=True)
    assert r["verdict"] == VERDICT_NO_BASELINE and r["ratio"] is None


def test_pair_matrix(exp: pl.DataFrame) -> None:
    stats = group_stats(exp, ["e2e_p99_s", "ttft_p99_s"])
    m = pair_matrix(interference_table(exp, stats))
    cell = m.filter((pl.col("victim") == "a") & (pl.col("co_tenant") == "b")).row(0, named=True)
    assert cell["metric"] == "e2e_p99_s" and cell["slowdown"] == pytest.approx(2.1 / 1.1)
    assert set(zip(m["victim"], m["co_tenant"], strict=True)) == {
        ("a", "b"), ("b", "a"), ("a", "c"), ("c", "a"), ("b", "c"), ("c", "b")}


def test_strategy_gain_and_verdicts(exp: pl.DataFrame) -> None:
    stats = group_stats(exp, ["e2e_p99_s", "goodput_rps", "ttft_p99_s"])
    s = strategy_table(exp, stats, interference_table(exp, stats))
    ab = s.filter(pl.col("group_id") == "a+b__all__x1").row(0, named=True)
    # together 4 + 6 = 10 req/s on one GPU; apart (4 + 6) / 2 = 5 req/s per GPU: gain 2
    assert ab["goodput_per_gpu_rps"] == pytest.approx(10.0)
    assert ab["apart_goodput_per_gpu_rps"] == pytest.approx(5.0)
    assert ab["gain"] == pytest.approx(2.0)
    assert ab["worst_tenant"] == "a" and ab["worst_metric"] == "e2e_p99_s"
    assert ab["classification"] == CLASS_HURTS  # 1.91x, interval above 1.25
    assert "2.0x the goodput of running them apart" in ab["verdict"]
    assert "worst slowdown 1.91x on a E2E p99" in ab["verdict"]
    bc = s.filter(pl.col("group_id") == "b+c__all__x1").row(0, named=True)
    assert bc["gain"] == pytest.approx((3 + 2) / ((6 + 2) / 2))
    assert bc["classification"] in (CLASS_UNKNOWN, CLASS_HURTS)
    ac = s.filter(pl.col("group_id") == "a+c__all__x1").row(0, named=True)
    assert ac["classification"] == CLASS_WELL
    assert "no measurable interference at this load" in ac["verdict"]
    assert "more repetitions or a higher rate" in ac["verdict"]
    alone = s.filter(pl.col("n_active") == 1)
    assert set(alone["classification"]) == {CLASS_BASELINE} and alone["rank"].null_count() == 3
    ranked = s.filter(pl.col("rank").is_not_null()).sort("rank")
    assert ranked["group_id"][0] == "a+c__all__x1"  # the one that shares well comes first
    assert ranked["group_id"][-1] in ("a+b__all__x1", "b+c__all__x1")


def test_slo_attainment_is_pooled(exp: pl.DataFrame) -> None:
    exp = exp.with_columns(
        pl.when((pl.col("group_id") == "a+b__all__x1") & (pl.col("tenant") == "a"))
        .then(50).otherwise(pl.col("met")).alias("met")
    )
    stats = group_stats(exp, ["e2e_p99_s", "goodput_rps"])
    s = strategy_table(exp, stats, interference_table(exp, stats))
    ab = s.filter(pl.col("group_id") == "a+b__all__x1").row(0, named=True)
    assert ab["slo_attainment"] == pytest.approx((50 + 50 + 100 + 100) / 400)
    assert ab["apart_slo_attainment"] == pytest.approx(1.0)
    assert ab["classification"] == CLASS_HURTS


def test_verdict_of_a_set_that_hurts_through_slo_attainment_only():
    from reports.strategy import CLASS_HURTS, classify, verdict

    row = {
        "n_active": 2, "active_set": "a+b", "rate_scale": 1.0, "gain": 1.5,
        "worst_slowdown": 1.1, "worst_slowdown_lo": 0.5, "worst_slowdown_hi": 2.0,
        "worst_significant": False, "worst_metric": "e2e_p99_s", "worst_tenant": "b",
        "slo_attainment": 0.70, "apart_slo_attainment": 0.97,
    }
    assert classify(row) == CLASS_HURTS
    text = verdict(row)
    assert "hurts through SLO attainment" in text and "no measurable interference" not in text
    row_ok = {**row, "slo_attainment": 0.96}
    assert "no measurable interference" in verdict(row_ok)
