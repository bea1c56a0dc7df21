"""Bottleneck reading: does a tenant, alone on the GPU, lean on memory bandwidth or compute?

From the isolated experiments' GPM samples (Hopper and newer) averaged over the window:
DRAM bandwidth utilization against tensor-core activity (and SM utilization).

* both DRAM bandwidth and SM utilization under ``LIGHT_PCT``: light load, neither is near
  its limit, so co-tenants have room
* DRAM bandwidth at least ``LEAN`` x tensor activity: leans on memory bandwidth (typical of
  decoding at small batch); two such tenants compete for the same resource
* tensor activity at least ``LEAN`` x DRAM bandwidth: leans on compute (prefill, encoders)
* otherwise: balanced

Without GPM samples (a CPU run, a GPU older than Hopper, or GPM turned off) it says so and
does not guess; on host runs it gives the tenant's CPU use instead.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from reports.metrics import num

LIGHT_PCT = 20.0
LEAN = 1.2

SCHEMA: dict[str, Any] = {
    "tenant": pl.Utf8,
    "rate_scale": pl.Float64,
    "experiments": pl.Int64,
    "telemetry_source": pl.Utf8,
    "gpm_sm_util_mean_pct": pl.Float64,
    "gpm_dram_bw_util_mean_pct": pl.Float64,
    "gpm_tensor_active_mean_pct": pl.Float64,
    "gpm_sm_occupancy_mean_pct": pl.Float64,
    "gpu_util_mean_pct": pl.Float64,
    "proc_cpu_mean_pct": pl.Float64,
    "host_cpu_mean_pct": pl.Float64,
    "leans_on": pl.Utf8,
    "reading": pl.Utf8,
}

_GPM = (
    "gpm_sm_util_mean_pct",
    "gpm_dram_bw_util_mean_pct",
    "gpm_tensor_active_mean_pct",
    "gpm_sm_occupancy_mean_pct",
)


def leaning(sm: float | None, dram: float | None, tensor: float | None) -> str:
    """``memory bandwidth``, ``compute``, ``balanced``, ``light load`` or ``no GPM``."""
    if sm is None and dram is None and tensor is None:
        return "no GPM"
    sm_, dram_, tensor_ = sm or 0.0, dram or 0.0, tensor or 0.0
    if max(sm_, dram_) < LIGHT_PCT:
        return "light load"
    if dram_ >= LEAN * tensor_:
        return "memory bandwidth"
    if tensor_ >= LEAN * dram_:
        return "compute"
    return "balanced"


def reading(r: dict[str, Any]) -> str:
    t = r["tenant"]
    lean = r["leans_on"]
    if lean == "no GPM":
        src = r.get("telemetry_source")
        why = (
            "this was a host (CPU) run"
            if src == "host"
            else "GPM needs a Hopper-class GPU or newer and telemetry.gpm on"
        )
        txt = f"{t}: no GPM samples on this machine ({why}), so no bandwidth/compute reading"
        cpu = r.get("proc_cpu_mean_pct")
        if cpu is not None:
            txt += f"; alone it used {num(cpu)}% CPU ({num(cpu / 100, 2)} cores) on average"
        return txt
    figs = (
        f"DRAM bandwidth {num(r['gpm_dram_bw_util_mean_pct'])}%, "
        f"tensor active {num(r['gpm_tensor_active_mean_pct'])}%, "
        f"SM {num(r['gpm_sm_util_mean_pct'])}%"
    )
    what = {
        "light load": "light load: neither memory bandwidth nor compute is near its limit",
        "memory bandwidth": "leans on memory bandwidth",
        "compute": "leans on compute",
        "balanced": "uses memory bandwidth and compute about evenly",
    }[lean]
    return f"{t}: {what} ({figs})"


def bottleneck_table(exp: pl.DataFrame, device: pl.DataFrame) -> pl.DataFrame:
    """Per tenant x rate scale, from the experiments where the tenant ran alone."""
    iso = device.filter(~pl.col("active_set").str.contains("+", literal=True))
    if iso.height == 0:
        return pl.DataFrame(schema=SCHEMA)
    cpu = (
        exp.filter(pl.col("n_active") == 1)
        .group_by("tenant", "rate_scale")
        .agg(pl.col("proc_cpu_mean_pct").mean())
    )
    g = (
        iso.rename({"active_set": "tenant"})
        .group_by("tenant", "rate_scale", maintain_order=True)
        .agg(
            pl.len().cast(pl.Int64).alias("experiments"),
            pl.col("telemetry_source").drop_nulls().first(),
            *[pl.col(c).mean() for c in _GPM],
            pl.col("gpu_util_mean_pct").mean(),
            pl.col("host_cpu_mean_pct").mean(),
        )
        .join(cpu, on=["tenant", "rate_scale"], how="left")
    )
    rows = []
    for r in g.iter_rows(named=True):
        r["leans_on"] = leaning(
            r["gpm_sm_util_mean_pct"], r["gpm_dram_bw_util_mean_pct"], r["gpm_tensor_active_mean_pct"]
        )
        r["reading"] = reading(r)
        rows.append(r)
    return pl.DataFrame(rows, schema=SCHEMA).sort("tenant", "rate_scale")
