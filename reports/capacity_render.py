"""The report's Capacity section (report.html and summary.md), which leads the report when the
run measured capacity, and its tables (tables/capacity_*.parquet|csv)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import polars as pl

from reports.capacity import (
    HURTS,
    NOT_ESTABLISHED,
    WINS,
    CapacityRun,
    bracket_words,
    capacity_words,
    tenant_note,
    w_words,
)
from reports.capacity_figures import probes_name, region_name
from reports.figures import SavedFigure
from reports.htmlkit import e, figure, table
from reports.metrics import num

INTRO = ("C_i is the highest offered rate at which tenant i alone met its SLO-attainment target "
         "(the search's bracket: C_i is its low end, the lowest rate found to fail is the high "
         "end). W = Σ r_i / C_i at the rates r_i a set sustains together along a mix: W = 1 is "
         "what dividing one GPU's time perfectly gives, W > 1 means the shared GPU serves more "
         "than dedicated GPUs would. The verdict reads W's bracket: sharing wins when it lies "
         "wholly above 1, sharing hurts when wholly below, otherwise not established (never ranked).")
_CLS = {WINS: "b-well", HURTS: "b-hurts", NOT_ESTABLISHED: "b-na"}


def _badge(v: str) -> str:
    return f'<span class="badge {_CLS.get(v, "b-na")}">{e(v)}</span>'


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{num(100 * v, 3)}%"


def tenant_rows(cap: CapacityRun) -> list[list[str]]:
    """tenant, C_i, bracket, target, probes, binds at the knee, knee probe, censoring/reason."""
    return [[r["tenant"], capacity_words(r), bracket_words(r["bracket_lo"], r["bracket_hi"])
             + ("" if r["rel_width"] is None else f" (±{num(100 * r['rel_width'], 2)}%)"),
             _pct(r["target_attainment"]), "–" if r["probes"] is None else str(r["probes"]),
             r["binding"] or "nothing saturated", r["knee_experiment"] or "–", tenant_note(r)]
            for r in cap.tenants.iter_rows(named=True)]


TENANT_HEADS = ["tenant", "capacity C_i", "bracket", "target attainment", "probes", "binds at the knee",
                "knee probe", "censored / reason"]
SET_HEADS = ["#", "set", "rates together (req/s)", "W [bracket]", "verdict", "fails first",
             "binds at the knee", "probes", "note"]


def set_rows(cap: CapacityRun) -> list[tuple[str, list[str]]]:
    """(verdict, cells) per set and mix, in rank order."""
    return [(r["verdict"], ["" if r["rank"] is None else str(r["rank"]), r["set"].replace("+", " + "),
                            r["rates"] or "–", w_words(r), r["verdict"], r["failed_first"] or "–",
                            r["binding"] or "–", "–" if r["probes"] is None else str(r["probes"]),
                            r["note"] or ""])
            for r in cap.sets.iter_rows(named=True)]


def headline(cap: CapacityRun) -> list[str]:
    """One sentence per established set (best W first), or why none is."""
    est = cap.sets.filter(pl.col("established"))
    out = [f"{r['set'].replace('+', ' + ')}: {r['verdict']}, W = {w_words(r)}"
           + (f"; {r['failed_first']} fails first" if r["failed_first"] else "")
           for r in est.iter_rows(named=True)]
    n_open = cap.sets.height - est.height
    if n_open:
        out.append(f"{n_open} set{'s' if n_open != 1 else ''} not established (W's bracket touches 1)")
    return out


def probe_rows(p: pl.DataFrame) -> list[list[str]]:
    out = []
    for r in p.sort(["index", "attempt", "tenant"]).iter_rows(named=True):
        att = "–" if r["attainment"] is None else (
            f"{_pct(r['attainment'])} [{_pct(r['ci_lo'])}, {_pct(r['ci_hi'])}]")
        dec = (r["decision"] or "–") + (f" ({r['decided_by']})" if r["decided_by"] else "") + (
            ", stopped early" if r["early_stop"] else "")
        out.append([str(r["index"]), str(r["attempt"]), r["tenant"] or "–", num(r["offered_rps"], 3),
                    "–" if r["requests"] is None else str(r["requests"]),
                    "–" if r["met"] is None else str(r["met"]), att, dec, r["limits"] or "",
                    r["reason"] or "", r["experiment_id"] or "", r["status"] or ""])
    return out


PROBE_HEADS = ["#", "attempt", "tenant", "offered req/s", "requests", "met", "attainment [CI]",
               "decision", "binds", "reason", "experiment", "status"]


def capacity_html(cap: CapacityRun, figs: Mapping[str, SavedFigure]) -> str:
    """``<section id="capacity">``: C_i, the sets by W, the regions, the probes."""
    out = ['<section id="capacity"><h2>Capacity</h2>', f"<p>{e(INTRO)}</p>"]
    heads = headline(cap)
    if heads:
        out.append('<div class="card summary"><ul>' + "".join(f"<li>{e(h)}</li>" for h in heads)
                   + "</ul></div>")
    if cap.tenants.height:
        out.append("<h3>Each tenant alone</h3>")
        out.append(table(TENANT_HEADS, [[e(c) for c in r] for r in tenant_rows(cap)], numeric=(1, 3, 4),
                         attrs='id="capacity-table"'))
    if cap.sets.height:
        out.append("<h3>Co-located sets, ranked by weighted capacity W</h3>")
        rows = [[e(c) if i != 4 else _badge(v) for i, c in enumerate(cells)] for v, cells in set_rows(cap)]
        out.append(table(SET_HEADS, rows, numeric=(0, 3, 7), attrs='id="capacity-sets-table"'))
    regions = [figure(figs.get(region_name(a, b)), f"Capacity region of {a} + {b}: each mix's bracket "
                      "along its ray (the point is the low end), the frontier through them and the "
                      "capacities alone, against the time-division line; above it, sharing wins.")
               for a, b in cap.pairs]
    if any(regions):
        out.append('<div class="grid2">' + "".join(regions) + "</div>")
    if cap.probes.height:
        out.append("<h3>Probes</h3><p class=muted>Per search: each probe's SLO attainment (pooled over "
                   "its attempts) with its Clopper-Pearson interval against the target; a probe whose "
                   "interval straddles the target was repeated.</p>")
        out.append('<div class="timelines">' + "".join(
            figure(figs.get(probes_name(s)), f"Probes of {s}") for s in cap.searches) + "</div>")
        for s in cap.searches:
            p = cap.probes.filter(pl.col("search") == s)
            out.append(f"<details><summary>{e(s)}: {p['index'].n_unique()} probes, {p.height} rows"
                       f"</summary>{table(PROBE_HEADS, [[e(c) for c in r] for r in probe_rows(p)], numeric=(0, 1, 3, 4, 5))}"
                       "</details>")
    out.append("</section>")
    return "".join(out)


def _md(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return "\n".join([row(headers), "| " + " | ".join("---" for _ in headers) + " |", *map(row, rows)])


def capacity_markdown(cap: CapacityRun) -> list[str]:
    """The section as Markdown lines (``## Capacity`` first)."""
    out = ["## Capacity", "", INTRO, ""]
    out += [f"- {h}" for h in headline(cap)]
    if cap.tenants.height:
        out += ["", "**Each tenant alone**", "", _md(TENANT_HEADS, tenant_rows(cap))]
    if cap.sets.height:
        out += ["", "**Co-located sets, ranked by weighted capacity W**", "",
                _md(SET_HEADS, [cells for _, cells in set_rows(cap)])]
    if cap.pairs:
        out += ["", "Capacity regions: " + ", ".join(f"`figures/{region_name(a, b)}.svg`" for a, b in cap.pairs)
                + f"; every probe in `tables/capacity_probes.csv` ({cap.probes.height} rows)."]
    return out + [""]


def capacity_tables(cap: CapacityRun) -> dict[str, pl.DataFrame]:
    return {"capacity_tenants": cap.tenants, "capacity_sets": cap.sets, "capacity_probes": cap.probes}


def nav_entry(cap: CapacityRun | None) -> list[tuple[str, str]]:
    return [("capacity", "Capacity")] if cap is not None else []

