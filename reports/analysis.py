"""From a run directory to every table of the report, with no rendering: ``analyze``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from reports.aggregate import experiment_table
from reports.batch import batch_table, flagged
from reports.conditions import conditions_frame
from reports.explain import Explanation, explain
from reports.interference import (
    INTERFERENCE_METRICS,
    baselines,
    block_pairs,
    interference_table,
    mark_batch_limit,
    pair_matrix,
)
from reports.metrics import DEVICE_METRICS, TAIL_METRICS, metric_columns
from reports.repetitions import DEVICE_KEYS, group_stats
from reports.settings import ReportSettings, settings_from_spec
from reports.strategy import strategy_table
from reports.tails import tail_estimates
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
    settings: ReportSettings  # margin, level, multiplicity, pooling (spec.report)
    batch: pl.DataFrame  # group x tenant: in flight against max_num_seqs, limits that bind
    conditions: pl.DataFrame  # experiment: server lifetime, idle gate, warm-up (if recorded)
    precision: pl.DataFrame  # primary figures against experiment.precision's target

    @property
    def family_size(self) -> int:
        """How many figures the report tests (and corrects for multiplicity over)."""
        return int(self.interference["in_family"].sum() or 0)
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
    settings = settings_from_spec(run.spec)
    everything, every_dev = experiment_table(run, engine)
    # capacity probes feed the profiles, predictions and the capacity section, not the
    # paired interference analysis (they are no blocks of alone and co-located arms)
    exp, dev = without_probes(run, everything), without_probes(run, every_dev)
    stats = group_stats(exp, metric_columns())
    dstats = group_stats(dev, list(DEVICE_METRICS), DEVICE_KEYS)
    inter = _interference(run, exp, settings, INTERFERENCE_METRICS, engine)
    batch = batch_table(exp, dev, run.spec)
    colocated = {k: v for k, v in baselines(exp).items() if k[0] != v}
    flags = flagged(batch, colocated)
    inter = mark_batch_limit(inter, flags)
    x = explain(run, everything, every_dev)
    return Analysis(
        run=run,
        experiments=everything,
        device=every_dev,
        stats=stats,
        device_stats=dstats,
        interference=inter,
        matrix=pair_matrix(inter),
        strategies=strategy_table(exp, stats, inter, flags),
        bottleneck=x.bottleneck,
        failures=failures_frame(run),
        settings=settings,
        batch=batch,
        conditions=conditions_frame(run),
        precision=precision_table(inter, settings),
        explanation=x,
    )


def without_probes(run: RunDir, frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` without the rows of capacity probes (``orchestrator.capacity``)."""
    probes = [e.id for e in run.experiments if e.manifest.get("probe")]
    return frame.filter(~pl.col("experiment_id").is_in(probes)) if probes else frame


def _interference(run: RunDir, exp: pl.DataFrame, settings: ReportSettings,
                  metrics: list[str], engine: str) -> pl.DataFrame:
    pairs = block_pairs(exp)
    tail = [m for m in metrics if m in TAIL_METRICS]
    tails = tail_estimates(run, pairs, settings.level, settings.margin, tail, engine) if tail else {}
    return interference_table(exp, settings, tails, metrics)


PRECISION_SCHEMA = {
    "group_id": pl.Utf8,
    "tenant": pl.Utf8,
    "figure": pl.Utf8,
    "n": pl.Int64,
    "log_half_width": pl.Float64,
}


def _half_widths(inter: pl.DataFrame) -> pl.DataFrame:
    p = inter.filter(pl.col("primary"))
    hw = ((pl.col("slowdown_hi").log() - pl.col("slowdown_lo").log()) / 2).alias("log_half_width")
    return p.select("group_id", "tenant", pl.col("metric").alias("figure"), "n", hw).cast(
        PRECISION_SCHEMA)  # type: ignore[arg-type]


def paired_half_widths(run: RunDir | str | Path, engine: str = "streaming") -> pl.DataFrame:
    """(group_id, tenant, figure, n, log_half_width) of every co-located tenant's primary
    figure: the half-width of its interval on the log scale, as the report computes it (the
    same pairing, pooling and level; null where there is no interval yet). What
    ``experiment.precision`` compares with its target to decide whether to add blocks."""
    run = run if isinstance(run, RunDir) else load_run(run)
    settings = settings_from_spec(run.spec)
    exp = without_probes(run, experiment_table(run, engine)[0])
    if exp.height == 0:
        return pl.DataFrame(schema=PRECISION_SCHEMA)
    primaries = sorted({settings.primary_figure(t, k) for t, k in
                        exp.select("tenant", "tenant_kind").unique().iter_rows()})
    return _half_widths(_interference(run, exp, settings, primaries, engine))


def precision_table(inter: pl.DataFrame, settings: ReportSettings) -> pl.DataFrame:
    """The primary figures against ``experiment.precision.half_width`` (empty when unset)."""
    if settings.precision_half_width is None or inter.height == 0:
        return pl.DataFrame(schema=PRECISION_SCHEMA | {"target": pl.Float64, "reached": pl.Boolean})
    target = settings.precision_half_width
    return _half_widths(inter).with_columns(
        pl.lit(target).alias("target"),
        (pl.col("log_half_width") <= target).fill_null(False).alias("reached"),
    )
