"""The words of the report: what was run, the headline, the definitions (HTML and Markdown)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from reports.analysis import Analysis
from reports.batch import FLAG_TEXT as BATCH_FLAG
from reports.conditions import summary as conditions_summary
from reports.metrics import num
from reports.strategy import CLASS_HURTS, CLASS_UNKNOWN, CLASS_WELL, set_name
from reports.tails import TOO_FEW
from reports.verdicts import ratio_text


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


def method_line(a: Analysis) -> str:
    """How the verdicts were reached: margin, level, the family and its correction, MDE."""
    st = a.settings
    fam = a.interference.filter(pl.col("in_family"))
    untested = a.interference.filter(pl.col("headline") & ~pl.col("in_family")).height
    txt = (f"Verdicts: margin {num(100 * st.margin)}% (hurts when the {num(100 * st.level)}% "
           f"interval of a slowdown lies above {1 + st.margin:g}x, shares well when it lies below); "
           f"family: {fam.height} headline figure{'s' if fam.height != 1 else ''} tested, "
           f"{st.method_name} correction")
    if untested:
        txt += f" ({untested} more headline figures had no test: too few blocks, or no interval)"
    mde = fam["mde"].drop_nulls()
    if mde.len():
        vals = sorted(float(v) for v in mde.to_list())
        lo, mid, hi = vals[0], vals[len(vals) // 2], vals[-1]
        txt += (f"; the smallest slowdown this design detects with 80% power is "
                f"{num(100 * mid, 2)}% (median over the family; {num(100 * lo, 2)}–{num(100 * hi, 2)}%)")
    return txt + "."


def headlines(a: Analysis) -> list[str]:
    """The few sentences a newcomer reads first: only what the data establishes."""
    s = a.strategies.filter(pl.col("n_active") > 1)
    out: list[str] = []
    if s.height == 0:
        out.append(
            "Only isolated experiments completed, so there is no co-location to judge; "
            "the tenant sections give each tenant's figures alone."
        )
    well = s.filter(pl.col("classification") == CLASS_WELL).sort("rank")
    hurts = s.filter(pl.col("classification") == CLASS_HURTS).sort("rank", descending=True)
    unknown = s.filter(pl.col("classification") == CLASS_UNKNOWN)
    if well.height:
        out.append(f"Shares well — {_first(well)}")
        if well.height > 1:
            out.append("Also sharing well: " + _names(well[1:]) + ".")
    if hurts.height:
        out.append(f"Hurts — {_first(hurts)}")
        if hurts.height > 1:
            out.append("Also hurting: " + _names(hurts[1:]) + ".")
    if unknown.height:
        out.append(
            f"Not established (not ranked): {_names(unknown)} — the data cannot say whether "
            f"{'it hurts' if unknown.height == 1 else 'they hurt'} or share well at a margin of "
            f"{num(100 * a.settings.margin)}%; more blocks would tell (a tail figure needs at least 5)."
        )
    if s.height:
        out.append(method_line(a))
    lost = a.interference.filter(
        pl.col("in_family") & (pl.col("verdict") == CLASS_UNKNOWN)
        & pl.col("reason").str.contains("not after", literal=True))
    if lost.height:
        out.append(f"{lost.height} headline figure{'s' if lost.height != 1 else ''} whose interval "
                   f"excludes {1 + a.settings.margin:g}x {'are' if lost.height != 1 else 'is'} not "
                   f"established after the {a.settings.method_name} correction.")
    out += _batch_lines(a)
    out += [c[0].upper() + c[1:] + "." for c in conditions_summary(a.conditions)]
    if a.failures.height:
        f = a.failures
        what = "; ".join(
            f"{r['experiment_id']}: {r['status']}{' — ' + r['reason'] if r['reason'] else ''}"
            for r in f.head(3).iter_rows(named=True)
        )
        more = f" and {f.height - 3} more" if f.height > 3 else ""
        out.append(f"{f.height} experiment{'s' if f.height != 1 else ''} did not complete ({what}{more}); "
                   "their blocks have no pair.")
    return out


def _batch_lines(a: Analysis) -> list[str]:
    hit = a.strategies.filter(pl.col("batch_limit").is_not_null())
    return [f"{set_name(r['active_set'])}: {r['batch_limit']} — {BATCH_FLAG}."
            for r in hit.iter_rows(named=True)]


def _first(df: pl.DataFrame) -> str:
    return str(df.row(0, named=True)["verdict"]) + "."


def _names(df: pl.DataFrame) -> str:
    return ", ".join(
        set_name(r["active_set"]) + ("" if r["rate_scale"] == 1.0 else f" (x{r['rate_scale']:g})")
        for r in df.iter_rows(named=True))


def definitions() -> Sequence[tuple[str, str]]:
    return (
        ("goodput", "requests per second, in the measurement window, that ended ok and met every SLO "
         "of their tenant (TTFT, TPOT, E2E targets from the spec; a tenant without SLOs counts every "
         "ok request)."),
        ("block", "one repetition: the tenant gets the same arrival trace alone and co-located, so the "
         "two experiments of a block form a pair. n is the number of blocks where both arms completed."),
        ("slowdown", "a tenant's figure co-located / the same figure alone in the same block; the "
         "estimate is the geometric mean over blocks. For throughput, goodput and attainment it is "
         "alone / co-located, so above 1 is always worse."),
        ("interval", "t interval over the blocks' log ratios (paired); with fewer than 5 blocks in a "
         "cell the residual variance is pooled over the campaign's cells of that figure "
         "(report.pool_variance). p99 figures are taken over the requests pooled per arm, with an "
         "interval from resampling blocks (at least 5). An interval wider than x4 is printed as "
         "\"not estimable with n blocks\"."),
        ("hurts / shares well / not established", "hurts: the interval's lower bound lies above "
         "1 + margin; shares well: its upper bound lies below 1 + margin; otherwise not established. "
         "The headline figures (TPOT p50, TTFT p99, E2E p99 of decoders; E2E p50 and p99 of the "
         "encoder) form the family that is tested, corrected for multiplicity. A set hurts if any "
         "headline figure hurts and shares well only if all do; sets not established are never ranked."),
        ("minimum detectable effect", "exp((t(1-a/2, df) + t(0.8, df)) x sd / sqrt(n)) - 1 with sd "
         "the measured residual sd of the log ratios: the smallest slowdown the design finds with "
         "80% power."),
        ("censoring", "a request that ended in error, timeout or drop is an SLO miss and infinitely "
         "slow in every percentile; a percentile past the share of failed requests is infinite."),
        ("batch limit", "Little's law: requests in flight = throughput x mean E2E; at 90% of "
         "max_num_seqs or more, the figure measures the configuration, not the GPU."),
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


def fmt_ratio(r: dict[str, Any], key: str = "slowdown", n_key: str = "n") -> str:
    """A slowdown with its interval, or "not estimable with n blocks" (reports.verdicts)."""
    why = TOO_FEW if r.get("method") == TOO_FEW else None
    return ratio_text(r.get(key), r.get(f"{key}_lo"), r.get(f"{key}_hi"), r.get(n_key), why=why)
