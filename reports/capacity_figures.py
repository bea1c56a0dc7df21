"""The capacity figures: each pair's capacity region, each search's probes, and W per set
(the strategy map of a run that measured capacity). Same style and saving as
``reports.figures``: functions return a ``Figure`` or None where there is nothing to draw.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from reports.capacity import HURTS, NOT_ESTABLISHED, WINS, CapacityRun
from reports.capacity_plan import frontier, mix_points
from reports.figures import INK, MUTED, _mpl, tenant_colors
from reports.metrics import num

if TYPE_CHECKING:
    from matplotlib.figure import Figure

VERDICT_COLOR = {WINS: "#3a9a5b", HURTS: "#c2403a", NOT_ESTABLISHED: MUTED}
WIN_SHADE = "#e6f4ec"
GRID_RAY = "#c9d1da"
# decision -> (marker, filled)
_SHAPES = {"pass": ("o", True), "fail": ("X", True), "repeat": ("o", False), "failed": ("s", False)}


def safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)


def region_name(a: str, b: str) -> str:
    return f"capacity_region_{safe(a)}__{safe(b)}"


def probes_name(search: str) -> str:
    return f"capacity_probes_{safe(search)}"


def _solo(cap: CapacityRun, t: str) -> dict[str, Any]:
    rows = cap.tenants.filter(pl.col("tenant") == t)
    return rows.row(0, named=True) if rows.height else {}


def capacity_region(cap: CapacityRun, a: str, b: str) -> Figure | None:
    """(r_a, r_b) in req/s: the axes points (C_a, 0), (0, C_b) and every mix's bracket along
    its ray (the low end is the point, the segment reaches the high end), the frontier through
    the low ends, and the time-division line r_a / C_a + r_b / C_b = 1; above it sharing wins."""
    pts = frontier(cap.data, a, b)
    if not pts:
        return None
    plt = _mpl()
    sa, sb = _solo(cap, a), _solo(cap, b)
    ca, cb = pts[0][0], pts[-1][1]
    mixes = mix_points(cap.data, a, b)
    w_by_key = {r["set"]: r for r in cap.sets.iter_rows(named=True)}
    xmax = 1.15 * max([sa.get("bracket_hi") or ca, *(p.hi[0] for p in mixes), ca, 1e-9])
    ymax = 1.15 * max([sb.get("bracket_hi") or cb, *(p.hi[1] for p in mixes), cb, 1e-9])
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    if ca > 0 and cb > 0:
        ax.fill_between([0, ca, xmax], [cb, 0, 0], [ymax, ymax, ymax], color=WIN_SHADE, lw=0, zorder=0)
        ax.plot([ca, 0], [0, cb], color=INK, lw=1.1, ls="--", label="time division: r_a/C_a + r_b/C_b = 1")
        ax.text(0.97, 0.97, "sharing wins (W > 1)", transform=ax.transAxes, ha="right", va="top",
                color=VERDICT_COLOR[WINS], fontsize=9, fontweight="bold")
        ax.text(0.03 * xmax, 0.03 * ymax, "sharing hurts\n(W < 1)", ha="left", va="bottom",
                color=VERDICT_COLOR[HURTS], fontsize=8)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], color="#2f6db5", lw=1.8, marker="",
            label="frontier (low end of each bracket)")
    for t, row, horiz in ((a, sa, True), (b, sb, False)):
        lo, hi = row.get("bracket_lo") or 0.0, row.get("bracket_hi")
        hi = lo if hi is None or not math.isfinite(hi) else hi
        x, y = (lo, 0.0) if horiz else (0.0, lo)
        err = [[0], [hi - lo]]
        ax.errorbar(x, y, xerr=err if horiz else None, yerr=None if horiz else err, fmt="s",
                    color="#2f6db5", ms=6, capsize=3, clip_on=False, zorder=4)
        mark = "≥ " if str(row.get("censored") or "").startswith("at least") else ""
        ax.annotate(f"C_{t} {mark}{num(lo, 3)}", (x, y), textcoords="offset points",
                    xytext=(4, 6) if horiz else (6, 2), fontsize=7.5, color=INK)
    for p in mixes:
        r = w_by_key.get(p.key, {})
        c = VERDICT_COLOR.get(r.get("verdict") or NOT_ESTABLISHED, MUTED)
        ang_x, ang_y = math.cos(p.angle), math.sin(p.angle)
        reach = 1.05 * max(xmax, ymax)
        ax.plot([0, reach * ang_x], [0, reach * ang_y], color=GRID_RAY, lw=0.7, ls=":", zorder=1)
        ax.plot([p.lo[0], p.hi[0]], [p.lo[1], p.hi[1]], color=c, lw=3.0, solid_capstyle="butt", zorder=3)
        ax.scatter([p.lo[0]], [p.lo[1]], s=40, color=c, zorder=5, edgecolor="white", linewidth=0.8)
        w_txt = "–" if r.get("W") is None else num(r["W"], 3)
        ax.annotate(f"W {w_txt}" + (" ≥" if str(p.censored or "").startswith("at least") else ""),
                    p.lo, textcoords="offset points", xytext=(6, 4), fontsize=7.5, color=c)
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, ymax)
    ax.set_xlabel(f"{a}: sustained req/s")
    ax.set_ylabel(f"{b}: sustained req/s")
    ax.set_title(f"Capacity region of {a} + {b}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, fontsize=7.5)
    fig.tight_layout()
    return fig



def probe_attainment(cap: CapacityRun, search: str, tenants: Sequence[str]) -> Figure | None:
    """One search: each probe's SLO attainment (pooled over its attempts) against the offered
    rate (log), with its Clopper-Pearson interval, the target line and the decision: filled
    circle pass, cross fail, hollow circle an attempt that was repeated, hollow square a
    probe that failed (a tenant died). A search alone shades its final bracket."""
    p = cap.probes.filter(pl.col("search") == search)
    if p.height == 0:
        return None
    plt = _mpl()
    names = [t for t in tenants if t in set(p["tenant"].drop_nulls())]
    names += [t for t in p["tenant"].drop_nulls().unique(maintain_order=True) if t not in names]
    colors = tenant_colors(list(tenants) + [t for t in names if t not in tenants])
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    seen: set[str] = set()
    for t in names:
        rows = p.filter(pl.col("tenant") == t).sort(["index", "attempt"])
        xs = [r for r in rows.iter_rows(named=True) if r["offered_rps"] and r["offered_rps"] > 0]
        last = {}
        for r in xs:  # the latest attempt at a scale holds the pooled attainment and the decision
            last[r["scale"]] = r
        line = sorted(last.values(), key=lambda r: r["offered_rps"])
        ax.plot([r["offered_rps"] for r in line if r["attainment"] is not None],
                [r["attainment"] for r in line if r["attainment"] is not None],
                color=colors[t], lw=0.8, alpha=0.6, label=t if len(names) > 1 else None)
        for r in xs:
            failed = r["status"] not in (None, "completed") or r["decision"] == "failed"
            final = last.get(r["scale"]) is r
            dec = "failed" if failed else (r["decision"] if final else "repeat")
            marker, filled = _SHAPES.get(dec or "repeat", ("o", False))
            y = 0.0 if failed or r["attainment"] is None else r["attainment"]
            if not failed and r["ci_lo"] is not None and r["ci_hi"] is not None and final:
                ax.errorbar(r["offered_rps"], y, yerr=[[max(0.0, y - r["ci_lo"])], [max(0.0, r["ci_hi"] - y)]],
                            fmt="none", ecolor=colors[t], capsize=2.5, lw=1.0)
            ax.scatter([r["offered_rps"]], [y], marker=marker, s=36 if final else 22,
                       facecolor=colors[t] if filled else "white", edgecolor=colors[t],
                       linewidth=1.3, zorder=4, label=None if dec in seen else dec)
            seen.add(dec or "")
    for tgt in sorted(set(p["target"].drop_nulls().to_list())):
        ax.axhline(tgt, color="#c2403a", lw=1.0, ls="--")
        ax.text(1.0, tgt, f" target {num(100 * tgt, 3)}%", transform=ax.get_yaxis_transform(),
                color="#c2403a", fontsize=7.5, va="center", ha="left")
    solo = cap.tenants.filter(pl.col("tenant") == search)
    if solo.height and solo["bracket_lo"][0] and solo["bracket_hi"][0]:
        lo, hi = solo["bracket_lo"][0], solo["bracket_hi"][0]
        if math.isfinite(hi) and hi > lo:
            ax.axvspan(lo, hi, color="#2f6db5", alpha=0.12, lw=0)
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.05)
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{100 * v:.0f}%"))
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: num(v, 2)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("offered req/s (log scale)" + (", each tenant's own" if len(names) > 1 else ""))
    ax.set_ylabel("SLO attainment")
    kind = "alone" if len(names) == 1 and search == names[0] else "co-located"
    ax.set_title(f"{search.replace('+', ' + ')} ({kind}): attainment by offered rate")
    ax.legend(loc="lower left", fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def w_map(sets: pl.DataFrame) -> Figure | None:
    """Per set and mix: W with its bracket against W = 1 (time division), coloured by the
    verdict; an end only bounded (a censored capacity) runs to the edge as a dotted line."""
    if sets.height == 0 or sets["W"].drop_nulls().len() == 0:
        return None
    s = sets.filter(pl.col("W").is_not_null()).sort("W")
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(7.6, 1.2 + 0.5 * s.height))
    vals = [v for c in ("W", "W_lo", "W_hi") for v in s[c].drop_nulls().to_list()]
    lo_x, hi_x = 0.0, max([1.3, *vals]) * 1.12
    ax.axvline(1.0, color="#c2403a", lw=1.0, ls="--")
    ax.text(1.0, 0.01, " W = 1: time division", transform=ax.get_xaxis_transform(), color="#c2403a",
            fontsize=7.5, va="bottom")
    labels = []
    for y, r in enumerate(s.iter_rows(named=True)):
        c = VERDICT_COLOR.get(r["verdict"], MUTED)
        w, wl, wh = r["W"], r["W_lo"], r["W_hi"]
        ax.plot([wl if wl is not None else lo_x, wh if wh is not None else hi_x], [y, y], color=c, lw=1.4,
                ls="-" if wl is not None and wh is not None else ":")
        for end in (wl, wh):
            if end is not None:
                ax.plot([end, end], [y - 0.12, y + 0.12], color=c, lw=1.4)
        ax.scatter([w], [y], s=55, color=c, zorder=3)
        ax.annotate(r["verdict"], (w, y), textcoords="offset points", xytext=(0, 6), ha="center",
                    fontsize=7.5, color=c)
        labels.append(r["set"].replace("+", " + "))
    ax.set_yticks(range(s.height), labels, fontsize=8)
    ax.set_xlim(lo_x, hi_x)
    ax.set_ylim(-0.7, s.height - 0.3)
    ax.set_xlabel("weighted capacity W = Σ r_i / C_i (bracket from the search)")
    ax.set_title("Weighted capacity per set against time division (W = 1)")
    fig.tight_layout()
    return fig


def capacity_figures(cap: CapacityRun, tenants: Sequence[str]) -> dict[str, tuple[str, Figure]]:
    """name -> (title, figure): every pair's region and every search's probes."""
    out: dict[str, tuple[str, Figure]] = {}
    for a, b in cap.pairs:
        fig = capacity_region(cap, a, b)
        if fig is not None:
            out[region_name(a, b)] = (f"capacity region of {a} + {b}", fig)
    for s in cap.searches:
        fig = probe_attainment(cap, s, tenants)
        if fig is not None:
            out[probes_name(s)] = (f"probes of {s}", fig)
    return out
