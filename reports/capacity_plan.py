"""GPUs for target loads from ``capacity.json``: one GPU per tenant against co-location.

*Dedicated*: tenant i needs ``ceil(T_i / C_i)`` GPUs of its own. *Co-located*: a pair's
capacity region is bounded by the frontier, the piecewise-linear line through its axes
points (C_a, 0), (0, C_b) and the measured point (r_a, r_b) of every mix, ordered by angle
(SCIENCE.md, "Capacity region"). The frontier is drawn in (r_a / C_a, r_b / C_b) space;
a linear change of each axis maps straight segments onto straight segments, so it is
computed here in req/s, which is the same line. Along the targets' direction T, one GPU
carries the frontier's point t x T, and ``ceil(1 / t)`` GPUs, each given T / n, carry all
of it. A set of more than two tenants has only its measured mix(es), so it is planned only
when the targets' direction matches one of them (within ``DIRECTION_TOLERANCE``), else it
is "not measured".

Every figure is conservative: the low end of each bracket, C_i and the co-located scale
λ alike (the highest rate, or scale, that passed). It assumes what the search assumes,
that a tenant given less than a passing rate still passes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# a set's measured mix matches the targets when max_i(T_i / r_i) / min_i(T_i / r_i) - 1 <= this
DIRECTION_TOLERANCE = 0.05
BASIS = ("conservative: every C_i and every co-located scale λ at the low end of its bracket, "
         "the highest that passed")
_EPS = 1e-12


def _ceil(x: float) -> int:
    """ceil, forgiving float noise (3.0000000001 GPUs is 3)."""
    return math.ceil(x - 1e-9)


def _bracket(entry: Mapping[str, Any], key: str = "capacity_rps") -> tuple[float | None, float | None]:
    br = entry.get("bracket")
    v = entry.get(key)
    lo = br[0] if isinstance(br, list | tuple) and len(br) == 2 else v
    hi = br[1] if isinstance(br, list | tuple) and len(br) == 2 else v
    return (None if lo is None else float(lo)), (None if hi is None else float(hi))


def solo_low(capacity_json: Mapping[str, Any], tenant: str) -> float | None:
    """C_i at the low end of its bracket (None when the tenant was not searched)."""
    e = (capacity_json.get("tenants") or {}).get(tenant)
    return None if e is None else _bracket(e)[0]


@dataclass(frozen=True)
class MixPoint:
    """One measured mix of a pair: its key, the rates at the low and high end of the λ
    bracket, and the angle of its ray in req/s space (from the mix itself, so a mix whose
    capacity is 0 keeps its direction)."""

    key: str
    mix_index: int
    lo: tuple[float, float]
    hi: tuple[float, float]
    angle: float
    W: float | None
    censored: str | None


def set_entries(capacity_json: Mapping[str, Any], tenants: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """capacity.json's sets of exactly these tenants (any order), by mix index."""
    want = set(tenants)
    out = [(k, dict(v)) for k, v in (capacity_json.get("sets") or {}).items()
           if set(v.get("tenants") or k.split("#")[0].split("+")) == want]
    return sorted(out, key=lambda kv: int(kv[1].get("mix_index") or 0))


def mix_points(capacity_json: Mapping[str, Any], a: str, b: str) -> list[MixPoint]:
    """The measured mixes of the pair (a, b), ordered by angle from a's axis to b's."""
    out = []
    for key, s in set_entries(capacity_json, (a, b)):
        mix = s.get("mix") or {}
        if mix.get(a) is None or mix.get(b) is None:
            continue
        ma, mb = float(mix[a]), float(mix[b])
        lo, hi = _bracket(s, "scale")
        lo = 0.0 if lo is None else lo
        hi = lo if hi is None else hi
        out.append(MixPoint(key, int(s.get("mix_index") or 0), (lo * ma, lo * mb), (hi * ma, hi * mb),
                            math.atan2(mb, ma), s.get("W"), s.get("censored")))
    return sorted(out, key=lambda p: p.angle)


def frontier(capacity_json: Mapping[str, Any], a: str, b: str,
             end: str = "lo") -> list[tuple[float, float, float]]:
    """(r_a, r_b, angle) from (C_a, 0) through every mix to (0, C_b), at the low (or high)
    end of the brackets. Of two mixes along one ray, the lower point is kept."""
    ea = (capacity_json.get("tenants") or {}).get(a) or {}
    eb = (capacity_json.get("tenants") or {}).get(b) or {}
    k = 0 if end == "lo" else 1
    ca, cb = _bracket(ea)[k], _bracket(eb)[k]
    if ca is None or cb is None:
        return []
    pts: list[tuple[float, float, float]] = [(ca, 0.0, 0.0)]
    for p in mix_points(capacity_json, a, b):
        x, y = p.lo if end == "lo" else p.hi
        if abs(p.angle - pts[-1][2]) < _EPS:
            if math.hypot(x, y) < math.hypot(pts[-1][0], pts[-1][1]):
                pts[-1] = (x, y, p.angle)
            continue
        pts.append((x, y, p.angle))
    pts.append((0.0, cb, math.pi / 2))
    return pts


def along(points: Sequence[tuple[float, float, float]], direction: tuple[float, float]) -> float | None:
    """t such that t x direction lies on the piecewise-linear frontier (0 where the
    frontier passes through the origin on that ray); None without a frontier or a
    direction."""
    dx, dy = direction
    if len(points) < 2 or (dx <= 0 and dy <= 0):
        return None
    theta = math.atan2(dy, dx)
    norm = math.hypot(dx, dy)
    for x, y, ang in points:
        if abs(ang - theta) < _EPS:
            return math.hypot(x, y) / norm
    for (px, py, pa), (qx, qy, qa) in zip(points, points[1:], strict=False):
        if pa < theta < qa:
            ex, ey = qx - px, qy - py
            den = dx * ey - dy * ex
            if abs(den) < _EPS:  # both ends on the ray's line: the origin
                return 0.0
            return max(0.0, (px * ey - py * ex) / den)
    return None


def _dedicated(capacity_json: Mapping[str, Any], targets: Mapping[str, float]) -> dict[str, Any]:
    per: dict[str, dict[str, Any]] = {}
    for t, target in targets.items():
        c = solo_low(capacity_json, t)
        entry = (capacity_json.get("tenants") or {}).get(t) or {}
        row: dict[str, Any] = {"target_rps": target, "capacity_rps": c, "gpus": None, "note": None}
        if target <= 0:
            row["gpus"] = 0
        elif c is None:
            row["note"] = f"{t} was not searched alone"
        elif c <= 0:
            row["note"] = f"{t} meets its SLO at no rate searched" + (
                f" ({entry['reason']})" if entry.get("reason") else "")
        else:
            row["gpus"] = _ceil(target / c)
        per[t] = row
    counts = [r["gpus"] for r in per.values()]
    total = None if any(n is None for n in counts) else sum(counts)
    return {"gpus": total, "tenants": per}


def _pair(capacity_json: Mapping[str, Any], a: str, b: str, targets: Mapping[str, float]) -> dict[str, Any]:
    pts = frontier(capacity_json, a, b)
    n_mix = len(mix_points(capacity_json, a, b))
    how = f"along the targets' direction on the frontier of {n_mix} measured mix{'es' if n_mix != 1 else ''}"
    t = along(pts, (targets[a], targets[b]))
    out: dict[str, Any] = {"how": how, "gpus": None, "per_gpu_rps": None, "note": None}
    if t is None:
        out["note"] = "no frontier (a capacity alone is missing)"
    elif t <= 0:
        out["note"] = "the pair meets its SLOs at no scale searched along this direction"
    else:
        out["gpus"] = _ceil(1.0 / t)
        out["per_gpu_rps"] = {a: t * targets[a], b: t * targets[b]}
    return out


def _larger(capacity_json: Mapping[str, Any], tenants: Sequence[str],
            targets: Mapping[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {"how": "along its measured mix", "gpus": None, "per_gpu_rps": None,
                           "note": "not measured: the targets' direction matches no measured mix"}
    for key, s in set_entries(capacity_json, tenants):
        lo = _bracket(s, "scale")[0] or 0.0
        mix = s.get("mix") or {}
        if any(mix.get(t) is None for t in tenants):
            continue
        rates = {t: lo * float(mix[t]) for t in tenants}
        ratios = [targets[t] / float(mix[t]) for t in tenants if float(mix[t]) > 0]
        if len(ratios) != len(tenants) or min(ratios) <= 0 or max(ratios) / min(ratios) - 1 > DIRECTION_TOLERANCE:
            continue
        out["how"] = f"along its measured mix ({key})"
        if lo <= 0:
            out["note"] = "the set meets its SLOs at no scale searched along this mix"
            return out
        out["gpus"] = max(_ceil(targets[t] / rates[t]) for t in tenants)
        out["per_gpu_rps"], out["note"] = rates, None
        return out
    return out


def gpus_needed(capacity_json: Mapping[str, Any], targets: Mapping[str, float]) -> dict[str, Any]:
    """Dedicated GPUs (sum of ceil(T_i / C_i)) against co-locating each measured set whose
    tenants all have a target (the other targets on GPUs of their own).

    Returns ``{"targets", "basis", "dedicated": {"gpus", "tenants": {t: {target_rps,
    capacity_rps, gpus, note}}}, "co_located": [{"set", "tenants", "how", "gpus",
    "per_gpu_rps", "dedicated_rest", "total_gpus", "note"}], "best": {"plan", "gpus"}}``;
    a count is None where it cannot be had (a capacity of 0, a direction not measured).
    Raises ``ValueError`` for a target that is negative or names a tenant capacity.json
    does not know.
    """
    known = set(capacity_json.get("tenants") or {}) | {
        t for s in (capacity_json.get("sets") or {}).values() for t in s.get("tenants") or ()}
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise ValueError(f"no capacity measured for {', '.join(unknown)} "
                         f"(capacity.json knows {', '.join(sorted(known)) or 'no tenant'})")
    bad = [t for t, v in targets.items() if not v >= 0]
    if bad:
        raise ValueError(f"targets must be req/s >= 0: {', '.join(bad)}")
    targets = {t: float(v) for t, v in targets.items()}
    dedicated = _dedicated(capacity_json, targets)
    groups: list[tuple[str, ...]] = []
    for k, s in (capacity_json.get("sets") or {}).items():
        ts = tuple(s.get("tenants") or k.split("#")[0].split("+"))
        if set(ts) <= set(targets) and set(ts) not in [set(g) for g in groups]:
            groups.append(ts)
    co = []
    for ts in groups:
        plan = _pair(capacity_json, ts[0], ts[1], targets) if len(ts) == 2 else _larger(
            capacity_json, ts, targets)
        if all(targets[t] == 0 for t in ts):
            plan |= {"gpus": 0, "note": None}
        rest = {t: dedicated["tenants"][t]["gpus"] for t in targets if t not in ts}
        total = None if plan["gpus"] is None or any(v is None for v in rest.values()) else (
            plan["gpus"] + sum(rest.values()))
        co.append({"set": "+".join(ts), "tenants": list(ts)} | plan
                  | {"dedicated_rest": rest, "total_gpus": total})
    options = [("dedicated", dedicated["gpus"])] + [(f"{c['set']} co-located", c["total_gpus"]) for c in co]
    valid = [o for o in options if o[1] is not None]
    best = min(valid, key=lambda o: o[1]) if valid else None
    return {"targets": targets, "basis": BASIS, "dedicated": dedicated, "co_located": co,
            "best": None if best is None else {"plan": best[0], "gpus": best[1]}}
