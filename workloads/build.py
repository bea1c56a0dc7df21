"""The campaign runner's entry point: one tenant's trace for one experiment.

`build_trace` turns a workload spec into the requests one tenant receives over
[0, duration_s): a synthetic workload is generated; a trace workload is imported,
transformed, compressed by the rate scale and repeated (``loop``) to fill the window.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from workloads.errors import WorkloadError
from workloads.generators import mean_rate, synthesize
from workloads.importers import cached_trace
from workloads.spec import SyntheticWorkload, TraceWorkload
from workloads.trace import KINDS, empty_trace, trace_period, trace_rate
from workloads.transforms import apply_transforms

Workload = SyntheticWorkload | TraceWorkload


def build_trace(
    workload: Workload,
    *,
    tenant: str,
    kind: str,
    duration_s: float,
    seed: int,
    rate_scale: float = 1.0,
    base_dir: Path,
    tokenizer: str | Path | None = None,
) -> pl.DataFrame:
    """The requests ``tenant`` receives over [0, duration_s), sorted by arrival.

    ``rate_scale`` multiplies the offered rate: a synthetic process runs faster, a trace
    is compressed in time. ``seed`` (0 is a seed like any other) drives the synthetic
    processes; a trace file is deterministic. A trace file with a ``tenant`` column that
    names this tenant contributes only those rows; otherwise all its rows are this
    tenant's. ``tokenizer`` (a folder) counts ShareGPT text; without it, characters / 4.
    """
    if kind not in KINDS:
        raise WorkloadError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not duration_s > 0:
        raise WorkloadError(f"duration must be above 0, not {duration_s}")
    if not rate_scale > 0:
        raise WorkloadError(f"rate scale must be above 0, not {rate_scale}")
    if isinstance(workload, SyntheticWorkload):
        return synthesize(
            workload,
            duration_s=duration_s,
            seed=seed,
            tenant=tenant,
            kind=kind,
            rate_scale=rate_scale,
            base_dir=base_dir,
        )
    df = _transformed(workload, tenant, base_dir, tokenizer)
    if df.height == 0:
        return empty_trace()
    df = df.with_columns(pl.col("arrival_s") / rate_scale)
    df = _fill(df, duration_s, workload.loop)
    batch = pl.col("batch_size").fill_null(1) if kind == "embedding" else pl.lit(None)
    out = pl.col("output_tokens") if kind == "completion" else pl.lit(0)
    return df.with_columns(
        pl.lit(tenant, dtype=pl.Utf8).alias("tenant"),
        pl.lit(kind, dtype=pl.Utf8).alias("kind"),
        out.cast(pl.Int64).alias("output_tokens"),
        batch.cast(pl.Int64).alias("batch_size"),
    )


def offered_rate(
    workload: Workload,
    rate_scale: float = 1.0,
    *,
    base_dir: Path | None = None,
    tokenizer: str | Path | None = None,
) -> float:
    """Mean requests per second the workload offers at ``rate_scale``.

    For a trace this is its rate after the transforms ((n - 1) / span), which needs the
    file unless ``transforms.rate`` fixes it.
    """
    if isinstance(workload, SyntheticWorkload):
        return mean_rate(workload.arrival, rate_scale)
    if workload.transforms.rate is not None:
        return workload.transforms.rate * rate_scale
    df = _transformed(workload, None, base_dir or Path.cwd(), tokenizer)
    rate = trace_rate(df["arrival_s"])
    return 0.0 if rate is None or not math.isfinite(rate) else rate * rate_scale


def _transformed(
    w: TraceWorkload, tenant: str | None, base_dir: Path, tokenizer: str | Path | None
) -> pl.DataFrame:
    path = Path(w.path).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    df = cached_trace(path, w.format, w.skip_bad_rows, w.skip_failed, tokenizer)
    if tenant is not None and (df["tenant"] == tenant).any():
        df = df.filter(pl.col("tenant") == tenant)
        df = df.with_columns(pl.col("arrival_s") - pl.col("arrival_s").min())
    return apply_transforms(df, w.transforms)


def _fill(df: pl.DataFrame, duration_s: float, loop: bool) -> pl.DataFrame:
    """Repeat the trace end to end (period: last arrival + one mean gap) until duration_s."""
    a = df["arrival_s"].to_numpy()
    if loop and a.size:
        period = trace_period(a)
        if period <= 0:
            raise WorkloadError("cannot loop a trace whose requests all arrive at 0")
        copies = math.ceil(duration_s / period)
        if copies > 1:
            if copies * a.size > 50_000_000:
                raise WorkloadError(
                    f"looping this trace to {duration_s} s would make {copies * a.size} requests"
                )
            offsets = np.repeat(np.arange(copies) * period, a.size)
            df = pl.concat([df] * copies).with_columns(
                pl.Series("arrival_s", np.tile(a, copies) + offsets)
            )
    return df.filter(pl.col("arrival_s") < duration_s)
