"""``build_report``: a run directory in, report.html + summary.md + tables + figures out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from reports import figures as F
from reports.analysis import Analysis, analyze
from reports.capacity import W_MAP_TITLE, load_capacity
from reports.capacity_figures import capacity_figures, w_map
from reports.capacity_render import capacity_tables
from reports.errors import ReportError
from reports.explain_render import explain_tables, predicted_vs_measured
from reports.html import render
from reports.markdown import summary_markdown
from reports.request_figures import latency_cdf, request_rate_series
from reports.telemetry_figures import telemetry_series
from rundir.io import atomic_write_parquet, atomic_write_text
from rundir.reader import ExperimentRecord, load_run

# at most this many per-experiment timelines are drawn (then: first repetition of each set)
MAX_TIMELINES = 48
# the page shows every timeline up to this many experiments, else one per set
MAX_TIMELINES_INLINE = 12


@dataclass(frozen=True)
class ReportPaths:
    out_dir: Path
    html: Path
    summary_md: Path
    tables_dir: Path
    figures_dir: Path
    tables: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)


def write_table(tables_dir: Path, name: str, df: pl.DataFrame) -> list[Path]:
    """``name.parquet`` and ``name.csv``, atomically."""
    pq, csv = tables_dir / f"{name}.parquet", tables_dir / f"{name}.csv"
    atomic_write_parquet(pq, df)
    atomic_write_text(csv, df.write_csv())
    return [pq, csv]


def _tables(a: Analysis) -> dict[str, pl.DataFrame]:
    return {
        "experiments": a.experiments,
        "device": a.device,
        "groups": a.stats,
        "device_groups": a.device_stats,
        "interference": a.interference,
        "interference_pairs": a.matrix,
        "strategies": a.strategies,
        "bottleneck": a.bottleneck,
        "failures": a.failures,
        "batch_limits": a.batch,
        "conditions": a.conditions,
        "precision": a.precision,
    } | explain_tables(a.explanation)


def _timeline_experiments(a: Analysis, limit: int) -> list[ExperimentRecord]:
    done = a.run.completed
    if len(done) <= limit:
        return done
    first: dict[str, ExperimentRecord] = {}
    for e in done:
        first.setdefault(e.group_id, e)
    return list(first.values())[:limit]


def build_report(run_dir: Path | str, out_dir: Path | str | None = None) -> ReportPaths:
    """Read ``run_dir`` (docs/run-directory.md) and write the report into ``out_dir``.

    ``out_dir`` defaults to the run directory itself: report.html, summary.md,
    tables/*.parquet + *.csv, figures/*.svg + *.png. Every file is written atomically.
    Raises ``RunDirError`` for a run directory that cannot be read, ``ReportError`` for one
    with nothing completed to report on.
    """
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.path
    if not run.completed:
        reasons = "; ".join(f"{e.id}: {e.status}" for e in run.experiments[:5]) or "no experiments"
        raise ReportError(f"{run.path}: no completed experiment to report on ({reasons})")
    a = analyze(run)
    cap = load_capacity(run)
    tables_dir, figures_dir = out / "tables", out / "figures"
    table_paths: list[Path] = []
    extra = {} if cap is None else capacity_tables(cap)
    for name, df in (_tables(a) | extra).items():
        table_paths += write_table(tables_dir, name, df)

    figs: dict[str, F.SavedFigure] = {}

    def keep(name: str, title: str, fig: object) -> None:
        if fig is not None:
            figs[name] = F.save(fig, figures_dir, name, title)  # type: ignore[arg-type]

    order = a.set_order
    if cap is not None and cap.sets["W"].drop_nulls().len():  # measured capacity: the map shows W
        keep("strategy_map", W_MAP_TITLE, w_map(cap.sets))
    else:
        keep("strategy_map", "worst headline slowdown per set", F.strategy_map(a.strategies, a.settings.margin))
    if cap is not None:
        for name, (title, fig) in capacity_figures(cap, a.tenants).items():
            keep(name, title, fig)
    keep("interference_heatmap", "victim x co-tenant", F.interference_heatmap(a.matrix, a.tenants))
    keep("predicted_vs_measured", "predicted against measured", predicted_vs_measured(a.explanation))
    keep("throughput_goodput", "throughput and goodput", F.throughput_bars(a.stats, a.tenants, order))
    cdf_e2e = latency_cdf(run, "e2e_s")
    keep("cdf_e2e", "E2E latency CDF", F.latency_cdfs(cdf_e2e, a.tenants, order, "E2E latency"))
    cdf_ttft = latency_cdf(run, "ttft_s")
    keep("cdf_ttft", "TTFT CDF", F.latency_cdfs(cdf_ttft, a.tenants, order, "TTFT"))
    atomic_write_parquet(tables_dir / "latency_cdf.parquet",
                         pl.concat([cdf_e2e.with_columns(metric=pl.lit("e2e_s")),
                                    cdf_ttft.with_columns(metric=pl.lit("ttft_s"))]))
    table_paths.append(tables_dir / "latency_cdf.parquet")

    drawn = _timeline_experiments(a, MAX_TIMELINES)
    for e in drawn:
        name = f"timeline_{e.id}"
        fig = F.timeline(e.id, e.window, telemetry_series(e), request_rate_series(e), a.tenants)
        keep(name, e.id, fig)
    if len(drawn) <= MAX_TIMELINES_INLINE:
        shown = [e.id for e in drawn]
    else:
        seen: set[str] = set()
        shown = []
        for e in drawn:
            if e.group_id not in seen:
                seen.add(e.group_id)
                shown.append(e.id)
    html = render(a, figs, shown, len(run.completed), capacity=cap)
    html_path, md_path = out / "report.html", out / "summary.md"
    atomic_write_text(html_path, html)
    atomic_write_text(md_path, summary_markdown(a, capacity=cap))
    fig_paths = [p for f in figs.values() for p in (f.svg_path, f.png_path)]
    return ReportPaths(out, html_path, md_path, tables_dir, figures_dir, table_paths, fig_paths)
