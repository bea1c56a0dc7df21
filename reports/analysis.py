"""From a run directory to every table of the report, with no rendering: ``analyze``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from reports.aggregate import experiment_table
from reports.explain import Explanation, explain
from reports.interference import interference_table, pair_matrix
from reports.metrics import DEVICE_METRICS, metric_columns
from reports.repetitions import DEVICE_KEYS, group_stats
from reports.strategy import strategy_table
from rundir.reader import RunDir, load_run


@dataclass(frozen=True)
class Analysis:
    run: RunDir
    experiments: pl.DataFrame  # experiment x tenant
    device: pl.DataFrame  # experiment (device telemetry)
    stats: pl.DataFrame  # group x tenant x metric: n, mean, CI
    device_stats: pl.DataFrame  # group x device metric
    interference: pl.DataFrame  # co-located group x tenant x metric vs alone
    matrix: pl.DataFrame  # victim x co-tenant (pairs)
    strategies: pl.DataFrame  # one row per group, ranked
    bottleneck: pl.DataFrame  # tenant x offered rate (alone): what binds
    failures: pl.DataFrame  # experiments that did not complete
    explanation: Explanation  # profiles, attribution, predictions and their scores

    @property
    def tenants(self) -> list[str]:
        return self.run.tenant_names

    @property
    def set_order(self) -> list[str]:
        """Group ids for display: by rate scale, then alone, pairs, larger sets (spec order)."""
        names = self.tenants
        meta = self.experiments.select("group_id", "active_set", "n_active", "rate_scale").unique()

        def key(r: dict[str, Any]) -> tuple[Any, ...]:
            idx = [names.index(t) if t in names else 99 for t in r["active_set"].split("+")]
            return (r["rate_scale"], r["n_active"], idx)

        return [r["group_id"] for r in sorted(meta.iter_rows(named=True), key=key)]

    def group(self, group_id: str) -> dict[str, Any]:
        return self.strategies.filter(pl.col("group_id") == group_id).row(0, named=True)


FAILURE_SCHEMA = {
    "experiment_id": pl.Utf8,
    "status": pl.Utf8,
    "reason": pl.Utf8,
    "active_set": pl.Utf8,
    "repetition": pl.Int64,
    "log_tail": pl.Utf8,
}


def failures_frame(run: RunDir) -> pl.DataFrame:
    rows = []
    for e in run.not_completed:
        tail = e.manifest.get("log_tail") or {}
        text = "\n".join(f"[{t}] {str(v).rstrip()}" for t, v in tail.items()) if isinstance(tail, dict) else str(tail)
        rows.append(
            {
                "experiment_id": e.id,
                "status": e.status,
                "reason": e.reason,
                "active_set": "+".join(e.active),
                "repetition": e.repetition if e.manifest.get("repetition") is not None else None,
                "log_tail": text or None,
            }
        )
    return pl.DataFrame(rows, schema=FAILURE_SCHEMA) if rows else pl.DataFrame(schema=FAILURE_SCHEMA)


def analyze(run: RunDir | str | Path, engine: str = "streaming") -> Analysis:
    """Every table of the report for a run directory (or an already loaded ``RunDir``)."""
    run = run if isinstance(run, RunDir) else load_run(run)
    exp, dev = experiment_table(run, engine)
    stats = group_stats(exp, metric_columns())
    dstats = group_stats(dev, list(DEVICE_METRICS), DEVICE_KEYS)
    inter = interference_table(exp, stats)
    x = explain(run, exp, dev)
    return Analysis(
        run=run,
        experiments=exp,
        device=dev,
        stats=stats,
        device_stats=dstats,
        interference=inter,
        matrix=pair_matrix(inter),
        strategies=strategy_table(exp, stats, inter),
        bottleneck=x.bottleneck,
        failures=failures_frame(run),
        explanation=x,
    )
