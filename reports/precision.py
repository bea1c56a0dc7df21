"""How precise a campaign's paired comparisons are: the half-width of each co-located tenant's
primary figure's interval on the log scale, which the runner's precision goal
(``experiment.precision``) compares with its target.

For co-located group G (a set at a rate scale), tenant t and its primary figure m (the spec's
``experiment.precision.figures``, else ``tpot_p50_s`` for a decoder and ``e2e_p50_s`` for the
encoder), the pairs are the repetitions (blocks) r in which both G and t's alone arm completed
with a positive figure: d_r = log(m(G, t, r) / m(t alone, r)). The interval is the t interval
mean(d) ± t_{(1+level)/2, n-1} sd(d) / sqrt(n) (scipy.stats), its half-width
``log_half_width``; with fewer than two pairs it is infinite. The alone arm is the group
where t ran alone at the same rate scale: the one with the same resident set, else the one
where only t was resident, else the first (as ``reports.interference``).

The runner asks for the report's own intervals (``reports.analysis``: pooled variance where
the spec asks for it, censored figures analysed as the report does); the plain t interval
above is what this module computes itself when other figures or another level are asked.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.stats import t as student_t

from rundir.reader import RunDir, load_run

DEFAULT_FIGURES = {"vllm": "tpot_p50_s", "encoder": "e2e_p50_s"}


@dataclass(frozen=True)
class PairedWidth:
    group_id: str
    tenant: str
    figure: str
    n: int  # pairs
    log_half_width: float  # math.inf with fewer than two pairs

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not math.isfinite(self.log_half_width):
            d["log_half_width"] = None  # JSON has no infinity: null, fewer than two pairs
        return d

    def __iter__(self) -> Any:  # unpacks as (group_id, tenant, figure, n, log_half_width)
        return iter((self.group_id, self.tenant, self.figure, self.n, self.log_half_width))


def log_half_width(d: list[float] | np.ndarray, level: float = 0.95) -> float:
    """Half-width of the t interval of the mean of ``d``; inf with fewer than two values."""
    x = np.asarray(d, dtype=float)
    n = x.size
    if n < 2:
        return math.inf
    q = float(student_t.ppf((1 + level) / 2, n - 1))
    return q * float(x.std(ddof=1)) / math.sqrt(n)


def primary_figure(kind: str, tenant: str, figures: dict[str, str] | None = None) -> str:
    """The figure the precision goal watches for ``tenant`` (of ``kind``: vllm | encoder)."""
    return (figures or {}).get(tenant) or DEFAULT_FIGURES.get(kind, "e2e_p50_s")


def _settings(run: RunDir) -> tuple[dict[str, str], float]:
    x = run.spec.get("experiment") or {}
    figures = dict(((x.get("precision") or {}).get("figures")) or {})
    level = float((run.spec.get("report") or {}).get("level") or 0.95)
    return figures, level


def _alone_group(alone: pl.DataFrame, tenant: str, scale: float, resident: str) -> str | None:
    c = alone.filter((pl.col("tenant") == tenant) & (pl.col("rate_scale") == scale))
    if c.height == 0:
        return None
    for cond in (pl.col("resident_set") == resident, pl.col("resident_set") == tenant):
        best = c.filter(cond)
        if best.height:
            return str(best["group_id"][0])
    return str(c["group_id"][0])


def paired_half_widths(run: RunDir | str | Path, figures: dict[str, str] | None = None,
                       level: float | None = None) -> list[PairedWidth]:
    """Every co-located group x tenant: (group_id, tenant, figure, n, log_half_width), in
    the experiment table's order. With the spec's own ``figures`` and ``level`` (the
    default) these are the report's intervals (``reports.analysis.paired_half_widths``: the
    same pairing, censoring and pooled variance), so the goal is reached exactly when the
    report prints intervals that narrow; ``figures`` or ``level`` given: the plain paired t
    interval of this module (unpooled, uncensored), for a quick look at other figures."""
    run = run if isinstance(run, RunDir) else load_run(run)
    if not run.completed:
        return []
    if figures is None and level is None:
        from reports.analysis import paired_half_widths as report_widths

        rows = report_widths(run).iter_rows(named=True)
        return [PairedWidth(r["group_id"], r["tenant"], r["figure"], int(r["n"] or 0),
                            math.inf if r["log_half_width"] is None
                            or not math.isfinite(r["log_half_width"]) else float(r["log_half_width"]))
                for r in rows]
    return _plain_half_widths(run, figures, level)


def _plain_half_widths(run: RunDir, figures: dict[str, str] | None,
                       level: float | None) -> list[PairedWidth]:
    from reports.aggregate import experiment_table

    spec_figures, spec_level = _settings(run)
    figures = spec_figures if figures is None else figures
    level = spec_level if level is None else level
    exp, _ = experiment_table(run)
    cols = ["group_id", "tenant", "tenant_kind", "resident_set", "rate_scale", "repetition"]
    alone = exp.filter(pl.col("n_active") == 1).select(cols).unique(maintain_order=True)
    out: list[PairedWidth] = []
    together = exp.filter(pl.col("n_active") > 1)
    cells = together.select("group_id", "tenant", "tenant_kind", "resident_set", "rate_scale")
    for g in cells.unique(maintain_order=True).iter_rows(named=True):
        fig = primary_figure(g["tenant_kind"], g["tenant"], figures)
        bgid = _alone_group(alone, g["tenant"], g["rate_scale"], g["resident_set"])
        d: list[float] = []
        if bgid is not None and fig in exp.columns:
            both = _pairs(exp, g["group_id"], bgid, g["tenant"], fig)
            d = [math.log(a / b) for a, b in both]
        out.append(PairedWidth(g["group_id"], g["tenant"], fig, len(d), log_half_width(d, level)))
    return out


def _pairs(exp: pl.DataFrame, gid: str, bgid: str, tenant: str, fig: str,
           ) -> list[tuple[float, float]]:
    """(co-located, alone) values of ``fig`` by repetition, both positive and finite."""

    def arm(group: str) -> dict[int, float]:
        rows = exp.filter((pl.col("group_id") == group) & (pl.col("tenant") == tenant))
        return {int(r): float(v) for r, v in zip(rows["repetition"], rows[fig], strict=True)
                if v is not None and math.isfinite(float(v)) and float(v) > 0}

    a, b = arm(gid), arm(bgid)
    return [(a[r], b[r]) for r in sorted(a) if r in b]
