"""Placement: target loads onto as few GPUs as the predicted capacities allow (bin packing on W).

Each tenant's target load becomes items: its load as a fraction of its solo capacity,
f_i = target_i / C_i; a tenant with f_i > 1 needs ⌈f_i⌉ replicas, each carrying an equal
share. First-fit decreasing: items in decreasing fraction, each placed on the first GPU
whose set, with it added, the model predicts to cover its loads (the predicted co-located
capacity along the GPU's load mix reaches scale 1: every tenant meets its SLO target at its
load); else on a new GPU. A tenant is never placed twice on one GPU. The dedicated baseline
is one GPU per tenant replica, Σ ⌈f_i⌉.

Every shared GPU's prediction has an interval (``reports.explain.predict_capacity``); the
pairings to verify first are the least certain: those whose interval's lower end does not
cover the loads, then the widest intervals, then extrapolated ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reports.errors import ReportError
from reports.explain import Explanation, predict_capacity
from reports.explain_render import scale_text
from reports.metrics import num


@dataclass(frozen=True)
class Item:
    tenant: str
    rps: float  # the load this replica carries
    fraction: float  # rps / solo capacity


@dataclass
class Gpu:
    items: list[Item] = field(default_factory=list)
    prediction: dict[str, Any] | None = None  # predict_capacity along the load mix

    @property
    def tenants(self) -> list[str]:
        return [i.tenant for i in self.items]

    @property
    def loads(self) -> dict[str, float]:
        return {i.tenant: i.rps for i in self.items}


@dataclass(frozen=True)
class Placement:
    gpus: list[Gpu]
    dedicated: int  # GPUs with one tenant replica each
    items: list[Item]
    verify: list[int]  # indices of shared GPUs, least certain first
    model: str
    notes: list[str] = field(default_factory=list)  # solo capacities that are only bounds

    @property
    def needed(self) -> int:
        return len(self.gpus)


def items_for(x: Explanation, targets: Mapping[str, float]) -> list[Item]:
    """Each tenant's target as replicas of at most one solo capacity each."""
    out = []
    for t, rps in targets.items():
        if t not in x.profiles:
            raise ReportError(f"--targets {t}: no solo profile for it in the profiles run "
                              f"(profiled: {', '.join(x.profiles) or 'none'})")
        cap = x.capacities[t].rps
        if not cap:
            raise ReportError(f"--targets {t}: its solo capacity is unknown or zero "
                              f"({x.capacities[t].censored or 'no rung met the SLO target'})")
        f = rps / cap
        k = max(1, math.ceil(f - 1e-9))
        out += [Item(t, rps / k, f / k) for _ in range(k)]
    return sorted(out, key=lambda i: -i.fraction)


def covers(x: Explanation, loads: Mapping[str, float]) -> dict[str, Any] | None:
    """The prediction along the load mix when it reaches scale 1, else None."""
    try:
        c = predict_capacity(x, list(loads), dict(loads))
    except (KeyError, ValueError):
        return None
    return c if (c["scale"] or 0.0) >= 1.0 else None


def place(x: Explanation, targets: Mapping[str, float]) -> Placement:
    """First-fit decreasing of the targets' replicas onto GPUs (see the module docstring)."""
    items = items_for(x, targets)
    gpus: list[Gpu] = []
    for it in items:
        for g in gpus:
            if it.tenant in g.tenants:
                continue
            pred = covers(x, {**g.loads, it.tenant: it.rps})
            if pred is not None:
                g.items.append(it)
                g.prediction = pred
                break
        else:
            gpus.append(Gpu([it], None))
    shared = [i for i, g in enumerate(gpus) if len(g.items) > 1]
    notes = [f"the solo capacity of {t} is only bounded ({x.capacities[t].censored}): "
             "its fractions are read against that bound" for t in targets
             if x.capacities[t].censored]
    for k, g in enumerate(gpus):
        if len(g.items) == 1 and covers(x, g.loads) is None:
            notes.append(f"GPU {k}: {g.items[0].tenant} alone at {num(g.items[0].rps, 3)} req/s "
                         "is predicted to miss its SLO target")
    return Placement(gpus, len(items), items, sorted(shared, key=lambda i: _doubt(gpus[i])),
                     x.model.name, notes)


def _doubt(g: Gpu) -> tuple[int, float, int]:
    """Sort key, least certain first: interval's low end below the load, width, extrapolated."""
    p = g.prediction or {}
    lo, hi = p.get("scale_lo"), p.get("scale_hi")
    below = 0 if lo is None or lo < 1.0 else 1
    width = -(math.log(hi / lo) if lo and hi and lo > 0 else math.inf)
    return below, width, 0 if p.get("censored") else 1


def placement_text(p: Placement) -> str:
    lines = [f"model: {p.model}",
             f"GPUs needed: {p.needed} co-located, against {p.dedicated} with one GPU per tenant"
             + ("" if p.dedicated == len({i.tenant for i in p.items}) else " replica"), ""]
    for k, g in enumerate(p.gpus):
        who = ", ".join(f"{i.tenant} {num(i.rps, 3)} req/s ({num(100 * i.fraction, 3)}% of its "
                        "capacity)" for i in g.items)
        line = f"GPU {k}: {who}"
        pr = g.prediction
        if pr is not None:
            line += f"; predicted headroom (scale of its loads) {scale_text(pr)}"
            if pr.get("censored"):
                line += f" ({pr['censored']})"
        lines.append(line)
    lines += [f"note: {n}" for n in p.notes]
    if p.verify:
        lines += ["", "verify first (least certain predictions):"]
        for n, k in enumerate(p.verify, 1):
            g = p.gpus[k]
            pr = g.prediction or {}
            why = ("its interval's low end does not cover the loads"
                   if pr.get("scale_lo") is None or pr["scale_lo"] < 1.0 else "widest interval")
            lines.append(f"  {n}. GPU {k}: {' + '.join(g.tenants)} ({why})")
    return "\n".join(lines)
