"""Figures (matplotlib, Agg): each is saved as SVG and PNG and inlined into report.html.

Every function takes finished tables and returns a ``Figure`` or None where there is
nothing to draw; ``save`` writes both files atomically and returns the SVG text ready to
inline (text kept as text, ids salted per figure so that several SVGs share one page).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from reports.metrics import label, num
from rundir.ids import group_label
from rundir.io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INK = "#1f2933"
MUTED = "#6b7785"
GRID = "#e3e7ec"
WINDOW = "#eef3f8"
# tenants keep their colour in every figure
PALETTE = ["#2f6db5", "#e07b28", "#3a9a5b", "#c2403a", "#8b5fbf", "#8c6d46", "#d46fb0", "#5f6b76"]


def _mpl() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.fonttype": "none",
            "font.family": ["DejaVu Sans", "sans-serif"],
            "font.size": 9,
            "axes.edgecolor": "#b9c1ca",
            "axes.labelcolor": INK,
            "axes.titlesize": 10,
            "axes.titleweight": "bold",
            "axes.titlecolor": INK,
            "axes.grid": True,
            "grid.color": GRID,
            "grid.linewidth": 0.8,
            "axes.axisbelow": True,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "xtick.color": MUTED,
            "ytick.color": MUTED,
            "legend.frameon": False,
            "legend.fontsize": 8,
            "figure.dpi": 100,
        }
    )
    return plt


def tenant_colors(tenants: Sequence[str]) -> dict[str, str]:
    return {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(tenants)}


@dataclass(frozen=True)
class SavedFigure:
    name: str
    title: str
    svg_path: Path
    png_path: Path
    svg: str  # inline-ready


def save(fig: Figure, out_dir: Path, name: str, title: str) -> SavedFigure:
    """Write ``name.svg`` and ``name.png`` under ``out_dir``; close the figure."""
    plt = _mpl()
    plt.rcParams["svg.hashsalt"] = name
    svg_buf, png_buf = io.BytesIO(), io.BytesIO()
    fig.savefig(svg_buf, format="svg", metadata={"Date": None})
    fig.savefig(png_buf, format="png", dpi=110)
    plt.close(fig)
    svg_path, png_path = out_dir / f"{name}.svg", out_dir / f"{name}.png"
    atomic_write_bytes(svg_path, svg_buf.getvalue())
    atomic_write_bytes(png_path, png_buf.getvalue())
    return SavedFigure(name, title, svg_path, png_path, inline_svg(svg_buf.getvalue().decode(), name))


def inline_svg(svg: str, name: str) -> str:
    """Strip the XML prologue, make it scale with the page and label it for readers.

    Ids are prefixed with the figure's name (and references to them follow), so that many
    SVGs on one page never share an id.
    """
    svg = re.sub(r"^.*?(<svg\b)", r"\1", svg, count=1, flags=re.S)
    prefix = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    ids = set(re.findall(r'\sid="([^"]+)"', svg))
    if ids:
        svg = re.sub(r'(\sid=")([^"]+)"', lambda m: f'{m.group(1)}{prefix}-{m.group(2)}"', svg)
        svg = re.sub(
            r"(url\(#|href=\"#)([^)\"]+)",
            lambda m: m.group(1) + (f"{prefix}-{m.group(2)}" if m.group(2) in ids else m.group(2)),
            svg,
        )
    svg = re.sub(
        r'<svg\b([^>]*?)\swidth="([\d.]+)pt"\s+height="([\d.]+)pt"',
        lambda m: f'<svg{m.group(1)} width="100%" style="max-width:{float(m.group(2)) * 4 / 3:.0f}px"'
        f' data-figure="{name}" role="img"',
        svg,
        count=1,
    )
    return svg


# ---- the figures -----------------------------------------------------------------------------------


def interference_heatmap(matrix: pl.DataFrame, tenants: Sequence[str]) -> Figure | None:
    """Victim (rows) x co-tenant (columns): the victim's verdict in the pair and its worst
    headline slowdown; only established cells are coloured, the others stay grey."""
    if matrix.height == 0:
        return None
    plt = _mpl()
    from matplotlib.colors import LinearSegmentedColormap, TwoSlopeNorm

    from reports.verdicts import HURTS, WELL, ratio_text

    scales = sorted(matrix["rate_scale"].unique().to_list())
    names = [t for t in tenants if t in set(matrix["victim"]) | set(matrix["co_tenant"])]
    n = len(names)
    cell = 1.15
    fig, axes = plt.subplots(
        1, len(scales), figsize=(max(4.2, cell * n + 2.2) * len(scales), cell * n + 1.4), squeeze=False
    )
    cmap = LinearSegmentedColormap.from_list(
        "slow", ["#3a9a5b", "#f4f6f8", "#f0b35e", "#c2403a"]).with_extremes(bad="#e9edf1")
    finite = [v for v in matrix["slowdown"].to_list() if v is not None and math.isfinite(v) and v > 0]
    vmax = max([2.0, *finite])
    norm = TwoSlopeNorm(vmin=min([0.8, *finite]), vcenter=1.0, vmax=vmax)
    for ax, scale in zip(axes[0], scales, strict=True):
        sub = matrix.filter(pl.col("rate_scale") == scale)
        grid = [[math.nan] * n for _ in range(n)]
        notes: dict[tuple[int, int], str] = {}
        for r in sub.iter_rows(named=True):
            i, j = names.index(r["victim"]), names.index(r["co_tenant"])
            v, s_ = r["tenant_verdict"], r["slowdown"]
            if v in (HURTS, WELL) and s_ is not None:
                grid[i][j] = min(s_, vmax)
            txt = ratio_text(s_, r["slowdown_lo"], r["slowdown_hi"], r["n"]).split(" (")[0]
            notes[(i, j)] = f"{txt}\n{v}\n{_short(r['metric'])}"
        ax.imshow(grid, cmap=cmap, norm=norm, aspect="equal")
        for i in range(n):
            for j in range(n):
                txt = "alone" if i == j else notes.get((i, j), "–")
                ax.text(j, i, txt, ha="center", va="center", fontsize=8, color=INK)
        ax.set_xticks(range(n), names, rotation=20, ha="right")
        ax.set_yticks(range(n), names)
        ax.set_xlabel("co-tenant (the neighbour)")
        ax.set_ylabel("victim (whose latency is measured)")
        ax.grid(False)
        for s in ax.spines.values():
            s.set_visible(False)
        ax.set_title(f"worst headline slowdown, co-located / alone (load x{scale:g})")
    fig.tight_layout()
    return fig


def _short(metric: str) -> str:
    return label(metric).text.replace(" p99", " p99").replace("inter-token gap", "ITL")


def strategy_map(strategies: pl.DataFrame, margin: float = 0.10) -> Figure | None:
    """Per co-located set: its worst headline slowdown with the 95% interval, against the
    margin line, coloured by the set's verdict. Intervals wider than x4 are not drawn (the
    point is hollow and labelled "not estimable")."""
    from reports.strategy import CLASS_HURTS, CLASS_UNKNOWN, CLASS_WELL
    from reports.verdicts import estimable

    s = strategies.filter((pl.col("n_active") > 1) & pl.col("worst_slowdown").is_not_null())
    if s.height == 0:
        return None
    plt = _mpl()
    colors = {CLASS_WELL: "#3a9a5b", CLASS_HURTS: "#c2403a", CLASS_UNKNOWN: MUTED}
    s = s.with_columns(pl.col("worst_slowdown").clip(1e-3, 1e3)).sort("worst_slowdown")
    fig, ax = plt.subplots(figsize=(7.6, 1.2 + 0.5 * s.height))
    bound = 1.0 + margin
    ax.axvline(1.0, color=MUTED, lw=0.8, ls=":")
    ax.axvline(bound, color="#c2403a", lw=1.0, ls="--")
    ax.text(bound, 0.01, f" 1 + margin = {bound:g}", transform=ax.get_xaxis_transform(),
            color="#c2403a", fontsize=7.5, va="bottom")
    labels = []
    for y, r in enumerate(s.iter_rows(named=True)):
        c = colors.get(r["classification"], MUTED)
        x, lo, hi = r["worst_slowdown"], r["worst_slowdown_lo"], r["worst_slowdown_hi"]
        ok = estimable(lo, hi)
        if ok:
            ax.errorbar(x, y, xerr=[[x - lo], [hi - x]], fmt="none", ecolor=c, capsize=3, lw=1.4)
        ax.scatter([x], [y], s=55, zorder=3, color=c if ok else "white", edgecolor=c, linewidth=1.5)
        tag = "" if r["rate_scale"] == 1.0 else f" (x{r['rate_scale']:g})"
        labels.append(r["active_set"].replace("+", " + ") + tag)
        note = r["classification"] + ("" if ok else f", not estimable with {r['worst_n']} blocks")
        ax.annotate(note, (x, y), textcoords="offset points", xytext=(0, 6), ha="center",
                    fontsize=7.5, color=c)
    ax.set_yticks(range(s.height), labels, fontsize=8)
    ax.set_xscale("log")
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    lo_x, hi_x = ax.get_xlim()
    ticks = [v for v in (0.25, 0.5, 0.8, 1.0, bound, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 10.0, 30.0, 100.0)
             if lo_x <= v <= hi_x]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: num(v, 2)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(-0.7, s.height - 0.3)
    ax.set_xlabel("worst headline slowdown of a tenant (co-located / alone, 95% CI; log scale)")
    ax.set_title("Worst headline slowdown per set (95% CI) against 1 + margin")
    fig.tight_layout()
    return fig


def latency_cdfs(
    cdf: pl.DataFrame, tenants: Sequence[str], set_order: Sequence[str], metric_label: str
) -> Figure | None:
    """Per tenant, the latency distribution in each set it ran in (pooled repetitions)."""
    if cdf.height == 0:
        return None
    plt = _mpl()
    present = [t for t in tenants if t in set(cdf["tenant"])]
    n = len(present)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.1 * cols, 3.0 * rows), squeeze=False)
    line_colors = ["#1f2933", "#2f6db5", "#e07b28", "#3a9a5b", "#c2403a", "#8b5fbf", "#8c6d46", "#d46fb0"]
    styles = ["-", "--", "-.", ":"]
    for k, t in enumerate(present):
        ax = axes[k // cols][k % cols]
        sub = cdf.filter(pl.col("tenant") == t)
        groups = [g for g in set_order if g in set(sub["group_id"])]
        for i, g in enumerate(groups):
            d = sub.filter(pl.col("group_id") == g).sort("p")
            ms = [v * 1e3 for v in d["value_s"].to_list()]
            lab = group_label(g)
            lw = 2.0 if lab.split(" ")[0] == t else 1.3
            ax.plot(ms, d["p"].to_list(), color=line_colors[i % len(line_colors)],
                    ls=styles[(i // len(line_colors)) % len(styles)], lw=lw, label=lab)
        _latency_axis(ax, sub["value_s"].to_list())
        ax.set_ylim(0, 1.0)
        ax.set_title(t)
        ax.set_xlabel(f"{metric_label} (ms{', log scale' if ax.get_xscale() == 'log' else ''})")
        ax.set_ylabel("share of requests")
        ax.legend(loc="lower right", fontsize=7)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    fig.tight_layout()
    return fig


def _latency_axis(ax: Any, values_s: Sequence[float]) -> None:
    """Log scale when the values span more than a decade; plain numbers on the ticks."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    v = [x for x in values_s if x is not None and x > 0]
    if v and max(v) / min(v) > 10:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: num(x, 2)))
        ax.xaxis.set_minor_formatter(NullFormatter())


def throughput_bars(stats: pl.DataFrame, tenants: Sequence[str], set_order: Sequence[str]) -> Figure | None:
    """Per tenant: achieved throughput and goodput in each set, with 95% CI."""
    s = stats.filter(pl.col("metric").is_in(["throughput_rps", "goodput_rps"]))
    if s.height == 0:
        return None
    plt = _mpl()
    present = [t for t in tenants if t in set(s["tenant"])]
    n = len(present)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.1 * cols, 3.2 * rows), squeeze=False)
    colors = tenant_colors(tenants)
    for k, t in enumerate(present):
        ax = axes[k // cols][k % cols]
        sub = s.filter(pl.col("tenant") == t)
        groups = [g for g in set_order if g in set(sub["group_id"])]
        xs = list(range(len(groups)))
        for off, metric, alpha in ((-0.2, "throughput_rps", 0.35), (0.2, "goodput_rps", 1.0)):
            vals, errs = [], []
            for g in groups:
                r = sub.filter((pl.col("group_id") == g) & (pl.col("metric") == metric))
                m = r["mean"][0] if r.height else None
                hw = r["half_width"][0] if r.height else None
                vals.append(m or 0.0)
                errs.append(hw or 0.0)
            ax.bar([x + off for x in xs], vals, width=0.4, color=colors[t], alpha=alpha,
                   yerr=errs, capsize=3, error_kw={"ecolor": INK, "lw": 0.8}, label=metric)
        ax.set_xticks(xs, [group_label(g).replace(" + ", "+\n") for g in groups], fontsize=7)
        ax.set_title(t, pad=4)
        ax.set_ylabel("req/s")
        ax.grid(axis="x", visible=False)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, ["throughput (ok requests)", "goodput (met every SLO)"], loc="upper center",
               ncol=2, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def timeline(
    title: str,
    window: tuple[float, float],
    telemetry: pl.DataFrame,
    rates: pl.DataFrame,
    tenants: Sequence[str],
    max_points: int = 600,
) -> Figure:
    """Request rate, GPU (or CPU) utilization and memory on one time axis."""
    plt = _mpl()
    colors = tenant_colors(tenants)
    dev = telemetry.filter(pl.col("scope") == "device")
    gpu = dev.height > 0 and dev["gpu_util_pct"].drop_nulls().len() > 0
    fig, axes = plt.subplots(3, 1, figsize=(8.6, 5.2), sharex=True,
                             gridspec_kw={"height_ratios": [1, 1, 1.1]})
    a_rate, a_util, a_mem = axes
    for ax in axes:
        ax.axvspan(window[0], window[1], color=WINDOW, zorder=0, lw=0)
    for t in [t for t in tenants if t in set(rates["tenant"])]:
        d = rates.filter(pl.col("tenant") == t)
        a_rate.step(d["t_s"].to_list(), d["rate_rps"].to_list(), where="post", color=colors[t], lw=1.2, label=t)
    a_rate.set_ylabel("requests/s sent")
    a_rate.set_title(title)
    a_rate.text(window[0], 1.0, " measurement window", transform=a_rate.get_xaxis_transform(),
                va="top", fontsize=7, color=MUTED)

    dev = _thin(dev.sort("t_s"), max_points)
    tproc = telemetry.filter(pl.col("scope") != "device").sort("t_s")
    if gpu:
        a_util.plot(dev["t_s"].to_list(), dev["gpu_util_pct"].to_list(), color=INK, lw=1.1, label="GPU util")
        if dev["gpm_sm_util_pct"].drop_nulls().len():
            a_util.plot(dev["t_s"].to_list(), dev["gpm_sm_util_pct"].to_list(), color="#7a8794", lw=1.0, ls="--", label="SM (GPM)")
            a_util.plot(dev["t_s"].to_list(), dev["gpm_dram_bw_util_pct"].to_list(), color="#b0b9c2", lw=1.0, ls=":", label="DRAM bw (GPM)")
        a_util.set_ylabel("GPU %")
        total = dev["mem_total_bytes"].drop_nulls()
        a_mem.plot(dev["t_s"].to_list(), [_gib(v) for v in dev["mem_used_bytes"].to_list()], color=INK, lw=1.2, label="GPU used")
        if total.len():
            a_mem.axhline(_gib(_num(total.max(), 0.0)), color=MUTED, lw=0.8, ls="--", label="GPU total")
        for t in tenants:
            d = _thin(tproc.filter(pl.col("scope") == t), max_points)
            if d.height and d["proc_gpu_mem_bytes"].drop_nulls().len():
                a_mem.plot(d["t_s"].to_list(), [_gib(v) for v in d["proc_gpu_mem_bytes"].to_list()], color=colors[t], lw=1.0, label=t)
        a_mem.set_ylabel("GiB")
    else:
        if dev.height:
            a_util.plot(dev["t_s"].to_list(), dev["host_cpu_pct"].to_list(), color=INK, lw=1.1, label="host CPU (% of all cores)")
        for t in tenants:
            d = _thin(tproc.filter(pl.col("scope") == t), max_points)
            if d.height and d["proc_cpu_pct"].drop_nulls().len():
                a_util.plot(d["t_s"].to_list(), d["proc_cpu_pct"].to_list(), color=colors[t], lw=1.0, label=t)
            if d.height and d["proc_rss_bytes"].drop_nulls().len():
                a_mem.plot(d["t_s"].to_list(), [_gib(v) for v in d["proc_rss_bytes"].to_list()], color=colors[t], lw=1.0, label=f"{t} RSS")
        a_util.set_ylabel("CPU % (100 = 1 core)")
        a_mem.set_ylabel("RSS GiB")
        a_util.text(0.01, 0.95, "no GPU: host CPU and process RSS", transform=a_util.transAxes,
                    fontsize=7, color=MUTED, va="top")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    a_mem.set_xlabel("seconds since the experiment started")
    a_mem.set_ylim(bottom=0)
    a_util.set_ylim(bottom=0)
    fig.tight_layout()
    return fig


def _num(v: object, default: float) -> float:
    """A Series aggregate as a float (polars types them loosely)."""
    return float(v) if isinstance(v, int | float) and v == v else default


def _gib(v: float | None) -> float:
    return math.nan if v is None else v / 2**30


def _thin(df: pl.DataFrame, n: int) -> pl.DataFrame:
    return df if df.height <= n else df.gather_every(math.ceil(df.height / n))
