"""Predictions scored honestly: leave each measured co-located set out, predict it from the rest.

For every measured set G (``reports.colocated``: co-located experiments or capacity probes
at one load) the solo profiles predict each tenant's figures at G's offered rates; the
plain model fits nothing, so leaving G out changes nothing for it, while the calibrated
model refits its κ on the other sets only (``reports.prediction.fit_kappa``), leaving out
every load of G's tenant set, as if nobody had ever run that pairing. Where a
capacity search measured a set's co-located capacity (``capacity.json``), its scale λ and
W are predicted along the same mix, the κ refitted without that set's probes.

Errors: the absolute percentage error |pred - meas| / meas per figure (APE, in %), and
their mean per figure (MAPE). Beside them, the noise floor (``noise_floor``): each solo
experiment's figures against the other repetitions' at the same load, the error no model
of these profiles can beat. Figures that are infinite on either side (more than 1% of
requests failed, so a p99 is censored) or zero in the measurement are listed, never
averaged. Intervals of new predictions come from the residuals here (the log ratio
pred / meas, and pred - meas for attainment): ``interval``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl
from scipy.stats import t as student_t

from reports.colocated import MeasuredSet
from reports.prediction import (
    Capacity,
    Model,
    fit_kappa,
    predict_set,
    predicted_figures,
    set_capacity,
)
from reports.profiles import TenantProfile

PLAIN, FITTED = "plain", "calibrated"

SCORE_SCHEMA: dict[str, Any] = {
    "set": pl.Utf8,
    "active_set": pl.Utf8,
    "rate_scale": pl.Float64,
    "tenant": pl.Utf8,
    "figure": pl.Utf8,
    "model": pl.Utf8,
    "kappa": pl.Float64,
    "offered_rps": pl.Float64,
    "stretch": pl.Float64,
    "equivalent_rps": pl.Float64,
    "extrapolated": pl.Boolean,
    "predicted": pl.Float64,
    "measured": pl.Float64,
    "ape_pct": pl.Float64,
    "residual": pl.Float64,
}
MAPE_SCHEMA: dict[str, Any] = {
    "model": pl.Utf8,
    "figure": pl.Utf8,
    "n": pl.Int64,
    "unscored": pl.Int64,  # no APE: infinite (censored) on either side, or measured 0
    "mape_pct": pl.Float64,
    "median_ape_pct": pl.Float64,
    "max_ape_pct": pl.Float64,
    "mae_points": pl.Float64,  # SLO attainment: mean |pred - meas| in percentage points
}


def residual(figure: str, pred: float, meas: float) -> float:
    """log(pred / meas) for latencies, capacity and W; pred - meas for SLO attainment."""
    if figure == "slo_attainment":
        return pred - meas
    return math.log(pred / meas)


def ape(pred: float | None, meas: float | None) -> float | None:
    if pred is None or meas is None or not (math.isfinite(pred) and math.isfinite(meas)):
        return None
    if meas == 0:
        return None
    return abs(pred - meas) / abs(meas) * 100.0


def _row(s: MeasuredSet, t: str, fig: str, model_name: str, m: Model, tp: Any,
         meas: float | None) -> dict[str, Any]:
    pred = tp.figures.get(fig) if tp is not None else None
    e = ape(pred, meas)
    res = None
    if e is not None and pred is not None and meas is not None and (
            fig == "slo_attainment" or (pred > 0 and meas > 0)):
        res = residual(fig, pred, meas)
    return {
        "set": s.name, "active_set": "+".join(s.tenants), "rate_scale": s.rate_scale,
        "tenant": t, "figure": fig, "model": model_name, "kappa": m.kappa,
        "offered_rps": s.rates.get(t), "stretch": tp.stretch if tp else None,
        "equivalent_rps": tp.equivalent_rate if tp else None,
        "extrapolated": tp.extrapolated if tp else None,
        "predicted": pred, "measured": meas, "ape_pct": e, "residual": res,
    }


def leave_one_out(profiles: Mapping[str, TenantProfile], sets: Sequence[MeasuredSet],
                  plain: Model, calibrate: bool = True) -> pl.DataFrame:
    """Per left-out set x tenant x figure x model: predicted, measured, APE, residual."""
    rows: list[dict[str, Any]] = []
    usable = [s for s in sets if all(t in profiles and profiles[t].rungs for t in s.tenants)]
    for s in usable:
        models = [(PLAIN, plain)]
        # the pairing left out entirely (every load it ran at): as if nobody had run it
        rest = [x for x in usable if set(x.tenants) != set(s.tenants)]
        if calibrate and rest:
            models.append((FITTED, fit_kappa(profiles, rest, plain)))
        for name, m in models:
            pred = predict_set(profiles, s.rates, m)
            for t in s.tenants:
                for fig in pred[t].figures:
                    rows.append(_row(s, t, fig, name, m, pred[t], s.figures[t].get(fig)))
    if not rows:
        return pl.DataFrame(schema=SCORE_SCHEMA)
    return pl.DataFrame(rows, schema=SCORE_SCHEMA, strict=False)


def capacity_scores(profiles: Mapping[str, TenantProfile], sets: Sequence[MeasuredSet],
                    measured: Mapping[str, Any], capacities: Mapping[str, Capacity],
                    plain: Model, calibrate: bool = True) -> pl.DataFrame:
    """capacity.json's co-located sets: predicted λ and W along the measured mix."""
    rows: list[dict[str, Any]] = []
    for key, c in (measured or {}).items():
        tenants = tuple(str(key).split("+"))
        mix = {t: float(v) for t, v in (c.get("mix") or {}).items()}
        if not mix or any(t not in profiles for t in tenants):
            continue
        models = [(PLAIN, plain)]
        rest = [x for x in sets if set(x.tenants) != set(tenants)]
        if calibrate and rest:
            models.append((FITTED, fit_kappa(profiles, rest, plain)))
        for name, m in models:
            pred = set_capacity(profiles, mix, capacities, m)
            for fig, pv, mv in (("capacity_scale", pred.scale, c.get("scale")),
                                ("W", pred.W, c.get("W"))):
                mv = None if mv is None else float(mv)
                e = ape(pv, mv)
                rows.append({
                    "set": " + ".join(tenants) + " (co-located capacity)",
                    "active_set": "+".join(tenants), "rate_scale": None, "tenant": None,
                    "figure": fig, "model": name, "kappa": m.kappa, "offered_rps": None,
                    "stretch": None, "equivalent_rps": None,
                    "extrapolated": pred.censored is not None, "predicted": pv, "measured": mv,
                    "ape_pct": e, "residual": None if e is None or not pv or not mv
                    else math.log(pv / mv),
                })
    if not rows:
        return pl.DataFrame(schema=SCORE_SCHEMA)
    return pl.DataFrame(rows, schema=SCORE_SCHEMA, strict=False)


NOISE = "repetition noise"


def noise_floor(profiles: Mapping[str, TenantProfile]) -> pl.DataFrame:
    """The error no model of these profiles can beat: each solo experiment's figures
    "predicted" by the other repetitions at the same load (their requests pooled), as rows
    of ``SCORE_SCHEMA`` with model ``repetition noise``."""
    rows: list[dict[str, Any]] = []
    for p in profiles.values():
        figs = predicted_figures(p.kind)
        for rung in p.rungs:
            ids = rung.arm.experiments
            if len(ids) < 2:
                continue
            for e in ids:
                this, rest = rung.arm.only([e]), rung.arm.only([i for i in ids if i != e])
                for f in figs:
                    pv = rest.attainment(p.slo) if f == "slo_attainment" else rest.quantile(f)
                    mv = this.attainment(p.slo) if f == "slo_attainment" else this.quantile(f)
                    err = ape(pv, mv)
                    res = None if err is None or pv is None or mv is None or (
                        f != "slo_attainment" and (pv <= 0 or mv <= 0)) else residual(f, pv, mv)
                    rows.append({"set": f"{p.tenant} alone, {e}", "active_set": p.tenant,
                                 "rate_scale": rung.row.get("rate_scale"), "tenant": p.tenant,
                                 "figure": f, "model": NOISE, "kappa": None,
                                 "offered_rps": rung.rate, "stretch": 1.0,
                                 "equivalent_rps": rung.rate, "extrapolated": False,
                                 "predicted": pv, "measured": mv, "ape_pct": err, "residual": res})
    if not rows:
        return pl.DataFrame(schema=SCORE_SCHEMA)
    return pl.DataFrame(rows, schema=SCORE_SCHEMA, strict=False)


def mape_table(scores: pl.DataFrame) -> pl.DataFrame:
    """Per model x figure: scored pairs, censored ones left out, MAPE, median and max APE;
    ``all`` pools every figure."""
    if scores.height == 0:
        return pl.DataFrame(schema=MAPE_SCHEMA)
    both = pl.concat([scores, scores.with_columns(pl.lit("all").alias("figure"))])
    out = both.group_by("model", "figure", maintain_order=True).agg(
        pl.col("ape_pct").is_not_null().sum().cast(pl.Int64).alias("n"),
        pl.col("ape_pct").is_null().sum().cast(pl.Int64).alias("unscored"),
        pl.col("ape_pct").mean().alias("mape_pct"),
        pl.col("ape_pct").median().alias("median_ape_pct"),
        pl.col("ape_pct").max().alias("max_ape_pct"),
        pl.when(pl.col("figure") == "slo_attainment").then(
            (pl.col("predicted") - pl.col("measured")).abs() * 100).mean().alias("mae_points"),
    )
    figs = ["tpot_p50_s", "ttft_p99_s", "e2e_p99_s", "slo_attainment", "capacity_scale", "W",
            "all"]
    models = [PLAIN, FITTED, NOISE]
    out = out.with_columns(
        pl.col("figure").replace_strict({f: i for i, f in enumerate(figs)}, default=len(figs),
                                        return_dtype=pl.Int64).alias("_f"),
        pl.col("model").replace_strict({m: i for i, m in enumerate(models)}, default=len(models),
                                       return_dtype=pl.Int64).alias("_m"),
    ).sort("_f", "_m")
    return out.select(list(MAPE_SCHEMA)).cast(MAPE_SCHEMA)  # type: ignore[arg-type]


def residuals(scores: pl.DataFrame, model: str) -> dict[str, list[float]]:
    """figure -> the leave-one-out residuals of ``model``."""
    out: dict[str, list[float]] = {}
    for r in scores.filter((pl.col("model") == model) & pl.col("residual").is_not_null()).iter_rows(
            named=True):
        out.setdefault(r["figure"], []).append(float(r["residual"]))
    return out


def interval(figure: str, value: float | None, res: Mapping[str, Sequence[float]],
             spread: float | None, level: float = 0.95) -> tuple[float | None, float | None, str]:
    """(lo, hi, how): from the leave-one-out residuals of ``figure`` when there are any
    (prediction interval: t quantile x their root mean square x sqrt(1 + 1/n)), else from
    the profile's repetition spread (``spread``: relative sd for latencies, sd for attainment:
    a normal quantile times it)."""
    if value is None or not math.isfinite(value):
        return None, None, "no interval (censored prediction)"
    r = list(res.get(figure) or [])
    if r:
        n = len(r)
        rms = math.sqrt(sum(x * x for x in r) / n)
        h = float(student_t.ppf(0.5 + level / 2, n)) * rms * math.sqrt(1 + 1 / n)
        how = f"leave-one-out residuals of {n} measured prediction{'s' if n != 1 else ''}"
    elif spread is not None and math.isfinite(spread):
        h = float(student_t.ppf(0.5 + level / 2, math.inf)) * spread
        how = "the profile's repetition spread (no measured set to score against)"
    else:
        return None, None, "no interval (one repetition and no measured set)"
    if figure == "slo_attainment":
        return max(0.0, value - h), min(1.0, value + h), how
    return value * math.exp(-h), value * math.exp(h), how
