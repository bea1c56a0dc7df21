"""report.html: one self-contained page (inline CSS and SVG, no script, no network).

The sections that state verdicts are in `reports.html_verdicts`; the building blocks
(stylesheet, tables, badges, figures) in `reports.htmlkit`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import polars as pl

from reports.analysis import Analysis
from reports.capacity import CapacityRun, load_capacity
from reports.capacity_render import capacity_html, nav_entry
from reports.conditions import summary as conditions_summary
from reports.explain_render import explain_html
from reports.figures import SavedFigure
from reports.html_verdicts import (
    KEY_DECODER,
    KEY_ENCODER,
    cell_ci,
    interference_section,
    precision_section,
    sets_section,
    summary_section,
)
from reports.htmlkit import BADGE, CSS, badge, e, figure, table
from reports.metrics import fmt, label, num
from reports.narrative import machine
from rundir.ids import group_label

__all__ = ["CSS", "render", "table"]


def tenants_section(a: Analysis, figs: dict[str, SavedFigure]) -> str:
    out = ['<section id="tenants"><h2>Tenants</h2>']
    out.append(figure(figs.get("throughput_goodput"), "Achieved throughput (light) and goodput (dark) per set, "
                      "mean over repetitions with 95% CI."))
    out.append(figure(figs.get("cdf_e2e"), "E2E latency (done - sent) distribution of the ok requests "
                      "per tenant in every set it ran in, blocks pooled; the tenant alone is the thick line (failed requests, infinite in the "
                      "percentiles, are not drawn)."))
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
    for k in ("order_seed", "restarts"):
        if c.get(k) is not None:
            rows.append([e(k), e(c[k])])
    spec = json.dumps(a.run.spec, indent=2, default=str)
    return ('<section id="environment"><h2>Environment</h2>'
            + table(["what", "value"], rows)
            + _conditions(a)
            + ("<h4>Memory plan</h4>" + table(["tenant", "memory share", "memory", "weights", "KV cache", "KV tokens"],
                                               plan_rows, numeric=(1, 2, 3, 4, 5)) if plan_rows else "")
            + f"<details><summary>The campaign spec, as validated</summary><pre>{e(spec)}</pre></details></section>")


def _conditions(a: Analysis) -> str:
    """Server lifetimes, idle gate and warm-up per experiment, where the manifests say."""
    c = a.conditions
    known = [k for k in ("server_lifetime", "idle", "warmup_settled") if c[k].drop_nulls().len()]
    if not known:
        return ""
    lines = "".join(f"<li>{e(x)}</li>" for x in conditions_summary(c))
    rows = [[e(r["experiment_id"]), e(r["block"]), e(r["server_lifetime"]),
             e({True: "yes", False: "no", None: "–"}[r["idle"]])
             + (f' <span class="muted small">{e(r["busy"])}</span>' if r["busy"] else ""),
             e(num(r["idle_waited_s"]) + " s" if r["idle_waited_s"] is not None else "–"),
             e({True: "yes", False: f"no ({r['warmup_unsettled']})", None: "–"}[r["warmup_settled"]])]
            for r in c.iter_rows(named=True)]
    return ("<h4>Experiment conditions</h4>" + f"<ul>{lines}</ul>"
            + "<details><summary>per experiment</summary>"
            + table(["experiment", "block", "server lifetime", "started idle", "idle wait", "warm-up settled"],
                    rows, numeric=(1, 2, 4)) + "</details>")


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


def render(a: Analysis, figs: dict[str, SavedFigure], timelines_shown: Sequence[str], timelines_total: int,
           capacity: CapacityRun | None = None) -> str:
    """The page; a run that measured capacity (``capacity``, else read from the run
    directory) leads with its Capacity section."""
    cap = capacity if capacity is not None else load_capacity(a.run)
    title = f"cotenant report — {a.run.name}"
    desc = (a.run.spec.get("description") or "").strip()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{k}">{v}</a>' for k, v in (
        *nav_entry(cap), ("summary", "Summary"), ("sets", "Sets"), ("interference", "Interference"),
        *((("precision", "Precision"),) if a.settings.precision_half_width is not None else ()),
        ("tenants", "Tenants"),
        ("explain", "Bottlenecks and predictions"),
        ("timelines", "Timelines"), ("failures", "Failures"), ("environment", "Environment")))
    body = "".join([
        "" if cap is None else capacity_html(cap, figs),
        summary_section(a, figs),
        sets_section(a),
        interference_section(a, figs),
        precision_section(a),
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
