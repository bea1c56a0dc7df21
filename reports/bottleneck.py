"""Bottlenecks of each tenant alone, named from what is measured to saturate as load grows.

For every rung of a tenant's profile (``reports.profiles``: the tenant alone at one offered
rate, repetitions pooled) the reading is ``reports.limits.binding_limits`` on the rung's
figures (thresholds documented there: batch limit, KV cache, GPU busy, memory bandwidth,
engine CPU, host CPU, the client's dispatch lag), or "nothing saturated". Beside it:

* **nearest**: the limit whose figure is closest to its threshold (figure / threshold, a
  *load fraction*; 1 or more binds), so "nothing saturated" says how far from it a tenant is;
* **rising**: the trend over the ladder up to this rung: the limit whose load fraction grew
  the most from the tenant's lowest rung, with its two values (which figure rises toward its
  limit as load grows);
* **clock**: the rung's mean SM clock against the tenant's busiest rung's, since a lightly
  loaded GPU lowers its clocks (flagged beyond ``CLOCK_TOLERANCE``).

The whole-device figures (GPU busy, host CPU, GPM) of a solo experiment are the tenant's
own: nothing else had load.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from reports import limits as L
from reports.metrics import num
from reports.profiles import TenantProfile

CLOCK_TOLERANCE = 0.03  # relative SM clock difference that is flagged

SCHEMA: dict[str, Any] = {
    "tenant": pl.Utf8,
    "tenant_kind": pl.Utf8,
    "offered_rps": pl.Float64,
    "rate_scale": pl.Float64,
    "experiments": pl.Int64,
    "slo_attainment": pl.Float64,
    "binding": pl.Utf8,
    "nearest": pl.Utf8,
    "nearest_fraction": pl.Float64,
    "rising": pl.Utf8,
    "rising_from": pl.Float64,
    "rising_to": pl.Float64,
    "sm_clock_mean_mhz": pl.Float64,
    "clock_vs_busiest": pl.Float64,
    "clock_flag": pl.Boolean,
    "reading": pl.Utf8,
}


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f  # NaN: not measured


def load_fractions(row: Mapping[str, Any], kind: str, max_num_seqs: int | None) -> dict[str, float]:
    """Each measured limit's figure over its threshold (``reports.limits``): 1 or more binds."""
    out: dict[str, float] = {}

    def put(limit: str, key: str, threshold: float | None, scale: float = 1.0) -> None:
        v = _num(row.get(key))
        if v is not None and threshold:
            out[limit] = v * scale / threshold

    if kind == "vllm":
        put(L.BATCH_LIMIT, "requests_running_mean",
            L.BATCH_FRAC * max_num_seqs if max_num_seqs else None)
        put(L.KV_CACHE, "kv_cache_usage_mean", L.KV_FRAC)
        if L.judges_engine_cpu(row, kind):
            put(L.ENGINE_CPU, "proc_cpu_mean_pct", L.ENGINE_CORES, 0.01)
    put(L.GPU_BUSY, "gpu_util_mean_pct", L.GPU_BUSY_PCT)
    put(L.MEMORY_BANDWIDTH, "gpm_dram_bw_util_mean_pct", L.DRAM_PCT)
    put(L.HOST_CPU, "host_cpu_mean_pct", L.HOST_CPU_PCT)
    put(L.CLIENT, "send_delay_p99_s", L.CLIENT_LAG_S)
    return out


def show_limit(limit: str, fraction: float, row: Mapping[str, Any], kind: str,
               max_num_seqs: int | None) -> str:
    """``engine CPU 0.82 core (binds at 0.9)`` from a load fraction."""
    if limit == L.ENGINE_CPU:
        return f"engine CPU {num(fraction * L.ENGINE_CORES, 2)} core (binds at {L.ENGINE_CORES:g})"
    if limit == L.BATCH_LIMIT:
        return (f"requests running {num(fraction * L.BATCH_FRAC * (max_num_seqs or 0), 2)} of "
                f"max_num_seqs {max_num_seqs}")
    if limit == L.KV_CACHE:
        return f"KV cache {num(100 * fraction * L.KV_FRAC, 2)}% (binds at {100 * L.KV_FRAC:g}%)"
    if limit == L.CLIENT:
        return f"client lag p99 {num(1e3 * fraction * L.CLIENT_LAG_S, 2)} ms (binds at 50 ms)"
    pct = {L.GPU_BUSY: L.GPU_BUSY_PCT, L.MEMORY_BANDWIDTH: L.DRAM_PCT, L.HOST_CPU: L.HOST_CPU_PCT}
    return f"{limit} {num(fraction * pct[limit], 2)}% (binds at {pct[limit]:g}%)"


def bottleneck_rows(p: TenantProfile) -> list[dict[str, Any]]:
    """The readings of one tenant's rungs, lowest rate first."""
    if not p.rungs:
        return []
    mns = p.rungs[0].row.get("max_num_seqs")
    fracs = [load_fractions(r.row, p.kind, mns) for r in p.rungs]
    busiest = p.rungs[-1].row.get("sm_clock_mean_mhz")
    out = []
    for i, rung in enumerate(p.rungs):
        row = rung.row
        binding = L.binding_limits(row, kind=p.kind, max_num_seqs=mns)
        near = max(fracs[i].items(), key=lambda kv: kv[1], default=None)
        rise = _rising(fracs[0], fracs[i]) if i > 0 else None
        clock = row.get("sm_clock_mean_mhz")
        rel = clock / busiest - 1.0 if clock and busiest else None
        rec: dict[str, Any] = {
            "tenant": p.tenant, "tenant_kind": p.kind, "offered_rps": rung.rate,
            "rate_scale": row.get("rate_scale"), "experiments": row.get("experiments"),
            "slo_attainment": row.get("slo_attainment"), "binding": L.describe(binding),
            "nearest": near[0] if near else None, "nearest_fraction": near[1] if near else None,
            "rising": rise[0] if rise else None, "rising_from": rise[1] if rise else None,
            "rising_to": rise[2] if rise else None, "sm_clock_mean_mhz": clock,
            "clock_vs_busiest": rel,
            "clock_flag": None if rel is None else abs(rel) > CLOCK_TOLERANCE,
        }
        rec["reading"] = reading(rec, row, binding, mns)
        out.append(rec)
    return out


def _rising(first: Mapping[str, float], now: Mapping[str, float]) -> tuple[str, float, float] | None:
    grew = [(k, first[k], v) for k, v in now.items() if k in first and v > first[k]]
    if not grew:
        return None
    return max(grew, key=lambda g: g[2] - g[1])


def reading(rec: Mapping[str, Any], row: Mapping[str, Any], binding: list[str],
            mns: int | None) -> str:
    """One sentence: what binds (with its figure), or nothing and what is nearest, the trend."""
    kind = str(rec["tenant_kind"])
    head = f"{rec['tenant']} alone at {num(rec['offered_rps'])} req/s"
    fr = load_fractions(row, kind, mns)
    if binding:
        what = "; ".join(show_limit(b, fr[b], row, kind, mns) for b in binding if b in fr)
        txt = f"{head}: {L.describe(binding)} binds ({what})"
    elif rec["nearest"]:
        txt = (f"{head}: nothing saturated; nearest its limit: "
               f"{show_limit(rec['nearest'], rec['nearest_fraction'], row, kind, mns)}")
    else:
        txt = f"{head}: nothing saturated (no resource figure was measured)"
    if rec["rising"]:
        txt += (f"; rising with load: {rec['rising']} from {num(100 * rec['rising_from'], 2)}% "
                f"to {num(100 * rec['rising_to'], 2)}% of its limit")
    if rec["clock_flag"]:
        txt += (f"; SM clock {num(rec['sm_clock_mean_mhz'])} MHz, "
                f"{num(100 * rec['clock_vs_busiest'], 2)}% against its busiest rung")
    return txt


def bottleneck_table(profiles: Mapping[str, TenantProfile]) -> pl.DataFrame:
    """Per tenant x offered rate, from the tenant's solo profile (``tables/bottleneck``)."""
    rows = [r for p in profiles.values() for r in bottleneck_rows(p)]
    if not rows:
        return pl.DataFrame(schema=SCHEMA)
    return pl.DataFrame(rows, schema=SCHEMA, strict=False)
