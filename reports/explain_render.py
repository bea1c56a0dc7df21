"""The report's bottleneck and prediction section (report.html and summary.md) and its figure.

``explain_html`` and ``explain_markdown`` render an ``reports.explain.Explanation``;
``predicted_vs_measured`` draws the leave-one-out predictions against the measurements
(saved through ``reports.figures.save`` like every figure).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any

import polars as pl

from reports.explain import Explanation, predict_capacity
from reports.metrics import fmt, label, num
from reports.prediction import HOST, MPS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from reports.figures import SavedFigure

NOISE_NOTE = (
    "repetition noise: each solo experiment's figures against the other repetitions' at the "
    "same load, the error no model of these profiles can beat on one repetition (a measured "
    "set pools its n repetitions, so its own noise is about √n smaller)."
)
ANCHORS = (
    "Anchors (SCIENCE.md): Parallax (ACM TACO) 4.3% MAPE for latency under time-slicing and "
    "6.1% under MPS on kernel-level workloads; an ISORC 2026 study 6-9% on seen and 14.5% on "
    "unseen kernels; models built on utilization alone can be off by more than 60%. None of "
    "them models continuous batching."
)
FIGURE_NAMES = {
    "tpot_p50_s": "TPOT p50",
    "ttft_p99_s": "TTFT p99",
    "e2e_p99_s": "E2E p99",
    "slo_attainment": "SLO attainment",
    "capacity_scale": "co-located capacity (scale)",
    "W": "weighted capacity W",
    "all": "all figures",
}


def model_paragraph(x: Explanation) -> str:
    """The model in one paragraph, as the report states it."""
    m = x.model
    demand = {HOST: "the engine's process-tree CPU in cores, against the host's "
                    f"{m.cores:g} cores",
              MPS: "its GPM SM activity (NVML GPU busy without GPM)"}.get(
        m.mode, "its NVML GPU busy fraction")
    fluid = {HOST: "Σ demand / cores", MPS: "Σ SM activity"}.get(m.mode)
    lock = (" × L_i" if m.mode == HOST else "")
    stretch = (f"s_i = max({'1' if fluid is None else f'1, {fluid}'}, 1 + κ{lock} × the "
               f"co-tenants' demand), κ = {m.kappa:.2f}")
    why_lock = (" On the host L_i is how much a tenant feels its co-tenants before the cores "
                "are full: cores - 1 for the encoder, whose torch threads compute in lockstep "
                "over every core (a co-tenant on any core stalls its batch), 0 for a vLLM CPU "
                "engine, one thread that the scheduler moves to a free core."
                if m.mode == HOST else "")
    return (
        f"Model: {m.name}. Each tenant's demand on the shared executor at its offered rate is "
        f"read off its solo profile ({demand}); a tenant's service is stretched by {stretch}."
        f"{why_lock} A tenant whose service takes s times longer behaves like itself alone at "
        "rate r·s on a clock s times slower, so its latency figures are s × its solo figures "
        "at r·s and its SLO attainment is that of its solo requests at r·s against bounds / s "
        "(solo figures interpolated on the log scale between the profile's loads; beyond the "
        "highest load they are extrapolated, and marked so). Co-located capacity along a mix "
        "is the largest scale at which every predicted attainment meets its target; "
        f"W = Σ r_i / C_i. Why this model: {x.why}."
    )


def _e(v: Any) -> str:
    return escape("" if v is None else str(v))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = (),
           attrs: str = "") -> str:
    nums = set(numeric)
    head = "".join(f'<th{" class=n" if i in nums else ""}>{h}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i in nums else ""}>{c}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="tw"><table {attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def value(figure: str, v: float | None) -> str:
    if v is None:
        return "–"
    if math.isinf(v):
        return "∞ (censored)"
    if figure in ("capacity_scale", "W"):
        return num(v, 3)
    return fmt(figure, v)


def scale_text(c: dict[str, Any]) -> str:
    """``0.84 [0.71, 0.93]``, ``≥ 2.15`` (a lower bound) or ``0``."""
    sc = c.get("scale")
    if sc is None:
        return "–"
    if (c.get("censored") or "").startswith("at least"):
        return f"≥ {num(sc, 3)}"
    txt = num(sc, 3)
    if c.get("scale_lo") is not None and c.get("scale_hi") is not None:
        txt += f" [{num(c['scale_lo'], 3)}, {num(c['scale_hi'], 3)}]"
    return txt


def w_text(c: dict[str, Any]) -> str:
    if c.get("W") is None:
        return c.get("W_note") or "–"
    txt = num(c["W"], 3)
    if c.get("W_lo") is not None and c.get("W_hi") is not None:
        txt += f" [{num(c['W_lo'], 3)}, {num(c['W_hi'], 3)}]"
    return txt


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{num(v, 3)}%"


def score_rows(x: Explanation) -> list[list[str]]:
    """The chosen model's leave-one-out rows: set, tenant, figure, predicted, measured, APE."""
    s = x.scores.filter(pl.col("model") == x.model_label)
    out = []
    for r in s.iter_rows(named=True):
        ape = _pct(r["ape_pct"]) if r["ape_pct"] is not None else "not scored (∞ or 0)"
        stretch = "" if r["stretch"] is None else f"{r['stretch']:.2f}"
        out.append([r["set"], r["tenant"] or "(set)", FIGURE_NAMES.get(r["figure"], r["figure"]),
                    stretch, value(r["figure"], r["predicted"]) + (" *" if r["extrapolated"] else ""),
                    value(r["figure"], r["measured"]), ape])
    return out


def mape_rows(x: Explanation) -> list[list[str]]:
    out = []
    for r in x.mape.iter_rows(named=True):
        used = " (used)" if r["model"] == x.model_label else ""
        out.append([r["model"] + used, FIGURE_NAMES.get(r["figure"], r["figure"]), str(r["n"]),
                    str(r["unscored"]), _pct(r["mape_pct"]), _pct(r["median_ape_pct"]),
                    _pct(r["max_ape_pct"]),
                    "" if r["mae_points"] is None else f"{num(r['mae_points'], 2)} points"])
    return out


def capacity_rows(x: Explanation, tenants: Sequence[str]) -> list[list[str]]:
    """Predicted co-located capacity and W of every pair and of the whole set (default mix)."""
    names = [t for t in tenants if t in x.profiles and x.capacities[t].rps]
    sets = [c for k in range(2, len(names) + 1) for c in itertools.combinations(names, k)]
    measured = {"+".join(s.tenants) for s in x.sets}
    out = []
    for s in sets:
        try:
            c = predict_capacity(x, s)
        except (KeyError, ValueError):
            continue
        rates = ", ".join(f"{t} {num(v, 3)}" for t, v in c["rates"].items())
        out.append([" + ".join(s), "yes" if "+".join(s) in measured else "no", scale_text(c),
                    rates, w_text(c), c["first_fail"] or "–", c["censored"] or ""])
    return out


def cap_text(rps: float | None, censored: str | None) -> str:
    """``3.10 req/s``, ``≥ 8.43 req/s`` or ``< 2.00 req/s`` (a bound: the ladder missed the knee)."""
    if rps is None:
        return "unknown"
    mark = "≥ " if (censored or "").startswith("at least") else (
        "< " if (censored or "").startswith("below") else "")
    return f"{mark}{num(rps, 3)} req/s"


def _capacity_note(x: Explanation) -> str:
    parts = []
    for t, c in x.capacities.items():
        txt = f"{t}: {cap_text(c.rps, c.censored)} ({c.source}"
        if c.lo is not None and c.hi is not None and not c.censored:
            txt += f", between the loads {num(c.lo, 3)} and {num(c.hi, 3)}"
        parts.append(txt + ")")
    return "; ".join(parts)


def explain_html(x: Explanation, tenants: Sequence[str], figs: dict[str, SavedFigure]) -> str:
    """``<section id="explain">``: bottlenecks alone and together, the model, its scores."""
    out = ['<section id="explain"><h2>Bottlenecks and predictions</h2>',
           "<h3>Bottlenecks, tenants alone</h3>",
           "<p>Per tenant and offered load: the limits measured to bind (reports.limits: batch "
           "limit, KV cache, GPU busy, memory bandwidth, engine CPU, host CPU, client lag), or "
           "nothing saturated, with the limit nearest its threshold and the one that rises "
           "most with load.</p>"]
    rows = [[_e(r["tenant"]), num(r["offered_rps"], 3), _pct(None if r["slo_attainment"] is None
             else 100 * r["slo_attainment"]), f"<b>{_e(r['binding'])}</b>", _e(r["reading"])]
            for r in x.bottleneck.iter_rows(named=True)]
    out.append(_table(["tenant", "offered req/s", "SLO attainment", "binds", "reading"], rows,
                      numeric=(1, 2), attrs='id="bottleneck-table"') if rows else
               "<p class=muted>No tenant ran alone, so there is no profile to read.</p>")
    if x.attribution.height:
        out.append("<h3>In co-located sets</h3><p>Against the same tenant alone at the same "
                   "offered rate: which of its own resources grew, and the device's figures "
                   "against the sum of its tenants' solo figures.</p>")
        rows = [[_e(r["set"]), _e(r["tenant"]), f"<b>{_e(r['binding'])}</b>", _e(r["grew"] or "–"),
                 _e(r["device"] or "–"),
                 "" if r["clock_vs_alone"] is None else
                 ("<b>" if r["clock_flag"] else "") + f"{num(100 * r['clock_vs_alone'], 2)}%"]
                for r in x.attribution.iter_rows(named=True)]
        out.append(_table(["set", "tenant", "binds", "grew against alone", "device", "SM clock vs alone"],
                          rows, attrs='id="attribution-table"'))
    out.append("<h3>Predictions from the solo profiles</h3>")
    out.append(f"<p>{_e(model_paragraph(x))}</p>")
    out.append(f"<p class=small>Solo capacities: {_e(_capacity_note(x))}.</p>")
    if x.scores.height:
        out.append("<h4>Leave-one-out: each measured set predicted without it</h4>"
                   f"<p class=small>{_e(ANCHORS)}</p>")
        out.append(_table(["model", "figure", "scored", "not scored", "MAPE", "median APE", "max APE",
                           "attainment MAE"], mape_rows(x), numeric=(2, 3, 4, 5, 6, 7),
                          attrs='id="mape-table"'))
        out.append(f"<p class=small>{_e(NOISE_NOTE)}</p>")
        out.append(_figure(figs.get("predicted_vs_measured"),
                           "Predicted against measured, each measured set left out in turn "
                           "(log scales; the band is ±10%, ±10 points for attainment)."))
        out.append("<details><summary>Every left-out prediction (* extrapolated beyond the "
                   "profile's loads)</summary>"
                   + _table(["set", "tenant", "figure", "stretch", "predicted", "measured", "APE"],
                            [[_e(c) for c in r] for r in score_rows(x)], numeric=(3, 4, 5, 6),
                            attrs='id="loo-table"') + "</details>")
    else:
        out.append("<p class=muted>No co-located set was measured, so the predictions cannot be "
                   "scored here; their intervals come from the profile's repetition spread.</p>")
    caps = capacity_rows(x, tenants)
    if caps:
        out.append("<h4>Predicted co-located capacity (each tenant the same fraction of its solo "
                   "capacity)</h4>")
        out.append(_table(["set", "measured", "scale λ [interval]", "rates (req/s)",
                           "W [interval]", "fails first", "note"],
                          [[_e(c) for c in r] for r in caps], numeric=(2,)))
    out.append("</section>")
    return "".join(out)


def _figure(f: SavedFigure | None, caption: str) -> str:
    if f is None:
        return ""
    return (f'<figure class="fig" id="fig-{_e(f.name)}">{f.svg}<figcaption>{_e(caption)} '
            f"<span class=small>(figures/{_e(f.svg_path.name)})</span></figcaption></figure>")


def explain_markdown(x: Explanation) -> list[str]:
    """The summary's lines: bottlenecks, then the leave-one-out errors with the anchors."""
    out: list[str] = []
    if x.bottleneck.height:
        out += ["", "## Bottlenecks (tenants alone)", ""]
        out += [f"- {r['reading']}" for r in x.bottleneck.iter_rows(named=True)]
    if x.attribution.height:
        out += ["", "## Bottlenecks in co-located sets", ""]
        out += [f"- {r['reading']}" for r in x.attribution.iter_rows(named=True)]
    if not x.profiles:
        return out
    out += ["", "## Predictions from the solo profiles", "", model_paragraph(x), ""]
    if x.scores.height == 0:
        out.append("No co-located set was measured: nothing to score the predictions against.")
        return out
    out += ["Leave-one-out (each measured set predicted without it):", "",
            _md(["model", "figure", "scored", "not scored", "MAPE", "median APE", "max APE",
                 "attainment MAE"], mape_rows(x)), "", NOISE_NOTE, "", ANCHORS, "",
            _md(["set", "tenant", "figure", "stretch", "predicted", "measured", "APE"], score_rows(x)),
            "", "\\* extrapolated beyond the profile's loads."]
    return out


def _md(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([row(headers), "| " + " | ".join("---" for _ in headers) + " |"]
                     + [row(r) for r in rows])


def predicted_vs_measured(x: Explanation) -> Figure | None:
    """Log-log scatter of the chosen model's left-out predictions against the measurements."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from reports.figures import PALETTE, _mpl

    s = x.scores.filter((pl.col("model") == x.model_label) & pl.col("ape_pct").is_not_null()
                        & (pl.col("predicted") > 0) & (pl.col("measured") > 0))
    if s.height == 0:
        return None
    plt = _mpl()
    figs = list(dict.fromkeys(s["figure"].to_list()))
    fig, axes = plt.subplots(1, len(figs), figsize=(3.2 * len(figs), 3.2), squeeze=False)
    for ax, f, color in zip(axes[0], figs, itertools.cycle(PALETTE), strict=False):
        d = s.filter(pl.col("figure") == f)
        lab = label(f)
        scale = lab.scale if f not in ("capacity_scale", "W") else 1.0
        pv = [v * scale for v in d["predicted"]]
        mv = [v * scale for v in d["measured"]]
        lo, hi = min(pv + mv) * 0.8, max(pv + mv) * 1.25
        if f == "slo_attainment":  # a share: linear axes, the band ±10 points
            lo, hi = min(pv + mv + [90.0]) - 5, 102.0
            ax.fill_between([lo, hi], [lo - 10, hi - 10], [lo + 10, hi + 10], color="#eef3f8")
        else:
            ax.fill_between([lo, hi], [lo / 1.1, hi / 1.1], [lo * 1.1, hi * 1.1], color="#eef3f8")
            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_formatter(FuncFormatter(lambda v, _: num(v, 2)))
                axis.set_minor_formatter(NullFormatter())
        ax.plot([lo, hi], [lo, hi], color="#6b7785", lw=0.8)
        ax.scatter(mv, pv, s=18, color=color, zorder=3)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        unit = lab.unit if f not in ("capacity_scale", "W") else ""
        ax.set_xlabel(f"measured {unit}".strip())
        ax.set_ylabel(f"predicted {unit}".strip())
        ax.set_title(FIGURE_NAMES.get(f, f))
    fig.tight_layout()
    return fig


def explain_tables(x: Explanation) -> dict[str, pl.DataFrame]:
    """The tables build_report writes: profiles, attribution, prediction scores and MAPE."""
    return {"profiles": x.profile_table, "attribution": x.attribution,
            "prediction_scores": x.scores, "prediction_mape": x.mape}
