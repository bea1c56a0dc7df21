"""The rows of a run directory (docs/run-directory.md): ``requests.jsonl`` / ``requests.parquet``
(one row a request), ``telemetry.parquet``, ``server_metrics.parquet`` and the campaign's
``probes.parquet`` (one row a capacity probe attempt and tenant). The runner writes
them, the reports read them: one definition for both.

Times are seconds from the experiment's monotonic anchor (``time.perf_counter_ns``
converted once, when the row is made). The wall-clock anchor lives in the manifest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

Schema = Mapping[str, pl.DataType | type[pl.DataType]]

REQUEST_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "experiment_id": pl.Utf8,
    "tenant": pl.Utf8,
    "request_id": pl.Int64,
    "kind": pl.Utf8,  # completion | chat | embedding
    "scheduled_s": pl.Float64,  # when the trace said it is due
    "sent_s": pl.Float64,  # when the request went out
    "first_token_s": pl.Float64,  # first content token (embedding: null)
    "done_s": pl.Float64,  # last byte received, or the error
    "input_tokens": pl.Int64,  # as sent (trace)
    "output_tokens": pl.Int64,  # as reported by the server's usage
    "expected_output_tokens": pl.Int64,  # as asked (trace)
    "batch_size": pl.Int64,  # embedding: items in the request
    "itl_s": pl.List(pl.Float64),  # gaps between streamed token chunks
    "status": pl.Utf8,  # ok | error | timeout | dropped
    "http_status": pl.Int64,
    "error": pl.Utf8,
    "warmup": pl.Boolean,  # scheduled inside the warm-up window
    "in_window": pl.Boolean,  # scheduled inside the measurement window
}

REQUEST_STATUSES = ("ok", "error", "timeout", "dropped")

# one row a sample and scope (device, a tenant, or pid:<n>); see docs/run-directory.md
TELEMETRY_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "experiment_id": pl.Utf8,
    "t_s": pl.Float64,  # seconds from the experiment's anchor
    "scope": pl.Utf8,  # device | <tenant> | pid:<n>
    "source": pl.Utf8,  # nvml | host
    # device rows, NVML
    "gpu_util_pct": pl.Float64,
    "mem_util_pct": pl.Float64,
    "mem_used_bytes": pl.Int64,
    "mem_total_bytes": pl.Int64,
    "power_w": pl.Float64,
    "energy_j": pl.Float64,
    "sm_clock_mhz": pl.Float64,
    "temp_c": pl.Float64,
    "gpm_sm_util_pct": pl.Float64,
    "gpm_sm_occupancy_pct": pl.Float64,
    "gpm_tensor_active_pct": pl.Float64,
    "gpm_dram_bw_util_pct": pl.Float64,
    # device rows, both sources
    "host_cpu_pct": pl.Float64,
    "host_mem_used_bytes": pl.Int64,
    # tenant rows
    "proc_gpu_mem_bytes": pl.Int64,
    "proc_cpu_pct": pl.Float64,
    "proc_rss_bytes": pl.Int64,
}

# scraped /metrics, long form
SERVER_METRICS_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "experiment_id": pl.Utf8,
    "t_s": pl.Float64,
    "tenant": pl.Utf8,
    "metric": pl.Utf8,
    "labels": pl.Utf8,  # JSON object text
    "value": pl.Float64,
}


# probes.parquet: one row per capacity probe attempt x tenant (orchestrator.capacity)
PROBE_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "search": pl.Utf8,  # "a" (alone), "a+b" (a set along its first mix), "a+b#1" (mix 1)
    "kind": pl.Utf8,  # solo | set
    "index": pl.Int64,  # the probe's place in its search (0, 1, ...)
    "attempt": pl.Int64,  # repeated attempts at one scale: 0, 1, ...
    "experiment_id": pl.Utf8,
    "status": pl.Utf8,  # the experiment's: completed | failed | interrupted
    "tenant": pl.Utf8,
    "scale": pl.Float64,  # alone: multiplier of the workload's rate; a set: the mix's scale
    "offered_rps": pl.Float64,
    "requests": pl.Int64,  # in the measurement window, pooled over the attempts so far
    "met": pl.Int64,  # of those, ok and within every bound of the SLO
    "attainment": pl.Float64,  # met / requests
    "ci_lo": pl.Float64,  # Clopper-Pearson interval of the attainment
    "ci_hi": pl.Float64,
    "target": pl.Float64,
    "decision": pl.Utf8,  # pass | fail | repeat | failed (the set's, on every tenant's row)
    "decided_by": pl.Utf8,  # interval | point (attempts ran out) | early (hopeless) | ""
    "early_stop": pl.Boolean,  # the probe was stopped early: its SLO could no longer be met
    "reason": pl.Utf8,
    "limits": pl.Utf8,  # what binds in this probe (reports.limits), joined by ", "
}


def empty_frame(schema: Schema = REQUEST_SCHEMA) -> pl.DataFrame:
    """No rows, every column of ``schema`` (default: the requests')."""
    return pl.DataFrame(schema=dict(schema))


def empty_requests_frame() -> pl.DataFrame:
    return empty_frame(REQUEST_SCHEMA)


def rows_to_frame(rows: list[dict[str, Any]], schema: Schema = REQUEST_SCHEMA) -> pl.DataFrame:
    """Rows (dicts) to a frame with exactly ``schema`` (default: ``REQUEST_SCHEMA``); missing
    keys become null."""
    if not rows:
        return empty_frame(schema)
    cols = {name: [r.get(name) for r in rows] for name in schema}
    return pl.DataFrame(cols, schema=dict(schema))
