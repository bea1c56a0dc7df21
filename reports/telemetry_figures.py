"""Per experiment figures of the device and the tenant processes (telemetry.parquet), and per
experiment x tenant figures of the scraped server metrics (server_metrics.parquet).

Device rows and tenant rows, and the scraped metrics, are reduced over samples with ``t_s``
inside the experiment's measurement window, [warmup_s, warmup_s + duration_s).
"""

from __future__ import annotations

import polars as pl

from reports.scan import scan_files
from rundir.reader import ExperimentRecord, RunDir
from rundir.schema import SERVER_METRICS_SCHEMA, TELEMETRY_SCHEMA

# scraped metric name -> column (mean over the window)
_GAUGES = {
    "vllm:kv_cache_usage_perc": "kv_cache_usage_mean",
    "vllm:gpu_cache_usage_perc": "kv_cache_usage_mean",  # older vLLM name
    "vllm:num_requests_waiting": "requests_waiting_mean",
    "vllm:num_requests_running": "requests_running_mean",
    "encoder_queue_depth": "encoder_queue_mean",
}
_COUNTERS = {"vllm:num_preemptions_total": "preemptions"}
SERVER_COLUMNS = (
    "kv_cache_usage_mean",
    "requests_waiting_mean",
    "requests_running_mean",
    "encoder_queue_mean",
    "preemptions",
)

DEVICE_COLUMNS = (
    "telemetry_source",
    "device_samples",
    "gpu_util_mean_pct",
    "gpu_util_max_pct",
    "mem_util_mean_pct",
    "mem_used_mean_bytes",
    "mem_used_max_bytes",
    "mem_total_bytes",
    "power_mean_w",
    "power_max_w",
    "energy_j",
    "sm_clock_mean_mhz",
    "temp_max_c",
    "gpm_sm_util_mean_pct",
    "gpm_sm_occupancy_mean_pct",
    "gpm_tensor_active_mean_pct",
    "gpm_dram_bw_util_mean_pct",
    "host_cpu_mean_pct",
    "host_mem_used_max_bytes",
)

TENANT_TELEMETRY_COLUMNS = (
    "proc_gpu_mem_mean_bytes",
    "proc_gpu_mem_max_bytes",
    "proc_cpu_mean_pct",
    "proc_rss_mean_bytes",
    "proc_rss_max_bytes",
)


def _exp_windows(run: RunDir) -> pl.LazyFrame:
    return pl.LazyFrame(
        {
            "experiment_id": [e.id for e in run.completed],
            "window_start_s": [e.window[0] for e in run.completed],
            "window_end_s": [e.window[1] for e in run.completed],
        },
        schema={"experiment_id": pl.Utf8, "window_start_s": pl.Float64, "window_end_s": pl.Float64},
    )


def _in_window(lf: pl.LazyFrame, run: RunDir) -> pl.LazyFrame:
    return lf.join(_exp_windows(run), on="experiment_id", how="inner").filter(
        (pl.col("t_s") >= pl.col("window_start_s")) & (pl.col("t_s") < pl.col("window_end_s"))
    )


def telemetry_figures(run: RunDir) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(device figures per experiment, tenant-process figures per experiment x tenant)."""
    lf = _in_window(scan_files(run.files("telemetry.parquet"), TELEMETRY_SCHEMA), run)
    dev = (
        lf.filter(pl.col("scope") == "device")
        .group_by("experiment_id")
        .agg(
            pl.col("source").drop_nulls().first().alias("telemetry_source"),
            pl.len().alias("device_samples"),
            pl.col("gpu_util_pct").mean().alias("gpu_util_mean_pct"),
            pl.col("gpu_util_pct").max().alias("gpu_util_max_pct"),
            pl.col("mem_util_pct").mean().alias("mem_util_mean_pct"),
            pl.col("mem_used_bytes").mean().alias("mem_used_mean_bytes"),
            pl.col("mem_used_bytes").max().alias("mem_used_max_bytes"),
            pl.col("mem_total_bytes").max().alias("mem_total_bytes"),
            pl.col("power_w").mean().alias("power_mean_w"),
            pl.col("power_w").max().alias("power_max_w"),
            (pl.col("energy_j").max() - pl.col("energy_j").min()).alias("energy_j"),
            pl.col("sm_clock_mhz").mean().alias("sm_clock_mean_mhz"),
            pl.col("temp_c").max().alias("temp_max_c"),
            pl.col("gpm_sm_util_pct").mean().alias("gpm_sm_util_mean_pct"),
            pl.col("gpm_sm_occupancy_pct").mean().alias("gpm_sm_occupancy_mean_pct"),
            pl.col("gpm_tensor_active_pct").mean().alias("gpm_tensor_active_mean_pct"),
            pl.col("gpm_dram_bw_util_pct").mean().alias("gpm_dram_bw_util_mean_pct"),
            pl.col("host_cpu_pct").mean().alias("host_cpu_mean_pct"),
            pl.col("host_mem_used_bytes").max().alias("host_mem_used_max_bytes"),
        )
        .collect()
    )
    ten = (
        lf.filter(pl.col("scope") != "device")
        .rename({"scope": "tenant"})
        .group_by("experiment_id", "tenant")
        .agg(
            pl.col("proc_gpu_mem_bytes").mean().alias("proc_gpu_mem_mean_bytes"),
            pl.col("proc_gpu_mem_bytes").max().alias("proc_gpu_mem_max_bytes"),
            pl.col("proc_cpu_pct").mean().alias("proc_cpu_mean_pct"),
            pl.col("proc_rss_bytes").mean().alias("proc_rss_mean_bytes"),
            pl.col("proc_rss_bytes").max().alias("proc_rss_max_bytes"),
        )
        .collect()
    )
    dev_schema = {"experiment_id": pl.Utf8, "telemetry_source": pl.Utf8, "device_samples": pl.Int64}
    dev_schema |= {c: pl.Float64 for c in DEVICE_COLUMNS if c not in dev_schema}
    ten_schema = {"experiment_id": pl.Utf8, "tenant": pl.Utf8} | {
        c: pl.Float64 for c in TENANT_TELEMETRY_COLUMNS
    }
    return dev.cast(dev_schema), ten.cast(ten_schema)  # type: ignore[arg-type]


def server_figures(run: RunDir) -> pl.DataFrame:
    """Per experiment x tenant: window means of the scraped gauges, deltas of counters."""
    lf = _in_window(scan_files(run.files("server_metrics.parquet"), SERVER_METRICS_SCHEMA), run)
    gauges = (
        lf.filter(pl.col("metric").is_in(list(_GAUGES)))
        .with_columns(pl.col("metric").replace_strict(_GAUGES, return_dtype=pl.Utf8).alias("col"))
        .group_by("experiment_id", "tenant", "col")
        .agg(pl.col("value").mean())
    )
    counters = (
        lf.filter(pl.col("metric").is_in(list(_COUNTERS)))
        .with_columns(pl.col("metric").replace_strict(_COUNTERS, return_dtype=pl.Utf8).alias("col"))
        .sort("t_s")
        .group_by("experiment_id", "tenant", "col", "labels")
        .agg((pl.col("value").last() - pl.col("value").first()).alias("value"))
        .group_by("experiment_id", "tenant", "col")
        .agg(pl.col("value").sum())
    )
    long = pl.concat([gauges.collect(), counters.collect()])
    base = pl.DataFrame(schema={"experiment_id": pl.Utf8, "tenant": pl.Utf8})
    if long.height:
        base = long.pivot(on="col", index=["experiment_id", "tenant"], values="value")
    for c in SERVER_COLUMNS:
        if c not in base.columns:
            base = base.with_columns(pl.lit(None, dtype=pl.Float64).alias(c))
    return base.select("experiment_id", "tenant", *[pl.col(c).cast(pl.Float64) for c in SERVER_COLUMNS])


def telemetry_series(e: ExperimentRecord) -> pl.DataFrame:
    f = e.file("telemetry.parquet")
    if not f.is_file():
        return pl.DataFrame(schema=TELEMETRY_SCHEMA)
    return scan_files([f], TELEMETRY_SCHEMA).sort("t_s").collect()
