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
* latencies are over ok requests only; percentiles interpolate linearly (reports.stats)
* ``overrun_s``: how long after the window's end the last window request finished; large
  values mean the tenant could not keep up with the offered load

Telemetry device rows and tenant rows, and the scraped server metrics, are reduced over
samples with ``t_s`` inside the same window.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from reports.errors import ReportError
from reports.metrics import LATENCIES, QUANTILES
from rundir.reader import ExperimentRecord, RunDir
from rundir.schema import REQUEST_SCHEMA, SERVER_METRICS_SCHEMA, TELEMETRY_SCHEMA

REQUEST_COLUMNS = (
    "experiment_id",
    "tenant",
    "kind",
    "scheduled_s",
    "sent_s",
    "first_token_s",
    "done_s",
    "output_tokens",
    "batch_size",
    "status",
    "in_window",
)


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


# ---- scanning ----------------------------------------------------------------------------------


def scan_files(
    files: Sequence[Path], schema: dict[str, Any], columns: Sequence[str] | None = None
) -> pl.LazyFrame:
    """One lazy frame over many Parquet files with ``schema`` (only ``columns`` of it).

    Files whose stored types already match are read by one multi-file scan; the rare file
    that differs (an all-null column stored as Null, an int where a float is expected, a
    column missing) is scanned on its own and cast, so one odd file does not sink the scan;
    a missing ``experiment_id`` is the name of the file's folder.
    """
    cols = list(columns or schema)
    want = {c: schema[c] for c in cols}
    if not files:
        return pl.LazyFrame(schema=want)
    same: list[Path] = []
    odd: list[pl.LazyFrame] = []
    for f in files:
        try:
            have = pl.read_parquet_schema(f)
        except Exception as e:  # polars raises several types for a torn file
            raise ReportError(f"{f}: not a readable Parquet file: {e}") from None
        if all(c in have and have[c] == want[c] for c in cols):
            same.append(f)
            continue
        exprs = [
            (
                pl.col(c).cast(t, strict=False)
                if c in have
                else pl.lit(f.parent.name if c == "experiment_id" else None, dtype=t)
            ).alias(c)
            for c, t in want.items()
        ]
        odd.append(pl.scan_parquet(f).select(exprs))
    parts = [pl.scan_parquet(same).select(cols)] if same else []
    parts += odd
    return parts[0] if len(parts) == 1 else pl.concat(parts, how="vertical")


def scan_requests(run: RunDir, columns: Sequence[str] = REQUEST_COLUMNS) -> pl.LazyFrame:
    """One lazy frame over every completed experiment's requests (for ad-hoc queries)."""
    return scan_files(run.files("requests.parquet"), dict(REQUEST_SCHEMA), columns)


# requests per pass: every figure is per experiment (or per set, pooled over repetitions), so
# a campaign is read a few experiments at a time and peak memory stays flat as it grows
ROWS_PER_PASS = 2_000_000
# inter-token gaps outnumber requests by the output length: smaller passes
ITL_ROWS_PER_PASS = 250_000


def passes(run: RunDir, rows_per_pass: int, by_group: bool = False) -> list[list[Path]]:
    """The completed experiments' requests.parquet, cut into passes of about ``rows_per_pass``
    rows (Parquet metadata only); ``by_group`` keeps the repetitions of a set together."""
    units: dict[str, list[Path]] = {}
    for e in run.completed:
        f = e.file("requests.parquet")
        if f.is_file():
            units.setdefault(e.group_id if by_group else e.id, []).append(f)
    out: list[list[Path]] = []
    cur: list[Path] = []
    cur_rows = 0
    for files in units.values():
        n = sum(_row_count(f) for f in files)
        if cur and cur_rows + n > rows_per_pass:
            out.append(cur)
            cur, cur_rows = [], 0
        cur += files
        cur_rows += n
    if cur:
        out.append(cur)
    return out


def _row_count(f: Path) -> int:
    try:
        return int(pl.scan_parquet(f).select(pl.len()).collect().item())
    except Exception as e:  # polars raises several types for a torn file
        raise ReportError(f"{f}: not a readable Parquet file: {e}") from None


def windows_frame(run: RunDir) -> pl.DataFrame:
    """One row per completed experiment x active tenant: window, duration and SLO targets."""
    rows: list[dict[str, Any]] = []
    for e in run.completed:
        ws, we = e.window
        for t in e.active:
            slo = e.slo.get(t) or {}
            rows.append(
                {
                    "experiment_id": e.id,
                    "tenant": t,
                    "window_start_s": ws,
                    "window_end_s": we,
                    "duration_s": e.duration_s,
                    "slo_ttft_s": _ms_to_s(slo.get("ttft_ms")),
                    "slo_tpot_s": _ms_to_s(slo.get("tpot_ms")),
                    "slo_e2e_s": _ms_to_s(slo.get("e2e_ms")),
                }
            )
    schema = {
        "experiment_id": pl.Utf8,
        "tenant": pl.Utf8,
        "window_start_s": pl.Float64,
        "window_end_s": pl.Float64,
        "duration_s": pl.Float64,
        "slo_ttft_s": pl.Float64,
        "slo_tpot_s": pl.Float64,
        "slo_e2e_s": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)


def experiments_frame(run: RunDir) -> pl.DataFrame:
    """One row per completed experiment x active tenant: who, which set, which repetition."""
    rows: list[dict[str, Any]] = []
    for e in run.completed:
        for t in e.active:
            rows.append(
                {
                    "experiment_id": e.id,
                    "group_id": e.group_id,
                    "tenant": t,
                    "tenant_kind": run.tenant_kind(t),
                    "active_set": "+".join(e.active),
                    "resident_set": "+".join(e.resident),
                    "n_active": len(e.active),
                    "colocated": len(e.active) > 1,
                    "rate_scale": e.rate_scale,
                    "repetition": e.repetition,
                    "offered_rps": _offered(e, t),
                }
            )
    schema = {
        "experiment_id": pl.Utf8,
        "group_id": pl.Utf8,
        "tenant": pl.Utf8,
        "tenant_kind": pl.Utf8,
        "active_set": pl.Utf8,
        "resident_set": pl.Utf8,
        "n_active": pl.Int64,
        "colocated": pl.Boolean,
        "rate_scale": pl.Float64,
        "repetition": pl.Int64,
        "offered_rps": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)


def _offered(e: ExperimentRecord, tenant: str) -> float | None:
    w = (e.manifest.get("workloads") or {}).get(tenant) or {}
    v = w.get("offered_rate")
    return None if v is None else float(v)


def _ms_to_s(v: Any) -> float | None:
    return None if v is None else float(v) / 1e3


# ---- requests ------------------------------------------------------------------------------------


def _derived(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Per-request figures (null where they do not apply) and the SLO verdict."""
    ok = pl.col("status") == "ok"
    has_first = pl.col("first_token_s").is_not_null()
    lf = lf.with_columns(
        ok=ok.fill_null(False),
        ttft_s=pl.when(ok & has_first).then(pl.col("first_token_s") - pl.col("sent_s")),
        tpot_s=pl.when(ok & has_first & (pl.col("output_tokens") > 1)).then(
            (pl.col("done_s") - pl.col("first_token_s")) / (pl.col("output_tokens") - 1)
        ),
        e2e_s=pl.when(ok).then(pl.col("done_s") - pl.col("sent_s")),
        e2e_incl_queue_s=pl.when(ok).then(pl.col("done_s") - pl.col("scheduled_s")),
        send_delay_s=pl.col("sent_s") - pl.col("scheduled_s"),
        is_embedding=(pl.col("kind") == "embedding").fill_null(False),
    )

    def meets(value: str, target: str) -> pl.Expr:
        return pl.col(target).is_null() | pl.col(value).is_null() | (pl.col(value) <= pl.col(target))

    return lf.with_columns(
        met=pl.col("ok")
        & meets("ttft_s", "slo_ttft_s")
        & meets("tpot_s", "slo_tpot_s")
        & meets("e2e_s", "slo_e2e_s")
    )


def _stat_exprs(col: str, prefix: str) -> list[pl.Expr]:
    out = [pl.col(col).mean().alias(f"{prefix}_mean_s")]
    for name, q in QUANTILES.items():
        out.append(pl.col(col).quantile(q, interpolation="linear").alias(f"{prefix}_{name}_s"))
    return out


def request_figures(
    run: RunDir, engine: str = "streaming", rows_per_pass: int = ROWS_PER_PASS
) -> pl.DataFrame:
    """Per experiment x tenant counts, rates and latency statistics (in-window rows only)."""
    win = windows_frame(run).lazy()
    ok = pl.col("ok")
    aggs: list[pl.Expr] = [
        pl.len().alias("requests"),
        ok.sum().alias("ok"),
        (pl.col("status") == "error").sum().alias("status_error"),
        (pl.col("status") == "timeout").sum().alias("status_timeout"),
        (pl.col("status") == "dropped").sum().alias("status_dropped"),
        pl.col("met").sum().alias("met"),
        pl.col("output_tokens").filter(ok & ~pl.col("is_embedding")).sum().alias("output_tokens"),
        pl.col("batch_size")
        .fill_null(1)
        .filter(ok & pl.col("is_embedding"))
        .sum()
        .alias("embeddings"),
        (pl.col("done_s").max() - pl.col("window_end_s").first()).alias("overrun_s"),
        pl.col("send_delay_s").mean().alias("send_delay_mean_s"),
        pl.col("send_delay_s").quantile(0.99, interpolation="linear").alias("send_delay_p99_s"),
    ]
    for fam in LATENCIES:
        if fam != "itl":
            aggs += _stat_exprs(f"{fam}_s", fam)
    frames = []
    for files in passes(run, rows_per_pass):
        lf = scan_files(files, dict(REQUEST_SCHEMA), REQUEST_COLUMNS).filter(
            pl.col("in_window").fill_null(False)
        )
        lf = _derived(lf.join(win, on=["experiment_id", "tenant"], how="inner"))
        frames.append(lf.group_by("experiment_id", "tenant").agg(aggs).collect(engine=engine))  # type: ignore[call-overload]
    out = pl.concat(frames) if frames else _empty_request_figures(aggs, win)
    itl = itl_figures(run, engine)
    return out.join(itl, on=["experiment_id", "tenant"], how="left")


def _empty_request_figures(aggs: list[pl.Expr], win: pl.LazyFrame) -> pl.DataFrame:
    empty = pl.LazyFrame(schema={c: REQUEST_SCHEMA[c] for c in REQUEST_COLUMNS})
    lf = _derived(empty.join(win, on=["experiment_id", "tenant"], how="inner"))
    return lf.group_by("experiment_id", "tenant").agg(aggs).collect()


def itl_figures(
    run: RunDir, engine: str = "streaming", rows_per_pass: int = ITL_ROWS_PER_PASS
) -> pl.DataFrame:
    """Inter-token gap statistics: the ``itl_s`` lists exploded, a few experiments at a time.

    Gaps outnumber requests by the output length, and exact percentiles hold every gap of
    a group in memory, so these passes are smaller than the others.
    """
    cols = ["experiment_id", "tenant", "status", "in_window", "itl_s"]
    frames: list[pl.DataFrame] = []
    for batch in passes(run, rows_per_pass):
        lf = (
            scan_files(batch, dict(REQUEST_SCHEMA), cols)
            .filter(pl.col("in_window").fill_null(False) & (pl.col("status") == "ok"))
            .select("experiment_id", "tenant", "itl_s")
            .explode("itl_s")
            .group_by("experiment_id", "tenant")
            .agg(_stat_exprs("itl_s", "itl"))
        )
        frames.append(lf.collect(engine=engine))  # type: ignore[call-overload]
    schema = {"experiment_id": pl.Utf8, "tenant": pl.Utf8} | {
        f"itl_{s}_s": pl.Float64 for s in ("mean", "p50", "p90", "p99")
    }
    if not frames:
        return pl.DataFrame(schema=schema)
    return pl.concat(frames).cast(schema)  # type: ignore[arg-type]


# ---- telemetry and server metrics --------------------------------------------------------------


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


# ---- distributions and time series for the figures ------------------------------------------------

CDF_PROBS = [i / 100 for i in range(101)] + [0.995, 0.999]


def latency_cdf(
    run: RunDir, metric: str = "e2e_s", engine: str = "streaming", rows_per_pass: int = ROWS_PER_PASS
) -> pl.DataFrame:
    """Quantiles of a per-request latency pooled over repetitions, per group x tenant.

    Long form: group_id, tenant, p, value_s. ``metric`` is ``e2e_s`` or ``ttft_s``.
    """
    exp = experiments_frame(run).select("experiment_id", "tenant", "group_id").lazy()
    win = windows_frame(run).lazy()
    aggs = [
        pl.col(metric).quantile(p, interpolation="linear").alias(f"q{i}")
        for i, p in enumerate(CDF_PROBS)
    ]
    frames = []
    for files in passes(run, rows_per_pass, by_group=True):
        lf = (
            scan_files(files, dict(REQUEST_SCHEMA), REQUEST_COLUMNS)
            .filter(pl.col("in_window").fill_null(False))
            .join(win, on=["experiment_id", "tenant"], how="inner")
            .pipe(_derived)
            .join(exp, on=["experiment_id", "tenant"], how="inner")
            .filter(pl.col(metric).is_not_null())
        )
        frames.append(lf.group_by("group_id", "tenant").agg(aggs).collect(engine=engine))  # type: ignore[call-overload]
    wide = pl.concat(frames) if frames else pl.DataFrame()
    if wide.height == 0:
        return pl.DataFrame(schema={"group_id": pl.Utf8, "tenant": pl.Utf8, "p": pl.Float64, "value_s": pl.Float64})
    long = wide.unpivot(index=["group_id", "tenant"], variable_name="qi", value_name="value_s")
    probs = {f"q{i}": p for i, p in enumerate(CDF_PROBS)}
    return long.with_columns(
        pl.col("qi").replace_strict(probs, return_dtype=pl.Float64).alias("p")
    ).select("group_id", "tenant", "p", "value_s").sort("group_id", "tenant", "p")


def request_rate_series(e: ExperimentRecord, bin_s: float = 1.0) -> pl.DataFrame:
    """Requests sent per second, per tenant, over the whole experiment (all rows)."""
    f = e.file("requests.parquet")
    if not f.is_file():
        return pl.DataFrame(schema={"tenant": pl.Utf8, "t_s": pl.Float64, "rate_rps": pl.Float64})
    return (
        scan_files([f], dict(REQUEST_SCHEMA), ["tenant", "scheduled_s", "sent_s"])
        .with_columns(pl.coalesce("sent_s", "scheduled_s").alias("t"))
        .filter(pl.col("t").is_not_null())
        .with_columns(((pl.col("t") / bin_s).floor() * bin_s).alias("t_s"))
        .group_by("tenant", "t_s")
        .agg((pl.len() / bin_s).alias("rate_rps"))
        .sort("tenant", "t_s")
        .collect()
    )


def telemetry_series(e: ExperimentRecord) -> pl.DataFrame:
    f = e.file("telemetry.parquet")
    if not f.is_file():
        return pl.DataFrame(schema=TELEMETRY_SCHEMA)
    return scan_files([f], TELEMETRY_SCHEMA).sort("t_s").collect()
