"""The building blocks of the report's HTML pages: the stylesheet, escaping, badges, tables
and inline figures (report.html and compare.html share them)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from reports.figures import SavedFigure

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
    "hurts": "b-hurts",
    "not established": "b-na",
    "baseline": "b-baseline",
    "better in B": "b-well",
    "worse in B": "b-hurts",
}


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
