"""Co-located sets as measured: what predictions are scored against and attribution reads.

A measured set is every completed experiment with more than one active tenant (experiments
and co-located capacity probes alike) that shares its active set and every tenant's offered
rate: repetitions (and repeated probe attempts) of one set at one load pool into one set.
Its figures are pooled over its requests exactly as a profile rung's are
(``reports.profiles``), so a prediction and its measurement are the same kind of number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from reports.profiles import (
    DEVICE_FIGURES,
    REQUEST_FIGURES,
    TENANT_FIGURES,
    Arm,
    TenantProfile,
    make_arm,
    mean_sd,
    rate_key,
)
from rundir.reader import RunDir


def set_name(active_set: str) -> str:
    """``a + b`` for ``a+b``."""
    return " + ".join(active_set.split("+"))


@dataclass(frozen=True)
class MeasuredSet:
    """One co-located set at one load, repetitions pooled."""

    name: str  # e.g. "llama-a + minilm x2", or "... at llama-a=3.1, minilm=12" (probes)
    tenants: tuple[str, ...]
    rates: dict[str, float]  # offered req/s
    rate_scale: float | None  # the campaign's rate scale, when every experiment shares it
    experiments: tuple[str, ...]
    arms: dict[str, Arm]
    figures: dict[str, dict[str, Any]]  # tenant -> pooled request figures + mean tenant figures
    device: dict[str, Any]  # mean device figures over the experiments
    probe: bool


def measured_sets(run: RunDir, exp: pl.DataFrame, dev: pl.DataFrame, lat: pl.DataFrame,
                  profiles: Mapping[str, TenantProfile]) -> list[MeasuredSet]:
    """Every co-located set at every load it ran at, in the experiment table's order."""
    co = exp.filter(pl.col("n_active") > 1)
    if co.height == 0:
        return []
    probes = {e.id for e in run.completed if e.manifest.get("probe")}
    keys: dict[str, tuple[str, tuple[tuple[str, float], ...]]] = {}
    for gid, part in co.group_by("experiment_id", maintain_order=True):
        recs = part.to_dicts()
        rates = tuple((r["tenant"], rate_key(r["offered_rps"], r["rate_scale"])) for r in recs)
        keys[str(gid[0])] = (recs[0]["active_set"], rates)
    groups: dict[tuple[str, tuple[tuple[str, float], ...]], list[str]] = {}
    for eid, key in keys.items():
        groups.setdefault(key, []).append(eid)
    devcols = [c for c in DEVICE_FIGURES if c in dev.columns]
    out = []
    for (active, rates), ids in groups.items():
        tenants = tuple(active.split("+"))
        rows = co.filter(pl.col("experiment_id").is_in(ids))
        scales = set(rows["rate_scale"])
        scale = float(scales.pop()) if len(scales) == 1 else None
        arms, figs = {}, {}
        for t in tenants:
            kind = run.tenant_kind(t)
            arm = make_arm(lat, t, kind, ids)
            arms[t] = arm
            mine = rows.filter(pl.col("tenant") == t)
            f: dict[str, Any] = {c: mean_sd(mine[c].to_list())[0]
                                 for c in TENANT_FIGURES if c in mine.columns}
            for c in REQUEST_FIGURES[:-1]:
                f[c] = None if kind == "encoder" and not c.startswith("e2e") else arm.quantile(c)
            p = profiles.get(t)
            f["slo_attainment"] = arm.attainment(p.slo) if p else mean_sd(
                mine["slo_attainment"].to_list())[0]
            figs[t] = f
        d = dev.filter(pl.col("experiment_id").is_in(ids))
        device = {c: mean_sd(d[c].to_list())[0] for c in devcols}
        probe = any(i in probes for i in ids)
        rate_map = dict(rates)
        name = set_name(active)
        if probe or scale is None:
            name += " at " + ", ".join(f"{t}={v:.3g}" for t, v in rate_map.items())
        elif scale != 1.0:
            name += f" x{scale:g}"
        out.append(MeasuredSet(name, tenants, rate_map, scale, tuple(ids), arms, figs, device, probe))
    return out
