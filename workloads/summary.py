"""A replay's per-tenant summary, from its request rows (for the CLI and quick looks).

Only rows scheduled in the measurement window count when the rows mark one
(``in_window``); otherwise all rows do. Latencies are from ``sent_s`` (server-side
view); the dispatch lag (``sent_s - scheduled_s``) is reported on its own.
"""

from __future__ import annotations

import polars as pl

SUMMARY_COLUMNS = (
    "tenant",
    "requests",
    "ok",
    "errors",
    "timeouts",
    "dropped",
    "achieved_rate",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "tpot_p50_ms",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "lag_p99_ms",
)


def summarize_requests(rows: pl.DataFrame) -> pl.DataFrame:
    """One row a tenant: counts, achieved send rate, TTFT/TPOT/E2E and dispatch lag (ms)."""
    if rows.height and rows["in_window"].any():
        rows = rows.filter(pl.col("in_window"))
    ok = pl.col("status") == "ok"
    sent = pl.col("sent_s").drop_nulls()
    n_sent = sent.len()
    ms = 1e3
    ttft = ((pl.col("first_token_s") - pl.col("sent_s")) * ms).filter(ok)
    e2e = ((pl.col("done_s") - pl.col("sent_s")) * ms).filter(ok)
    tpot = (
        (pl.col("done_s") - pl.col("first_token_s")) * ms / (pl.col("output_tokens") - 1)
    ).filter(ok & (pl.col("output_tokens") > 1))
    lag = ((pl.col("sent_s") - pl.col("scheduled_s")) * ms).drop_nulls()
    out = (
        rows.group_by("tenant", maintain_order=True)
        .agg(
            pl.len().cast(pl.Int64).alias("requests"),
            ok.sum().cast(pl.Int64).alias("ok"),
            (pl.col("status") == "error").sum().cast(pl.Int64).alias("errors"),
            (pl.col("status") == "timeout").sum().cast(pl.Int64).alias("timeouts"),
            (pl.col("status") == "dropped").sum().cast(pl.Int64).alias("dropped"),
            pl.when(n_sent > 1)
            .then((n_sent - 1) / (sent.max() - sent.min()))
            .otherwise(None)
            .alias("achieved_rate"),
            ttft.quantile(0.5).alias("ttft_p50_ms"),
            ttft.quantile(0.99).alias("ttft_p99_ms"),
            tpot.quantile(0.5).alias("tpot_p50_ms"),
            e2e.quantile(0.5).alias("e2e_p50_ms"),
            e2e.quantile(0.99).alias("e2e_p99_ms"),
            lag.quantile(0.99).alias("lag_p99_ms"),
        )
        .sort("tenant")
    )
    return out.select(SUMMARY_COLUMNS)


def replay_totals(rows: pl.DataFrame) -> dict[str, float | int | None]:
    """Totals over all rows: scheduled, sent, each status, and the dispatch lag (s)."""
    counts = {k: int((rows["status"] == k).sum()) for k in ("ok", "error", "timeout", "dropped")}
    lag = (rows["sent_s"] - rows["scheduled_s"]).drop_nulls()
    span = rows["done_s"].max() if rows.height else None
    return {
        "scheduled": rows.height,
        "sent": int(rows["sent_s"].is_not_null().sum()),
        **counts,
        "lag_p50_s": lag.quantile(0.5) if lag.len() else None,
        "lag_p99_s": lag.quantile(0.99) if lag.len() else None,
        "lag_max_s": lag.max() if lag.len() else None,  # type: ignore[dict-item]
        "last_done_s": span,  # type: ignore[dict-item]
    }
