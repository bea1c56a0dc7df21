"""What the report reads, and how: lazy Polars scans over a campaign's Parquet files, in passes.

Lazy scans cover the ``requests.parquet`` of every completed experiment, a pass of a few
experiments at a time (``passes``: every figure is per experiment, or per set pooled over its
repetitions, so passes never split a group and peak memory stays flat however large the
campaign). Beside them, the frames read from the manifests: each experiment x active tenant's
measurement window, [warmup_s, warmup_s + duration_s), with its SLO targets
(``windows_frame``), and who, which set and which repetition it was (``experiments_frame``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from reports.errors import ReportError
from rundir.reader import ExperimentRecord, RunDir
from rundir.schema import REQUEST_SCHEMA

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
