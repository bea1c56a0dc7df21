"""report.html: one self-contained page (inline CSS and SVG, no script, no network)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

import polars as pl

from reports.analysis import Analysis
from reports.explain_render import explain_html
from reports.figures import SavedFigure
from reports.metrics import fmt, label, num
from reports.narrative import definitions, fmt_ratio, headlines, machine, what_was_run
from reports.strategy import set_name
from rundir.ids import group_label

CSS = """
:root{--ink:#1f2933;--muted:#5f6b76;--line:#dfe4ea;--bg:#f6f8fa;--accent:#2f6db5;
--good:#2e8b57;--goodbg:#e6f4ec;--mild:#a86b00;--mildbg:#fdf2dc;--bad:#b3362f;--badbg:#fbe9e8;
--na:#5f6b76;--nabg:#eef1f4}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.5 -apple-system,"Segoe UI",Roboto,"DejaVu Sans",Helvetica,Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:24px 28px 64px}
header.top{background:#17212b;color:#fff;padding:22px 28px}
header.top .in{max-width:1180px;margin:0 auto;padding:0 28px}
header.top h1{margin:0 0 4px;font-size:24px;letter-spacing:.2px}
header.top p{margin:0;color:#c9d3dd}
nav{margin-top:10px;font-size:13px}
nav a{color:#9cc3ee;margin-right:14px;text-decoration:none}
h2{font-size:19px;margin:36px 0 10px;padding-bottom:6px;border-bottom:2px solid var(--line)}
h3{font-size:15.5px;margin:24px 0 6px}
h4{font-size:13.5px;margin:16px 0 4px;color:var(--muted)}
p{margin:6px 0 10px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin:14px 0}
.summary{border-left:5px solid var(--accent)}
.summary ul{margin:8px 0 4px;padding-left:20px}
.summary li{margin:5px 0}
.lead{font-size:15px}
.tw{overflow-x:auto;margin:8px 0 14px}
.tw table{margin:0}
td.set{white-space:nowrap}
.timelines{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.timelines .fig{margin:0}
@media (max-width:1000px){.timelines{grid-template-columns:1fr}}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px;margin:8px 0 14px}
th,td{padding:6px 9px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:#f0f3f6;font-weight:600;color:#34414e;white-space:nowrap}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:nth-child(even) td{background:#fbfcfd}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;white-space:nowrap}
.b-well{background:var(--goodbg);color:var(--good)}
.b-mild{background:var(--mildbg);color:var(--mild)}
.b-hurts{background:var(--badbg);color:var(--bad)}
.b-na,.b-baseline{background:var(--nabg);color:var(--na)}
.worse{color:var(--bad);font-weight:600}.better{color:var(--good);font-weight:600}.ns{color:var(--muted)}
.fig{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px;margin:12px 0;overflow-x:auto}
.fig figcaption{color:var(--muted);font-size:12.5px;margin-top:6px}
.fig svg{height:auto;display:block;margin:0 auto}
.verdict{font-size:14.5px;margin:4px 0 10px}
.muted{color:var(--muted)}.small{font-size:12.5px}
details{margin:8px 0}
summary{cursor:pointer;color:var(--accent);font-weight:600}
pre{background:#fff;border:1px solid var(--line);border-radius:6px;padding:10px;overflow-x:auto;font-size:12px}
dl.defs{display:grid;grid-template-columns:190px 1fr;gap:6px 16px;margin:8px 0}
dl.defs dt{font-weight:600}dl.defs dd{margin:0}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:12px}
@media (max-width:860px){.grid2{grid-template-columns:1fr}dl.defs{grid-template-columns:1fr}}
footer{color:var(--muted);font-size:12px;margin-top:40px}
"""

BADGE = {
    "shares well": "b-well",
    "mild interference": "b-mild",
    "hurts": "b-hurts",
    "not measurable": "b-na",
    "baseline": "b-baseline",
}

KEY_DECODER = ("goodput_rps", "throughput_rps", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "e2e_p99_s")
KEY_ENCODER = ("goodput_rps", "throughput_rps", "embeddings_ps", "e2e_p50_s", "e2e_p99_s")


def e(x: Any) -> str:
    return escape("" if x is None else str(x))


def badge(cls: str) -> str:
    return f'<span class="badge {BADGE.get(cls, "b-na")}">{e(cls)}</span>'


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    numeric: Sequence[int] = (),
    attrs: str = "",
    first_class: str = "",
) -> str:
    """Cells are HTML already (escape before); ``numeric`` columns are right-aligned."""
    num_ = set(numeric)
    head = "".join(f'<th{" class=n" if i in num_ else ""}>{h}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>"
        + "".join(
            f'<td{" class=n" if i in num_ else (f" class={first_class}" if i == 0 and first_class else "")}>{c}</td>'
            for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f'<div class="tw"><table {attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def figure(f: SavedFigure | None, caption: str) -> str:
    if f is None:
        return ""
    return (
        f'<figure class="fig" id="fig-{e(f.name)}">{f.svg}'
        f"<figcaption>{e(caption)} <span class=small>(figures/{e(f.svg_path.name)}, "
        f"figures/{e(f.png_path.name)})</span></figcaption></figure>"
    )


def _stat(a: Analysis, gid: str, tenant: str, metric: str) -> dict[str, Any] | None:
    s = a.stats.filter((pl.col("group_id") == gid) & (pl.col("tenant") == tenant) & (pl.col("metric") == metric))
    return s.row(0, named=True) if s.height else None


def cell_ci(a: Analysis, gid: str, tenant: str, metric: str) -> str:
    r = _stat(a, gid, tenant, metric)
    if r is None or r["mean"] is None:
        return "–"
    lab = label(metric)
    txt = num(r["mean"] * lab.scale)
    if r["half_width"] is not None:
        txt += f" ± {num(r['half_width'] * lab.scale, 2)}"
    if r["too_wide"]:
        txt += ' <span class=muted title="CI too wide to rank (one repetition, or half-width above 10% of the mean)">†</span>'
    return txt


def cell_slowdown(r: dict[str, Any] | None) -> str:
    if r is None or r.get("slowdown") is None:
        return "–"
    txt = e(fmt_ratio(r))
    sig = r.get("significant")
    if sig is None:
        return f'<span class=ns title="one repetition: no interval">{txt}</span>'
    if not sig:
        return f'<span class=ns title="interval contains 1.0: no measurable interference">{txt} ~</span>'
    return f'<span class={"worse" if r["slowdown"] > 1 else "better"}>{txt}</span>'


# ---- sections ------------------------------------------------------------------------------------


def summary_section(a: Analysis, figs: dict[str, SavedFigure]) -> str:
    items = "".join(f"<li>{e(h)}</li>" for h in headlines(a))
    rows = []
    for r in a.strategies.iter_rows(named=True):
        att = r["slo_attainment"]
        att0 = r["apart_slo_attainment"]
        rows.append(
            [
                e(r["rank"] if r["rank"] is not None else ""),
                f'<a href="#set-{e(r["group_id"])}">{e(set_name(r["active_set"]))}</a>'
                + ("" if r["rate_scale"] == 1.0 else f' <span class=muted>x{r["rate_scale"]:g}</span>'),
                badge(r["classification"]),
                e(num(r["goodput_per_gpu_rps"])) + (' <span class=muted title="CI too wide to rank">†</span>' if r["too_wide_to_rank"] else ""),
                e(num(r["apart_goodput_per_gpu_rps"])),
                e("–" if r["gain"] is None else f"{num(r['gain'], 3)}x"),
                cell_slowdown({"slowdown": r["worst_slowdown"], "slowdown_lo": r["worst_slowdown_lo"],
                               "slowdown_hi": r["worst_slowdown_hi"], "significant": r["worst_significant"]})
                + (f' <span class="muted small">{e(r["worst_tenant"])} {e(label(r["worst_metric"]).text)}</span>' if r["worst_tenant"] else ""),
                e("–" if att is None else f"{num(100 * att, 3)}%") + (f' <span class="muted small">alone {num(100 * att0, 3)}%</span>' if att0 is not None and r["n_active"] > 1 else ""),
            ]
        )
    tbl = table(
        ["#", "set (active tenants)", "verdict", "goodput/GPU req/s", "apart req/s", "gain",
         "worst slowdown (95% CI)", "SLO attainment"],
        rows,
        numeric=(3, 4, 5),
        attrs='id="summary-table"',
    )
    return (
        '<section id="summary"><div class="card summary">'
        f'<p class="lead"><b>What was run.</b> {e(what_was_run(a))}</p>'
        f"<p><b>Headline.</b></p><ul>{items}</ul>"
        "</div>"
        "<h2>Strategy ranking</h2>"
        "<p class=muted>Co-located sets first, best first (verdict, then gain, then worst slowdown); "
        "the tenants alone follow as baselines. A slowdown marked ~ has an interval that contains 1.0.</p>"
        f"{tbl}"
        + figure(figs.get("strategy_map"), "Gain in goodput per GPU (up is better) against the worst p99 "
                 "slowdown of any tenant in the set (left is better), with 95% intervals.")
        + "<details><summary>How to read this report (definitions)</summary><dl class=defs>"
        + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in definitions())
        + "</dl></details></section>"
    )


def sets_section(a: Analysis) -> str:
    out = ['<section id="sets"><h2>Sets in detail</h2>']
    order = a.strategies["group_id"].to_list()
    for gid in order:
        g = a.group(gid)
        tenants = g["active_set"].split("+")
        out.append(f'<h3 id="set-{e(gid)}">{e(set_name(g["active_set"]))}'
                   + ("" if g["rate_scale"] == 1.0 else f" at load x{g['rate_scale']:g}")
                   + f" {badge(g['classification'])}</h3>")
        out.append(f'<p class="verdict">{e(g["verdict"])}</p>')
        out.append(f'<p class="muted small">group {e(gid)} · resident {e(set_name(g["resident_set"]))} · '
                   f'{g["repetitions"]} repetition{"s" if g["repetitions"] != 1 else ""}</p>')
        rows = []
        alone = g["n_active"] == 1
        for t in tenants:
            keys = KEY_ENCODER if a.run.tenant_kind(t) == "encoder" else KEY_DECODER
            for m in keys:
                lab = label(m)
                row = [e(t), e(lab.text), e(lab.unit), cell_ci(a, gid, t, m)]
                if not alone:
                    inter = a.interference.filter(
                        (pl.col("group_id") == gid) & (pl.col("tenant") == t) & (pl.col("metric") == m)
                    )
                    ir = inter.row(0, named=True) if inter.height else None
                    base = ir["baseline_group_id"] if ir else None
                    row += [cell_ci(a, base, t, m) if base else "–", cell_slowdown(ir)]
                rows.append(row)
        heads = ["tenant", "figure", "unit", "this set (mean ± 95% CI)"]
        heads += [] if alone else ["alone", "slowdown (95% CI)"]
        out.append(table(heads, rows, numeric=(3, 4, 5)))
        dev = a.device_stats.filter(pl.col("group_id") == gid)
        if dev.height:
            cells = []
            for m in ("gpu_util_mean_pct", "mem_used_max_bytes", "power_mean_w", "energy_j",
                      "host_cpu_mean_pct", "host_mem_used_max_bytes"):
                r = dev.filter(pl.col("metric") == m)
                if r.height:
                    x = r.row(0, named=True)
                    cells.append(f"{e(label(m).text)}: <b>{e(fmt(m, x['mean']))}</b>")
            if cells:
                out.append(f'<p class="small">{" · ".join(cells)}</p>')
    out.append("</section>")
    return "".join(out)


def interference_section(a: Analysis, figs: dict[str, SavedFigure]) -> str:
    out = ['<section id="interference"><h2>Interference between tenants</h2>',
           "<p>Each cell: the victim's worst p99 latency slowdown when it shares the GPU with the "
           "co-tenant alone (pair experiments), against the victim alone at the same load. "
           "n.s.: the 95% interval contains 1.0 — no measurable interference at this load; more "
           "repetitions or a higher rate would tell.</p>"]
    out.append(figure(figs.get("interference_heatmap"), "Victim x co-tenant: worst p99 slowdown in the pair."))
    if a.matrix.height == 0:
        out.append("<p class=muted>No pair experiments completed, so there is no victim x co-tenant matrix.</p>")
    else:
        rows = [[e(r["victim"]), e(r["co_tenant"]), e(f"x{r['rate_scale']:g}"), e(label(r["metric"]).text),
                 cell_slowdown(r), e(r["verdict"])] for r in a.matrix.iter_rows(named=True)]
        out.append(table(["victim", "co-tenant", "load", "worst figure", "slowdown (95% CI)", "reading"], rows, numeric=(2, 4)))
    sig = a.interference.filter(pl.col("significant").fill_null(False) & (pl.col("slowdown") > 1))
    if sig.height:
        top = (
            sig.sort("slowdown", descending=True)
            .group_by("group_id", "tenant", maintain_order=True)
            .head(3)
            .head(15)
        )
        rows = [[e(set_name(r["active_set"])), e(r["tenant"]), e(label(r["metric"]).text), cell_slowdown(r)]
                for r in top.iter_rows(named=True)]
        out.append("<h4>Largest measurable slowdowns (any figure; at most three per tenant and set)</h4>")
        out.append(table(["set", "tenant", "figure", "slowdown (95% CI)"], rows, numeric=(3,)))
    out.append("</section>")
    return "".join(out)


def tenants_section(a: Analysis, figs: dict[str, SavedFigure]) -> str:
    out = ['<section id="tenants"><h2>Tenants</h2>']
    out.append(figure(figs.get("throughput_goodput"), "Achieved throughput (light) and goodput (dark) per set, "
                      "mean over repetitions with 95% CI."))
    out.append(figure(figs.get("cdf_e2e"), "E2E latency (done - sent) distribution per tenant in every set it "
                      "ran in, repetitions pooled; the tenant alone is the thick line."))
    out.append(figure(figs.get("cdf_ttft"), "Time to first token per decoder in every set it ran in."))
    order = a.set_order
    for t in a.tenants:
        info = a.run.tenant_info(t)
        out.append(f'<h3 id="tenant-{e(t)}">{e(t)} <span class="muted small">{e(info.get("kind"))} · '
                   f'{e(info.get("model"))}</span></h3>')
        b = a.bottleneck.filter(pl.col("tenant") == t)
        for r in b.iter_rows(named=True):
            scale = "" if r["rate_scale"] == 1.0 else f" (x{num(r['rate_scale'])} load)"
            out.append(f"<p><b>Bottleneck alone{e(scale)}:</b> {e(r['reading'])}.</p>")
        keys = KEY_ENCODER if info.get("kind") == "encoder" else KEY_DECODER
        extra = ("error_rate", "proc_gpu_mem_max_bytes", "proc_cpu_mean_pct", "proc_rss_max_bytes",
                 "kv_cache_usage_mean", "requests_waiting_mean", "preemptions")
        mine = a.stats.filter(pl.col("tenant") == t)
        groups = [g for g in order if g in set(mine["group_id"])]
        for title, wanted in (("Performance", keys), ("Errors, resources and server-side figures", extra)):
            cols = [m for m in wanted if m in set(mine["metric"])]
            if not cols:
                continue
            rows = [[f'<a href="#set-{e(g)}">{e(group_label(g))}</a>'] + [cell_ci(a, g, t, m) for m in cols]
                    for g in groups]
            heads = ["set"] + [f"{e(label(m).text)} <span class=muted>{e(label(m).unit)}</span>" for m in cols]
            out.append(f"<h4>{e(title)} (mean ± 95% CI over repetitions)</h4>")
            out.append(table(heads, rows, numeric=tuple(range(1, len(cols) + 1)), first_class="set"))
    out.append("</section>")
    return "".join(out)


def timelines_section(a: Analysis, figs: dict[str, SavedFigure], shown: Sequence[str], total: int) -> str:
    out = ['<section id="timelines"><h2>Timelines</h2>',
           "<p>Per experiment: requests sent per second, utilization and memory on one time axis; "
           "the shaded band is the measurement window.</p>"]
    if total > len(shown):
        out.append(f"<p class=muted>{len(shown)} of {total} experiments shown (first repetition of each set); "
                   "every experiment's timeline is in figures/.</p>")
    out.append('<div class="timelines">')
    for eid in shown:
        f = figs.get(f"timeline_{eid}")
        out.append(figure(f, eid))
    out.append("</div></section>")
    return "".join(out)


def failures_section(a: Analysis) -> str:
    out = ['<section id="failures"><h2>Failures</h2>']
    if a.failures.height == 0:
        out.append("<p>Every experiment completed.</p></section>")
        return "".join(out)
    out.append("<p>These experiments did not complete; they are left out of every figure above, "
               "so their sets have fewer repetitions.</p>")
    rows = []
    for r in a.failures.iter_rows(named=True):
        tail = f"<details><summary>log tail</summary><pre>{e(r['log_tail'])}</pre></details>" if r["log_tail"] else ""
        rows.append([e(r["experiment_id"]), badge(r["status"]) if r["status"] in BADGE else f'<span class="badge b-hurts">{e(r["status"])}</span>',
                     e(r["reason"]) + tail])
    out.append(table(["experiment", "status", "reason"], rows))
    out.append("</section>")
    return "".join(out)


def experiments_section(a: Analysis) -> str:
    cols = ["requests", "errors", "throughput_rps", "goodput_rps", "ttft_p99_s", "tpot_p99_s", "e2e_p99_s", "overrun_s"]
    rows = []
    for r in a.experiments.iter_rows(named=True):
        rows.append([e(r["experiment_id"]), e(r["tenant"])] + [
            e(num(r[c])) if c in ("requests", "errors") else e(fmt(c, r[c]) if c != "overrun_s" else (num(r[c]) + " s" if r[c] is not None else "–"))
            for c in cols
        ])
    heads = ["experiment", "tenant", "requests", "errors", "throughput", "goodput", "TTFT p99", "TPOT p99", "E2E p99", "overrun"]
    return ('<section id="experiments"><h2>Every experiment</h2><details><summary>'
            f"{a.experiments.height} experiment x tenant rows (tables/experiments.csv has every column)</summary>"
            + table(heads, rows, numeric=tuple(range(2, 10))) + "</details></section>")


def environment_section(a: Analysis) -> str:
    c = a.run.campaign
    gpu = a.run.gpu
    rows = [["campaign", e(a.run.name)], ["machine", e(machine(a))], ["sharing", e(a.run.sharing)],
            ["residency", e(a.run.residency)], ["started", e(c.get("started") or c.get("started_at"))],
            ["ended", e(c.get("ended") or c.get("ended_at"))],
            ["run directory", e(a.run.path)]]
    if gpu:
        rows += [[f"gpu.{k}", e(v)] for k, v in gpu.items()]
    for k, v in (c.get("versions") or {}).items():
        rows.append([f"version: {e(k)}", e(v)])
    host = c.get("host")
    if isinstance(host, dict):
        rows += [[f"host.{e(k)}", e(v)] for k, v in host.items()]
    elif host:
        rows.append(["host", e(host)])
    plan_rows = [
        [e(name), e(num(share)), e(fmt("proc_gpu_mem_max_bytes", mem)), e(fmt("proc_gpu_mem_max_bytes", w)),
         e(fmt("proc_gpu_mem_max_bytes", kv)), e(num(tok) if tok is not None else "–")]
        for name, share, mem, w, kv, tok in _plan(c.get("plan"))
    ]
    spec = json.dumps(a.run.spec, indent=2, default=str)
    return ('<section id="environment"><h2>Environment</h2>'
            + table(["what", "value"], rows)
            + ("<h4>Memory plan</h4>" + table(["tenant", "memory share", "memory", "weights", "KV cache", "KV tokens"],
                                               plan_rows, numeric=(1, 2, 3, 4, 5)) if plan_rows else "")
            + f"<details><summary>The campaign spec, as validated</summary><pre>{e(spec)}</pre></details></section>")


def _plan(plan: Any) -> list[tuple[Any, ...]]:
    """(tenant, share, bytes, weights, KV bytes, KV tokens) from either shape of ``plan``:
    the planner's ``{"tenants": [{name, share, share_bytes, ...}]}`` or ``{tenant: {memory_share,
    memory_bytes}}``."""
    if not isinstance(plan, dict):
        return []
    if isinstance(plan.get("tenants"), list):
        return [
            (t.get("name"), t.get("share"), t.get("share_bytes"), t.get("weights_bytes"), t.get("kv_bytes"),
             t.get("kv_tokens"))
            for t in plan["tenants"] if isinstance(t, dict)
        ]
    return [
        (name, p.get("memory_share"), p.get("memory_bytes"), None, None, None)
        for name, p in plan.items() if isinstance(p, dict)
    ]


def render(a: Analysis, figs: dict[str, SavedFigure], timelines_shown: Sequence[str], timelines_total: int) -> str:
    title = f"cotenant report — {a.run.name}"
    desc = (a.run.spec.get("description") or "").strip()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{k}">{v}</a>' for k, v in (
        ("summary", "Summary"), ("sets", "Sets"), ("interference", "Interference"), ("tenants", "Tenants"),
        ("explain", "Bottlenecks and predictions"), ("timelines", "Timelines"), ("failures", "Failures"), ("environment", "Environment")))
    body = "".join([
        summary_section(a, figs),
        sets_section(a),
        interference_section(a, figs),
        tenants_section(a, figs),
        explain_html(a.explanation, a.tenants, figs),
        timelines_section(a, figs, timelines_shown, timelines_total),
        failures_section(a),
        experiments_section(a),
        environment_section(a),
    ])
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>"
        f'<header class="top"><div class="in"><h1>{e(title)}</h1>'
        f"<p>{e(desc) + ' · ' if desc else ''}{e(a.run.sharing)} on {e(machine(a))}</p><nav>{nav}</nav></div></header>"
        f"<main>{body}<footer>Generated {e(stamp)} by cotenant from {e(a.run.path)}; "
        "tables/ and figures/ beside this file hold every number and figure.</footer></main></body></html>\n"
    )
