"""Explanation and prediction of a run directory, in one object: ``explain``.

It gathers the tenants' solo profiles (``reports.profiles``), the bottleneck readings alone
(``reports.bottleneck``) and in co-located sets (``reports.attribution``), the measured sets
(``reports.colocated``), the model and its leave-one-out scores (``reports.prediction``,
``reports.scoring``), and answers new questions with intervals: ``predict_rates`` (figures
of a set at given rates) and ``predict_capacity`` (co-located capacity and W along a mix).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from reports.attribution import attribution_table
from reports.bottleneck import bottleneck_table
from reports.colocated import MeasuredSet, measured_sets
from reports.prediction import (
    HOST,
    MPS,
    TIME_SLICE,
    Capacity,
    Model,
    default_mix,
    fit_kappa,
    model_for,
    predict_set,
    set_capacity,
    solo_capacity,
    weighted_capacity,
)
from reports.profiles import TenantProfile, build_profiles, profile_table, request_latencies
from reports.scoring import (
    FITTED,
    PLAIN,
    capacity_scores,
    interval,
    leave_one_out,
    mape_table,
    noise_floor,
    residuals,
)
from rundir.reader import RunDir


@dataclass(frozen=True)
class Explanation:
    profiles: dict[str, TenantProfile]
    profile_table: pl.DataFrame
    bottleneck: pl.DataFrame
    attribution: pl.DataFrame
    sets: list[MeasuredSet]
    plain: Model
    model: Model  # the model new predictions use
    why: str  # why that model
    scores: pl.DataFrame  # leave-one-out, both models
    mape: pl.DataFrame
    capacities: dict[str, Capacity]
    capacity_json: dict[str, Any] = field(default_factory=dict)

    @property
    def model_label(self) -> str:
        return FITTED if self.model.fitted_on else PLAIN

    def residuals(self) -> dict[str, list[float]]:
        return residuals(self.scores, self.model_label)


def sharing_mode(run: RunDir, dev: pl.DataFrame) -> str:
    """host (no GPU: vLLM on the CPU), mps, or time-slice."""
    src = set(dev["telemetry_source"].drop_nulls()) if "telemetry_source" in dev.columns else set()
    if run.gpu is None or src == {"host"}:
        return HOST
    return MPS if run.sharing == "mps" else TIME_SLICE


def host_cores(run: RunDir) -> float:
    host = run.campaign.get("host") or {}
    v = host.get("cpus") or host.get("cpu_count") if isinstance(host, dict) else None
    return float(v or 1)


def read_capacity_json(run: RunDir) -> dict[str, Any]:
    f = run.path / "capacity.json"
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _choose(scores: pl.DataFrame, profiles: Mapping[str, TenantProfile],
            sets: Sequence[MeasuredSet], plain: Model) -> tuple[Model, str]:
    """The calibrated model when its leave-one-out MAPE is lower than the plain model's on
    the predictions both scored (a model cannot win by predicting censored figures)."""
    keys = ["set", "tenant", "figure"]
    p = scores.filter((pl.col("model") == PLAIN) & pl.col("ape_pct").is_not_null())
    f = scores.filter((pl.col("model") == FITTED) & pl.col("ape_pct").is_not_null())
    both = p.select(*keys, "ape_pct").join(f.select(*keys, "ape_pct"), on=keys, how="inner",
                                           suffix="_fit", nulls_equal=True)
    if f.height == 0 or both.height == 0:
        return plain, "the plain model (nothing fitted: no other measured set to fit on)"
    mp, mf = float(both["ape_pct"].mean()), float(both["ape_pct_fit"].mean())  # type: ignore[arg-type]
    if not mf < mp:
        return plain, (f"the plain model: calibrating κ did not lower the leave-one-out MAPE "
                       f"({mf:.1f}% against {mp:.1f}% on the {both.height} predictions both scored)")
    fitted = fit_kappa(profiles, sets, plain)
    return fitted, (f"κ fitted on all {fitted.fitted_on} measured sets: its leave-one-out MAPE "
                    f"(κ refitted without each pairing) was {mf:.1f}% against {mp:.1f}% for the "
                    f"plain model, on the {both.height} predictions both scored")


def explain(run: RunDir, exp: pl.DataFrame, dev: pl.DataFrame) -> Explanation:
    """Everything the report's bottleneck and prediction sections show, for one run."""
    lat = request_latencies(run) if run.completed else None
    profiles = build_profiles(run, exp, dev, lat) if lat is not None else {}
    sets = measured_sets(run, exp, dev, lat, profiles) if lat is not None else []
    capj = read_capacity_json(run)
    plain = model_for(sharing_mode(run, dev), host_cores(run))
    caps = {t: solo_capacity(p, (capj.get("tenants") or {}).get(t)) for t, p in profiles.items()}
    scores = leave_one_out(profiles, sets, plain)
    cs = capacity_scores(profiles, sets, capj.get("sets") or {}, caps, plain)
    if cs.height:
        scores = pl.concat([scores, cs])
    model, why = _choose(scores, profiles, sets, plain)
    mape = mape_table(pl.concat([scores, noise_floor(profiles)]))
    return Explanation(profiles, profile_table(profiles), bottleneck_table(profiles),
                       attribution_table(sets, profiles, plain.cores), sets, plain, model, why,
                       scores,
                       mape, caps, capj)


# ---- new predictions -----------------------------------------------------------------------------


def _spread(p: TenantProfile, figure: str, rate: float) -> float | None:
    """The relative repetition sd of ``figure`` (sd for attainment) at the rung nearest
    ``rate`` (on the log scale)."""
    if not p.rungs:
        return None
    rung = min(p.rungs, key=lambda r: abs(math.log(r.rate / rate)) if rate > 0 else r.rate)
    sd, v = rung.row.get(f"{figure}_sd"), rung.row.get(figure)
    if sd is None:
        return None
    if figure == "slo_attainment":
        return float(sd)
    return float(sd) / float(v) if v else None


def predict_rates(x: Explanation, rates: Mapping[str, float]) -> list[dict[str, Any]]:
    """Each tenant's predicted figures at ``rates``, with intervals and how they were made."""
    pred = predict_set(x.profiles, rates, x.model)
    res = x.residuals()
    out = []
    for t, tp in pred.items():
        for fig, v in tp.figures.items():
            lo, hi, how = interval(fig, v, res, _spread(x.profiles[t], fig, tp.equivalent_rate))
            out.append({"tenant": t, "figure": fig, "offered_rps": tp.rate, "stretch": tp.stretch,
                        "equivalent_rps": tp.equivalent_rate, "extrapolated": tp.extrapolated,
                        "predicted": v, "lo": lo, "hi": hi, "interval": how})
    return out


def predict_capacity(x: Explanation, tenants: Sequence[str],
                     mix: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Co-located capacity (scale λ, the rates) and W along ``mix`` (default: w_i = C_i),
    with an interval: from capacity's own leave-one-out residuals where capacity searches
    were scored, else λ again with the attainment targets moved by the attainment
    interval's half-width."""
    w = dict(mix) if mix else default_mix(tenants, x.capacities)
    if any(v <= 0 for v in w.values()):
        raise ValueError(f"no positive solo capacity to build the mix from: {w}")
    c = set_capacity(x.profiles, w, x.capacities, x.model)
    res = x.residuals()
    out: dict[str, Any] = {"tenants": list(tenants), "mix": w, "scale": c.scale,
                           "rates": c.rates, "W": c.W, "first_fail": c.first_fail,
                           "censored": c.censored, "model": x.model.name,
                           "solo_capacity": {t: x.capacities[t].rps for t in tenants},
                           "solo_capacity_note": {t: x.capacities[t].censored for t in tenants}}
    bounded = [t for t in tenants if x.capacities[t].censored]
    if bounded:  # r_i / C_i with C_i only bounded: no number for W
        out["W"] = None
        out["W_note"] = (f"not estimable: the solo capacity of {', '.join(bounded)} is only "
                         "bounded (its profile's loads do not bracket the knee)")
    if c.censored:
        lower = c.censored.startswith("at least")
        return out | {"scale_lo": c.scale if lower else None, "scale_hi": None,
                      "W_lo": None, "W_hi": None,
                      "interval": f"none: {c.censored}" + (" (the scale is a lower bound)"
                                                           if lower else "")}
    if res.get("W") or res.get("capacity_scale"):
        lo, hi, how = interval("capacity_scale", c.scale, res, None)
        wlo, whi, _ = interval("W", out["W"], res, None)
    else:
        att = res.get("slo_attainment") or []
        h = _attainment_half_width(att, x, tenants)
        if h is None:
            return out | {"scale_lo": None, "scale_hi": None, "W_lo": None, "W_hi": None,
                          "interval": "no interval (no measured set, one repetition)"}
        lo_c = set_capacity(x.profiles, w, x.capacities, x.model, margin=h)
        hi_c = set_capacity(x.profiles, w, x.capacities, x.model, margin=-h)
        lo, hi = lo_c.scale, hi_c.scale
        wlo = weighted_capacity(lo_c.rates, x.capacities) if out["W"] is not None else None
        whi = weighted_capacity(hi_c.rates, x.capacities) if out["W"] is not None else None
        how = (f"attainment targets moved by ±{100 * h:.1f} points, the attainment interval "
               + ("of the leave-one-out residuals" if att else "of the profile's spread"))
    return out | {"scale_lo": lo, "scale_hi": hi, "W_lo": wlo, "W_hi": whi, "interval": how}


def _attainment_half_width(att: Sequence[float], x: Explanation,
                           tenants: Sequence[str]) -> float | None:
    lo, hi, _ = interval("slo_attainment", 0.5, {"slo_attainment": list(att)}, None)
    if att and lo is not None and hi is not None:
        return (hi - lo) / 2
    sds = [r.row.get("slo_attainment_sd") for t in tenants for r in x.profiles[t].rungs]
    vals = [float(v) for v in sds if v is not None]
    if not vals:
        return None
    lo, hi, _ = interval("slo_attainment", 0.5, {}, sum(vals) / len(vals))
    return None if lo is None or hi is None else (hi - lo) / 2
