"""Reading a capacity_search.py run: each search's answer, probes and time from its
``capacity.json`` and ``probes.parquet``, each grid's pooled attainment and answer, and the
comparison of the two against the benchmark's goal. Kept apart from the running
(capacity_search.py) so that an old run directory can be read again."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

GOAL_ACCURACY = 0.05  # within 5% of the grid's answer (or inside its bracket)
GOAL_SHARE = 1 / 3  # in at most a third of its probes and time


def g6(x: float) -> float:
    """Six significant digits: experiment ids write scales with %g."""
    return float(f"{x:.6g}")


def _iso(s: str) -> float:
    return datetime.fromisoformat(s).timestamp()


def manifests(run_dir: Path, ids: list[str]) -> list[dict[str, Any]]:
    return [json.loads((run_dir / i / "manifest.json").read_text()) for i in ids]


def span_s(ms: list[dict[str, Any]]) -> float:
    """From the first experiment's start to the last one's end (the idle gates, the gaps
    between experiments and the search's own bookkeeping included; server starts not)."""
    starts = [_iso(m["started_at"]) for m in ms if m.get("started_at")]
    ends = [_iso(m["ended_at"]) for m in ms if m.get("ended_at")]
    return max(ends) - min(starts) if starts and ends else float("nan")


def search_result(run_dir: Path, key: str, solo: bool) -> dict[str, Any]:
    """The search's capacity (req/s alone, the scale for a set), bracket, probes and time."""
    import polars as pl

    cap = json.loads((run_dir / "capacity.json").read_text())
    rec = cap["tenants" if solo else "sets"][key]
    probes = pl.read_parquet(run_dir / "probes.parquet").filter(pl.col("search") == key)
    ids = probes["experiment_id"].unique(maintain_order=True).to_list()
    ms = manifests(run_dir, ids)
    steps = (probes.group_by("index", maintain_order=True)
             .agg(pl.col("scale").first(), pl.col("attempt").n_unique().alias("attempts"),
                  pl.col("decision").last(), pl.col("decided_by").last(),
                  pl.col("early_stop").any(), pl.col("attainment").min(),
                  pl.col("offered_rps")))
    value = rec["capacity_rps"] if solo else rec["scale"]
    return {
        "capacity": value, "bracket": rec["bracket"], "censored": rec.get("censored"),
        "reason": rec.get("reason"), "scales_probed": rec["probes"], "experiments": len(ids),
        "failed": sum(m.get("status") != "completed" for m in ms),
        "early_stopped": sum(bool(m.get("early_stop")) for m in ms),
        "time_s": span_s(ms), "record": rec, "steps": steps.to_dicts(),
    }


def grid_result(run_dir: Path, tenants: list[str], targets: dict[str, float],
                scales: list[float], unit: float) -> dict[str, Any]:
    """Pooled attainment per grid scale, the grid's answer (in ``unit`` x scale) and its
    bracket, its probes and its time."""
    import polars as pl

    from reports.aggregate import experiment_table
    from rundir.reader import load_run

    rd = load_run(run_dir)
    table, _ = experiment_table(rd)
    ids = [e.id for e in rd.experiments]
    ms = manifests(run_dir, [e.id for e in rd.experiments if (e.dir / "manifest.json").is_file()])
    pooled = (table.filter(pl.col("tenant").is_in(tenants))
              .with_columns(pl.col("rate_scale").map_elements(g6, return_dtype=pl.Float64))
              .group_by("rate_scale", "tenant")
              .agg(pl.col("requests").sum(), pl.col("met").sum(), pl.len().alias("runs")))
    by = {(r["rate_scale"], r["tenant"]): r for r in pooled.iter_rows(named=True)}
    rows = []
    for s in scales:
        row: dict[str, Any] = {"scale": s, "rate": s * unit, "pass": True, "tenants": {}}
        for t in tenants:
            r = by.get((g6(s), t))
            att = r["met"] / r["requests"] if r and r["requests"] else None
            row["tenants"][t] = {"requests": r["requests"] if r else 0, "met": r["met"] if r else 0,
                                 "runs": r["runs"] if r else 0, "attainment": att}
            row["pass"] &= att is not None and att >= targets[t]
        rows.append(row)
    passed = [i for i, r in enumerate(rows) if r["pass"]]
    if passed:
        k = passed[-1]
        answer, lo = rows[k]["scale"], rows[k]["scale"]
        hi = rows[k + 1]["scale"] if k + 1 < len(rows) else None
        censored = None if hi is not None else "at least (the top grid rate passed)"
    else:
        answer, lo, hi = 0.0, 0.0, rows[0]["scale"]
        censored = "zero (no grid rate passed)"
    # a rate below the answer that failed: the grid's attainment curve is not monotone there
    dips = [r["scale"] for r in rows[: passed[-1]] if not r["pass"]] if passed else []
    return {"capacity": answer * unit, "bracket": [lo * unit, None if hi is None else hi * unit],
            "censored": censored, "experiments": len(ids),
            "failed": sum(m.get("status") != "completed" for m in ms),
            "time_s": span_s(ms), "rows": rows, "dips": [d * unit for d in dips]}


def compare(s: dict[str, Any], g: dict[str, Any]) -> dict[str, Any]:
    c, gc = s["capacity"], g["capacity"]
    lo, hi = g["bracket"]
    rel = (c / gc - 1) if gc else None
    inside = c >= lo and (hi is None or c <= hi) if c is not None else False
    probes = s["experiments"] / g["experiments"] if g["experiments"] else None
    t = s["time_s"] / g["time_s"] if g["time_s"] else None
    accurate = inside or (rel is not None and abs(rel) <= GOAL_ACCURACY)
    cheap = probes is not None and probes <= GOAL_SHARE and t is not None and t <= GOAL_SHARE
    return {"relative_difference": rel, "inside_grid_bracket": inside,
            "probes_ratio": probes, "time_ratio": t, "accurate": accurate,
            "cheap": cheap, "target_met": accurate and cheap}
