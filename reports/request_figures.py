"""Per experiment x tenant request figures: counts, latency statistics, the SLO verdict, and
the distributions and rates the figures draw.

Only rows with ``in_window`` true count; percentiles interpolate linearly (reports.stats).
The definitions of the rates and of goodput are in `reports.aggregate`'s docstring.

Censoring: a request that is not ok (error, timeout, dropped) has an infinite latency in
every percentile (TTFT and TPOT of completions, E2E of every request): the percentile runs
over a column where those rows are +inf, so an overloaded tenant's p99 reads infinite
instead of low, and its SLO attainment counts the request as a miss. Means of latencies are
over ok requests only (an infinite mean says nothing); verdicts never use them. The
inter-token gaps are the gaps of ok requests.
"""

from __future__ import annotations

import polars as pl

from reports.metrics import LATENCIES, QUANTILES
from reports.scan import (
    ITL_ROWS_PER_PASS,
    REQUEST_COLUMNS,
    ROWS_PER_PASS,
    experiments_frame,
    passes,
    scan_files,
    windows_frame,
)
from rundir.reader import ExperimentRecord, RunDir
from rundir.schema import REQUEST_SCHEMA


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
    inf = pl.lit(float("inf"))
    failed = ~pl.col("ok")
    completion = ~pl.col("is_embedding")
    lf = lf.with_columns(
        ttft_censored_s=pl.when(failed & completion).then(inf).otherwise(pl.col("ttft_s")),
        tpot_censored_s=pl.when(failed & completion).then(inf).otherwise(pl.col("tpot_s")),
        e2e_censored_s=pl.when(failed).then(inf).otherwise(pl.col("e2e_s")),
        e2e_incl_queue_censored_s=pl.when(failed).then(inf).otherwise(pl.col("e2e_incl_queue_s")),
    )

    def meets(value: str, target: str) -> pl.Expr:
        return pl.col(target).is_null() | pl.col(value).is_null() | (pl.col(value) <= pl.col(target))

    return lf.with_columns(
        met=pl.col("ok")
        & meets("ttft_s", "slo_ttft_s")
        & meets("tpot_s", "slo_tpot_s")
        & meets("e2e_s", "slo_e2e_s")
    )


def _stat_exprs(col: str, prefix: str, censored: str | None = None) -> list[pl.Expr]:
    """The mean of ``col`` (ok requests) and its percentiles, over ``censored`` where given
    (the column where requests that are not ok are +inf)."""
    out = [pl.col(col).mean().alias(f"{prefix}_mean_s")]
    qcol = pl.col(censored or col)
    for name, q in QUANTILES.items():
        out.append(qcol.quantile(q, interpolation="linear").alias(f"{prefix}_{name}_s"))
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
            aggs += _stat_exprs(f"{fam}_s", fam, f"{fam}_censored_s")
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
