"""Attribution in co-located sets: which tenant's use of which resource grew, and what binds.

For every measured co-located set (``reports.colocated``) and each of its tenants, against
the same tenant alone at the same offered rate (its profile read at that rate,
``TenantProfile.demand_at``):

* the tenant's own resources: engine (process-tree) CPU in cores, requests running and
  waiting, KV cache use. One *grew* when it rose by more than ``GROWTH`` (relative) and by
  more than its noise floor (``FLOOR``) over the solo figure;
* the device, which telemetry sees whole: the set's GPU busy (NVML) and GPM SM activity
  against the sum of its tenants' solo figures at their rates (more than the sum: the
  tenants slowed each other, so each one's work took longer; less: they overlapped); the
  host's CPU in cores against the sum of the tenants' engines alone;
* the limits that bind in the set (``reports.limits.binding_limits`` on the tenant's figures
  with the set's device figures), or "nothing saturated";
* clocks: the set's mean SM clock against the alone arms' (the mean of its tenants' solo
  clocks), flagged beyond 3% (``reports.bottleneck.CLOCK_TOLERANCE``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from reports import limits as L
from reports.bottleneck import CLOCK_TOLERANCE
from reports.colocated import MeasuredSet
from reports.metrics import num
from reports.profiles import TenantProfile

GROWTH = 0.10
# (figure, what it is, unit scale, unit, the smallest absolute change that counts)
OWN: tuple[tuple[str, str, float, str, float], ...] = (
    ("proc_cpu_mean_pct", "engine CPU", 0.01, " cores", 0.05),
    ("requests_running_mean", "requests running", 1.0, "", 0.5),
    ("requests_waiting_mean", "requests waiting", 1.0, "", 0.5),
    ("kv_cache_usage_mean", "KV cache", 100.0, "%", 2.0),
)
DEVICE: tuple[tuple[str, str], ...] = (
    ("gpu_util_mean_pct", "GPU busy"),
    ("gpm_sm_util_mean_pct", "SM activity (GPM)"),
    ("host_cpu_mean_pct", "host CPU"),
)

SCHEMA: dict[str, Any] = {
    "set": pl.Utf8,
    "active_set": pl.Utf8,
    "rate_scale": pl.Float64,
    "tenant": pl.Utf8,
    "offered_rps": pl.Float64,
    "binding": pl.Utf8,
    "grew": pl.Utf8,
    "device": pl.Utf8,
    "sm_clock_mean_mhz": pl.Float64,
    "clock_vs_alone": pl.Float64,
    "clock_flag": pl.Boolean,
    "reading": pl.Utf8,
}


def grown(measured: Mapping[str, Any], p: TenantProfile, rate: float) -> list[str]:
    """``engine CPU 0.41 → 0.63 cores (+54%)`` for each of the tenant's resources that grew."""
    out = []
    for fig, what, scale, unit, floor in OWN:
        m = measured.get(fig)
        solo = p.demand_at(fig, rate)
        if m is None or solo is None:
            continue
        # more than GROWTH, with a margin for float noise (means over samples are summed in
        # parallel, so a rise of exactly GROWTH must not flip between two builds)
        if (m - solo) * scale > floor and m - (1 + GROWTH) * solo > 1e-9 * abs(solo):
            rel = f" (+{num(100 * (m / solo - 1), 2)}%)" if solo > 0 else ""
            out.append(f"{what} {num(solo * scale, 2)} → {num(m * scale, 2)}{unit}{rel}")
    return out


def device_note(s: MeasuredSet, profiles: Mapping[str, TenantProfile], cores: float) -> str:
    """``GPU busy 71% against 58% for its tenants alone (sum)`` for each GPU figure; on the
    host, its CPU in cores against the sum of the tenants' engines alone (whole-host CPU of a
    solo experiment also holds the client and whatever else ran, so it does not add up)."""
    parts = []
    for fig, what in DEVICE:
        m = s.device.get(fig)
        if m is None:
            continue
        src = "proc_cpu_mean_pct" if fig == "host_cpu_mean_pct" else fig
        solo = [profiles[t].demand_at(src, s.rates[t]) for t in s.tenants if t in profiles]
        if not solo or any(v is None for v in solo):
            continue
        total = sum(v for v in solo if v is not None)
        if fig == "host_cpu_mean_pct":
            parts.append(f"host CPU {num(m * cores / 100, 2)} of {cores:g} cores against "
                         f"{num(total / 100, 2)} for its tenants' engines alone (sum)")
        else:
            parts.append(f"{what} {num(m, 2)}% against {num(total, 2)}% for its tenants alone (sum)")
    return "; ".join(parts)


def _alone_clock(s: MeasuredSet, profiles: Mapping[str, TenantProfile]) -> float | None:
    vals = [profiles[t].demand_at("sm_clock_mean_mhz", s.rates[t]) for t in s.tenants
            if t in profiles]
    vals2 = [v for v in vals if v]
    return sum(vals2) / len(vals2) if vals2 else None


def attribution_rows(s: MeasuredSet, profiles: Mapping[str, TenantProfile],
                     cores: float = 1.0) -> list[dict[str, Any]]:
    dnote = device_note(s, profiles, cores)
    clock = s.device.get("sm_clock_mean_mhz")
    alone = _alone_clock(s, profiles)
    rel = clock / alone - 1.0 if clock and alone else None
    out = []
    for t in s.tenants:
        p = profiles.get(t)
        f = s.figures[t]
        kind = p.kind if p else "vllm"
        mns = p.rungs[0].row.get("max_num_seqs") if p and p.rungs else None
        binding = L.describe(L.binding_limits({**f, **s.device}, kind=kind, max_num_seqs=mns))
        grew = grown(f, p, s.rates[t]) if p else []
        rec: dict[str, Any] = {
            "set": s.name, "active_set": "+".join(s.tenants), "rate_scale": s.rate_scale,
            "tenant": t, "offered_rps": s.rates[t], "binding": binding,
            "grew": "; ".join(grew) or None, "device": dnote or None,
            "sm_clock_mean_mhz": clock, "clock_vs_alone": rel,
            "clock_flag": None if rel is None else abs(rel) > CLOCK_TOLERANCE,
        }
        txt = f"{t} in {s.name}: {binding}"
        txt += "; grew against alone at the same rate: " + "; ".join(grew) if grew else (
            "; none of its own resources grew against alone at the same rate" if p else
            "; no solo profile to compare with")
        if rec["clock_flag"] and rel is not None:
            txt += f"; SM clock {num(100 * rel, 2)}% against the alone arms"
        rec["reading"] = txt
        out.append(rec)
    return out


def attribution_table(sets: Sequence[MeasuredSet], profiles: Mapping[str, TenantProfile],
                      cores: float = 1.0) -> pl.DataFrame:
    """Per measured co-located set x tenant (``tables/attribution``); ``cores``: the host's."""
    rows = [r for s in sets for r in attribution_rows(s, profiles, cores)]
    if not rows:
        return pl.DataFrame(schema=SCHEMA)
    return pl.DataFrame(rows, schema=SCHEMA, strict=False)
