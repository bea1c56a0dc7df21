"""Per experiment x tenant figures from the Parquet files of a campaign, with lazy Polars scans.

Lazy scans cover the ``requests.parquet`` of every completed experiment, a pass of a few
experiments at a time (``passes``: every figure is per experiment, or per set pooled over its
repetitions, so passes never split a group and peak memory stays flat however large the
campaign); only rows with ``in_window`` true count. Each experiment's measurement window comes from its
manifest, [warmup_s, warmup_s + duration_s), and the rates divide by ``duration_s``:

* throughput_rps = ok requests / duration_s; output_tps = output tokens of ok requests /
  duration_s; embeddings_ps = sum of batch_size of ok embedding requests / duration_s
* goodput_rps = requests that met every SLO of the tenant (manifest ``slo``) / duration_s;
  a request meets an SLO when it is ok and the figure is at or below the target (a figure
  that does not apply, such as TPOT of a one-token answer or TTFT of an embedding, passes)
* latency percentiles count a request that is not ok as infinitely slow (censoring,
  `reports.request_figures`); latency means are over ok requests only; percentiles
  interpolate linearly (reports.stats)
* ``overrun_s``: how long after the window's end the last window request finished; large
  values mean the tenant could not keep up with the offered load

Telemetry device rows and tenant rows, and the scraped server metrics, are reduced over
samples with ``t_s`` inside the same window.

The scans and their passes are in `reports.scan`, the request figures (and the latency
distributions the figures draw) in `reports.request_figures`, the telemetry and server
metrics in `reports.telemetry_figures`; this module joins them into one table.
"""

from __future__ import annotations

import polars as pl

from reports.request_figures import request_figures
from reports.scan import experiments_frame, windows_frame
from reports.telemetry_figures import server_figures, telemetry_figures
from rundir.reader import RunDir

# ---- the per experiment x tenant table ---------------------------------------------------------


def experiment_table(run: RunDir, engine: str = "streaming") -> tuple[pl.DataFrame, pl.DataFrame]:
    """(experiment x tenant figures, experiment device figures).

    Every completed experiment's active tenants have a row, even with no requests at all.
    """
    base = experiments_frame(run).join(windows_frame(run), on=["experiment_id", "tenant"])
    req = request_figures(run, engine)
    dev, ten = telemetry_figures(run)
    srv = server_figures(run)
    keys = ["experiment_id", "tenant"]
    t = base.join(req, on=keys, how="left").join(ten, on=keys, how="left").join(srv, on=keys, how="left")
    for c in ("requests", "ok", "status_error", "status_timeout", "status_dropped", "met"):
        t = t.with_columns(pl.col(c).fill_null(0).cast(pl.Int64))
    for c in ("output_tokens", "embeddings"):
        t = t.with_columns(pl.col(c).fill_null(0).cast(pl.Float64))
    dur = pl.col("duration_s")
    per_s = pl.when(dur > 0)
    encoder = pl.col("tenant_kind") == "encoder"
    t = t.with_columns(
        errors=pl.col("requests") - pl.col("ok"),
        error_rate=pl.when(pl.col("requests") > 0).then(
            (pl.col("requests") - pl.col("ok")) / pl.col("requests")
        ),
        throughput_rps=per_s.then(pl.col("ok") / dur),
        output_tps=pl.when(~encoder & (dur > 0)).then(pl.col("output_tokens") / dur),
        embeddings_ps=pl.when(encoder & (dur > 0)).then(pl.col("embeddings") / dur),
        goodput_rps=per_s.then(pl.col("met") / dur),
        slo_attainment=pl.when(pl.col("requests") > 0).then(pl.col("met") / pl.col("requests")),
    )
    t = t.with_columns(
        pl.col("errors").cast(pl.Int64),
        pl.col("throughput_rps", "output_tps", "embeddings_ps", "goodput_rps").cast(pl.Float64),
    )
    order = {e.id: i for i, e in enumerate(run.experiments)}
    names = run.tenant_names
    t = t.with_columns(
        pl.col("experiment_id").replace_strict(order, default=len(order), return_dtype=pl.Int64).alias("_o"),
        pl.col("tenant").replace_strict({n: i for i, n in enumerate(names)}, default=99, return_dtype=pl.Int64).alias("_t"),
    ).sort("_o", "_t").drop("_o", "_t")
    devbase = pl.DataFrame(
        {
            "experiment_id": [e.id for e in run.completed],
            "group_id": [e.group_id for e in run.completed],
            "active_set": ["+".join(e.active) for e in run.completed],
            "resident_set": ["+".join(e.resident) for e in run.completed],
            "rate_scale": [e.rate_scale for e in run.completed],
            "repetition": [e.repetition for e in run.completed],
        },
        schema={
            "experiment_id": pl.Utf8,
            "group_id": pl.Utf8,
            "active_set": pl.Utf8,
            "resident_set": pl.Utf8,
            "rate_scale": pl.Float64,
            "repetition": pl.Int64,
        },
    )
    return t, devbase.join(dev, on="experiment_id", how="left")
