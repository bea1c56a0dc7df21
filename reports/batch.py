"""The configuration limit: does a tenant's rate need more requests in flight than its
``max_num_seqs`` allows?

Little's law: requests in flight = completed rate x time in service, so per tenant and group
(means over the group's experiments) ``in_flight = throughput_rps x e2e_mean_s``, beside
the scraped ``requests_running_mean`` (vLLM's own count). When either is at least
``FLAG_FRAC`` (90%) of the tenant's ``max_num_seqs`` (campaign.json's ``spec.tenants``),
the batch limit binds: the figures measure the configuration, not the GPU, and the report
says so next to that tenant's figures. The other limits that bind in the group
(`reports.limits.binding_limits`: KV cache, GPU busy, engine CPU, ...) are listed with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from reports.limits import BATCH_LIMIT, binding_limits, describe

FLAG_FRAC = 0.90
FLAG_TEXT = "batch limit binds: this measures the configuration, not the GPU"

SCHEMA: dict[str, Any] = {
    "group_id": pl.Utf8,
    "tenant": pl.Utf8,
    "max_num_seqs": pl.Int64,
    "in_flight": pl.Float64,  # Little's law: throughput x mean E2E
    "requests_running_mean": pl.Float64,
    "batch_fraction": pl.Float64,  # the larger of the two / max_num_seqs
    "batch_limit": pl.Boolean,
    "limits": pl.Utf8,  # every limit that binds (reports.limits)
}

_MEANS = ("throughput_rps", "e2e_mean_s", "requests_running_mean", "kv_cache_usage_mean",
          "proc_cpu_mean_pct", "send_delay_p99_s")
_DEVICE = ("gpu_util_mean_pct", "gpm_dram_bw_util_mean_pct", "host_cpu_mean_pct")


def max_num_seqs(spec: Mapping[str, Any]) -> dict[str, int]:
    """tenant -> max_num_seqs for the vLLM tenants of a spec (campaign.json's ``spec``)."""
    out: dict[str, int] = {}
    for t in spec.get("tenants") or []:
        if (t.get("kind") or "vllm") == "vllm":
            out[str(t.get("name"))] = int(t.get("max_num_seqs") or 64)
    return out


def batch_table(exp: pl.DataFrame, device: pl.DataFrame, spec: Mapping[str, Any]) -> pl.DataFrame:
    """Per group x tenant: in flight against max_num_seqs, and the limits that bind."""
    if exp.height == 0:
        return pl.DataFrame(schema=SCHEMA)
    seqs = max_num_seqs(spec)
    cols = [c for c in _MEANS if c in exp.columns]
    t = exp.with_columns(
        (pl.col("throughput_rps") * pl.col("e2e_mean_s")).alias("_in_flight")
        if {"throughput_rps", "e2e_mean_s"} <= set(exp.columns) else pl.lit(None, pl.Float64).alias("_in_flight")
    )
    dcols = [c for c in _DEVICE if c in device.columns]
    if dcols:
        t = t.join(device.select("experiment_id", *dcols), on="experiment_id", how="left")
    g = t.group_by("group_id", "tenant", "tenant_kind", maintain_order=True).agg(
        pl.col("_in_flight").mean().alias("in_flight"), *[pl.col(c).mean() for c in cols + dcols])
    rows = []
    for r in g.iter_rows(named=True):
        limit = seqs.get(r["tenant"]) if r["tenant_kind"] != "encoder" else None
        found = binding_limits(r, kind=r["tenant_kind"] or "vllm", max_num_seqs=limit)
        figures = [v for v in (r.get("in_flight"), r.get("requests_running_mean")) if v is not None]
        frac = (max(figures) / limit) if limit and figures else None
        binds = (frac is not None and frac >= FLAG_FRAC) or BATCH_LIMIT in found
        if binds and BATCH_LIMIT not in found:
            found = [BATCH_LIMIT, *found]
        rows.append({
            "group_id": r["group_id"], "tenant": r["tenant"], "max_num_seqs": limit,
            "in_flight": r.get("in_flight"), "requests_running_mean": r.get("requests_running_mean"),
            "batch_fraction": frac, "batch_limit": binds, "limits": describe(found),
        })
    return pl.DataFrame(rows, schema=SCHEMA)


def flagged(batch: pl.DataFrame, pairs: Mapping[tuple[str, str], str]) -> set[tuple[str, str]]:
    """(co-located group, tenant) where the batch limit binds in either arm (``pairs`` maps a
    co-located group x tenant to its baseline group)."""
    hit = {(r["group_id"], r["tenant"]) for r in batch.filter(pl.col("batch_limit")).iter_rows(named=True)}
    out = {k for k in hit}
    out |= {(g, t) for (g, t), b in pairs.items() if (b, t) in hit}
    return out
