"""The sections of report.html that state verdicts: the summary and ranking, each set, the
interference between tenants, and the precision target. Every interference figure shows
its n (blocks), its interval or "not estimable with n blocks", and its verdict; the page
names the margin, the multiplicity correction and the family size, and the minimum
detectable effect of each figure.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from reports.analysis import Analysis
from reports.batch import FLAG_TEXT
from reports.capacity import W_MAP_TITLE
from reports.figures import SavedFigure
from reports.htmlkit import badge, e, figure, table
from reports.metrics import fmt, label, num
from reports.narrative import definitions, fmt_ratio, headlines, what_was_run
from reports.strategy import set_name
from reports.verdicts import HURTS, WELL

KEY_DECODER = ("goodput_rps", "throughput_rps", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "e2e_p99_s")
KEY_ENCODER = ("goodput_rps", "throughput_rps", "embeddings_ps", "e2e_p50_s", "e2e_p99_s")


def _stat(a: Analysis, gid: str, tenant: str, metric: str) -> dict[str, Any] | None:
    s = a.stats.filter((pl.col("group_id") == gid) & (pl.col("tenant") == tenant) & (pl.col("metric") == metric))
    return s.row(0, named=True) if s.height else None


def cell_ci(a: Analysis, gid: str, tenant: str, metric: str) -> str:
    """A group's figure: mean over blocks ± the 95% half-width (descriptive)."""
    r = _stat(a, gid, tenant, metric)
    if r is None or r["mean"] is None:
        return "–"
    lab = label(metric)
    txt = num(r["mean"] * lab.scale)
    if r["half_width"] is not None and r["half_width"] == r["half_width"]:
        txt += f" ± {num(r['half_width'] * lab.scale, 2)}"
    return e(txt)


def cell_slowdown(r: dict[str, Any] | None) -> str:
    """The slowdown with its interval (or "not estimable with n blocks") and n."""
    if r is None or (r.get("slowdown") is None and r.get("n") is None):
        return "–"
    txt = e(fmt_ratio(r))
    v = r.get("verdict")
    cls = {HURTS: "worse", WELL: "better"}.get(v or "", "ns")
    tip = e(r.get("reason") or "")
    n = r.get("n") or 0
    return f'<span class={cls} title="{tip}">{txt}</span> <span class="muted small">n={n}</span>'


def cell_verdict(r: dict[str, Any] | None) -> str:
    if r is None or r.get("verdict") is None:
        return '<span class="muted small">interval only</span>' if r else "–"
    out = badge(r["verdict"])
    if r.get("batch_limit"):
        out += f' <span class="muted small" title="{e(FLAG_TEXT)}">batch limit binds</span>'
    return out


def _strategy_rows(a: Analysis, df: pl.DataFrame) -> list[list[str]]:
    rows = []
    for r in df.iter_rows(named=True):
        att, att0 = r["slo_attainment"], r["alone_slo_attainment"]
        worst = {"slowdown": r["worst_slowdown"], "slowdown_lo": r["worst_slowdown_lo"],
                 "slowdown_hi": r["worst_slowdown_hi"], "n": r["worst_n"],
                 "method": r["worst_method"]}
        rows.append([
            e(r["rank"] if r["rank"] is not None else ""),
            f'<a href="#set-{e(r["group_id"])}">{e(set_name(r["active_set"]))}</a>'
            + ("" if r["rate_scale"] == 1.0 else f' <span class=muted>x{r["rate_scale"]:g}</span>'),
            badge(r["classification"]),
            (e(fmt_ratio(worst)) + f' <span class="muted small">{e(r["worst_tenant"])} '
             f'{e(label(r["worst_metric"]).text)}, n={r["worst_n"]}</span>') if r["worst_tenant"] else "–",
            e(num(r["goodput_rps"])),
            e("–" if att is None else f"{num(100 * att, 3)}%")
            + (f' <span class="muted small">alone {num(100 * att0, 3)}%</span>' if att0 is not None else ""),
            e(r["batch_limit"] or ""),
        ])
    return rows


def summary_section(a: Analysis, figs: dict[str, SavedFigure]) -> str:
    items = "".join(f"<li>{e(h)}</li>" for h in headlines(a))
    heads = ["#", "set (active tenants)", "verdict", "worst headline slowdown (95% CI)",
             "goodput together req/s", "SLO attainment", "batch limit binds"]
    s = a.strategies
    ranked = s.filter(pl.col("rank").is_not_null())
    apart = s.filter(pl.col("rank").is_null() & (pl.col("n_active") > 1))
    base = s.filter(pl.col("n_active") == 1)
    out = [
        '<section id="summary"><div class="card summary">'
        f'<p class="lead"><b>What was run.</b> {e(what_was_run(a))}</p>'
        f"<p><b>Headline.</b></p><ul>{items}</ul></div>",
        "<h2>Strategy ranking</h2>",
        "<p class=muted>Only established sets are ranked: those that share "
        "well first, those that hurt last, each by its worst headline slowdown (adjacent ranks are "
        "not tested against each other).</p>",
        table(heads, _strategy_rows(a, ranked), numeric=(4,), attrs='id="summary-table"')
        if ranked.height else "<p id=summary-table-empty>No set is established yet, so none is ranked.</p>",
    ]
    if apart.height:
        out += ["<h3>Not established (not ranked)</h3>",
                "<p class=muted>The data cannot tell whether these sets hurt or share well at this "
                "margin; each set's section says which figure is missing what.</p>",
                table(heads, _strategy_rows(a, apart), numeric=(4,), attrs='id="unranked-table"')]
    if base.height:
        out += ["<h3>Baselines: each tenant alone</h3>",
                table(heads, _strategy_rows(a, base), numeric=(4,), attrs='id="baselines-table"')]
    smap = figs.get("strategy_map")
    if smap is not None and smap.title == W_MAP_TITLE:  # the run measured capacity
        out.append(figure(smap, "Per co-located set and mix: its weighted capacity W with the bracket "
                          "the capacity search gives, against W = 1 (time division); colour: sharing "
                          "wins, hurts, or not established."))
    else:
        out.append(figure(smap, "Per co-located set: the worst headline slowdown with "
                          "its 95% interval, against the margin line; colour: the set's verdict."))
    out.append("<details><summary>How to read this report (definitions)</summary><dl class=defs>"
               + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in definitions())
               + "</dl></details></section>")
    return "".join(out)


def _inter_row(a: Analysis, gid: str, t: str, m: str) -> dict[str, Any] | None:
    inter = a.interference.filter(
        (pl.col("group_id") == gid) & (pl.col("tenant") == t) & (pl.col("metric") == m))
    return inter.row(0, named=True) if inter.height else None


def sets_section(a: Analysis) -> str:
    out = ['<section id="sets"><h2>Sets in detail</h2>']
    for gid in a.strategies["group_id"].to_list():
        g = a.group(gid)
        tenants = g["active_set"].split("+")
        out.append(f'<h3 id="set-{e(gid)}">{e(set_name(g["active_set"]))}'
                   + ("" if g["rate_scale"] == 1.0 else f" at load x{g['rate_scale']:g}")
                   + f" {badge(g['classification'])}</h3>")
        out.append(f'<p class="verdict">{e(g["verdict"])}</p>')
        out.append(f'<p class="muted small">group {e(gid)} · resident {e(set_name(g["resident_set"]))} · '
                   f'{g["repetitions"]} block{"s" if g["repetitions"] != 1 else ""}</p>')
        rows = []
        alone = g["n_active"] == 1
        for t in tenants:
            keys = KEY_ENCODER if a.run.tenant_kind(t) == "encoder" else KEY_DECODER
            for m in keys:
                lab = label(m)
                row = [e(t), e(lab.text), e(lab.unit), cell_ci(a, gid, t, m)]
                if not alone:
                    ir = _inter_row(a, gid, t, m)
                    base = ir["baseline_group_id"] if ir else None
                    mde = ir.get("mde") if ir else None
                    row += [cell_ci(a, base, t, m) if base else "–", cell_slowdown(ir),
                            e("–" if mde is None else f"{num(100 * mde, 2)}%"), cell_verdict(ir)]
                rows.append(row)
        heads = ["tenant", "figure", "unit", "this set (mean over blocks ± 95% CI)"]
        heads += [] if alone else ["alone", "slowdown (95% CI), n blocks", "MDE", "verdict"]
        out.append(table(heads, rows, numeric=(3, 4, 5, 6)))
        out.append(_device_line(a, gid))
    out.append("</section>")
    return "".join(out)


def _device_line(a: Analysis, gid: str) -> str:
    dev = a.device_stats.filter(pl.col("group_id") == gid)
    cells = []
    for m in ("gpu_util_mean_pct", "mem_used_max_bytes", "power_mean_w", "energy_j",
              "host_cpu_mean_pct", "host_mem_used_max_bytes"):
        r = dev.filter(pl.col("metric") == m)
        if r.height:
            cells.append(f"{e(label(m).text)}: <b>{e(fmt(m, r.row(0, named=True)['mean']))}</b>")
    return f'<p class="small">{" · ".join(cells)}</p>' if cells else ""


def interference_section(a: Analysis, figs: dict[str, SavedFigure]) -> str:
    st = a.settings
    out = ['<section id="interference"><h2>Interference between tenants</h2>',
           "<p>Each cell: the victim's verdict in the pair and its worst headline slowdown (co-located "
           "/ alone in the same block, geometric mean over blocks) with its 95% interval. "
           f"Margin {num(100 * st.margin)}%; {st.method_name} correction across the "
           f"{a.family_size} headline figures tested.</p>"]
    out.append(figure(figs.get("interference_heatmap"), "Victim x co-tenant: worst headline slowdown in the pair."))
    if a.matrix.height == 0:
        out.append("<p class=muted>No pair experiments completed, so there is no victim x co-tenant matrix.</p>")
    else:
        rows = [[e(r["victim"]), e(r["co_tenant"]), e(f"x{r['rate_scale']:g}"), badge(r["tenant_verdict"]),
                 e(label(r["metric"]).text), cell_slowdown(r)] for r in a.matrix.iter_rows(named=True)]
        out.append(table(["victim", "co-tenant", "load", "victim's verdict", "worst figure",
                          "slowdown (95% CI)"], rows, numeric=(2, 5)))
    fam = a.interference.filter(pl.col("headline"))
    if fam.height:
        rows = [[e(set_name(r["active_set"])) + ("" if r["rate_scale"] == 1.0 else f" x{r['rate_scale']:g}"),
                 e(r["tenant"]), e(label(r["metric"]).text), cell_slowdown(r),
                 e("–" if r["mde"] is None else f"{num(100 * r['mde'], 2)}%"),
                 e("–" if r["p_adjusted"] is None else f"{r['p_adjusted']:.3g}"),
                 cell_verdict(r), f'<span class="small">{e(r["reason"])}</span>']
                for r in fam.iter_rows(named=True)]
        out.append(f"<h4>Every headline figure (the family: {a.family_size} tested)</h4>")
        out.append(table(["set", "tenant", "figure", "slowdown (95% CI), n", "MDE",
                          f"p ({e(st.method_name)})", "verdict", "why"], rows, numeric=(3, 4, 5),
                         attrs='id="family-table"'))
    out.append(_batch_table(a))
    out.append("</section>")
    return "".join(out)


def _batch_table(a: Analysis) -> str:
    b = a.batch.filter(pl.col("max_num_seqs").is_not_null())
    if b.height == 0:
        return ""
    rows = [[e(r["group_id"]), e(r["tenant"]), e(num(r["in_flight"])), e(num(r["requests_running_mean"])),
             e(str(r["max_num_seqs"])), e("–" if r["batch_fraction"] is None else f"{num(100 * r['batch_fraction'], 2)}%"),
             e(FLAG_TEXT if r["batch_limit"] else "no"), e(r["limits"])] for r in b.iter_rows(named=True)]
    return ("<h4>Configuration limits (Little's law: in flight = throughput x mean E2E)</h4>"
            + table(["group", "tenant", "in flight", "running (scraped)", "max_num_seqs", "of the limit",
                     "batch limit", "limits that bind"], rows, numeric=(2, 3, 4, 5)))


def precision_section(a: Analysis) -> str:
    p = a.precision
    if a.settings.precision_half_width is None:
        return ""
    out = ['<section id="precision"><h2>Precision target</h2>',
           f"<p>experiment.precision asks for a half-width of at most {num(a.settings.precision_half_width)} "
           "on the log scale for every co-located tenant's primary figure.</p>"]
    rows = [[e(r["group_id"]), e(r["tenant"]), e(label(r["figure"]).text), e(str(r["n"])),
             e("–" if r["log_half_width"] is None else num(r["log_half_width"])),
             e("reached" if r["reached"] else "not reached")] for r in p.iter_rows(named=True)]
    done = int(p["reached"].sum() or 0) if p.height else 0
    out.append(f"<p>{done} of {p.height} primary figures reached the target.</p>")
    out.append(table(["group", "tenant", "figure", "n blocks", "log half-width", "target"], rows,
                     numeric=(3, 4), attrs='id="precision-table"'))
    out.append("</section>")
    return "".join(out)
