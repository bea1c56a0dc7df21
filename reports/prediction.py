"""Predictions for sets nobody ran, from each tenant's solo profile: the time-rescaling model.

**The model.** Co-located tenants share one executor: the GPU's time under time-slicing,
its SMs under MPS, the host's cores when vLLM runs on the CPU. Each tenant k, offered r_k,
demands a share of it, read off its solo profile at r_k (``TenantProfile.demand_at``):
NVML GPU busy fraction u_k (time-slice), GPM SM activity a_k (MPS; NVML busy where there is
no GPM), the engine's process-tree CPU in cores c_k (host). Tenant i's service is
stretched by

    s_i = max(fluid, 1 + κ L_i D_i)

where D_i is the co-tenants' demand (Σ_{j≠i} u_j, Σ_{j≠i} a_j, or Σ_{j≠i} c_j / cores) and
the fluid bound is what the executor cannot exceed: max(1, Σ_k a_k) under MPS,
max(1, Σ_k c_k / cores) on the host, 1 under time-slicing. L_i is how much tenant i feels
its co-tenants before the executor is full (``Model.lockstep``): 1 on a GPU; on the host,
w - 1 for a tenant computing in lockstep over w cores (the encoder's torch threads span
every core) and 0 for a one-thread vLLM CPU engine, which the scheduler moves to a free
core. The plain model has κ = 1 under time-slicing (a kernel waits for the co-tenants'
kernels: s_i = 1 + Σ_{j≠i} u_j) and κ = 0 under MPS and on the host (side by side until
full).

A tenant whose service takes s times longer behaves like the tenant alone at rate r·s on a
clock that runs s times slower (time rescaling): its latency figures are
f(S) = s · f_solo(r·s), and its SLO attainment is that of its solo requests at r·s against
bounds / s. Solo figures between rungs are interpolated on the log scale; above the ladder
they continue from the top two rungs, and the prediction says it extrapolated. Queueing near
saturation needs no extra term: f_solo(r·s) is the tenant's own measured queueing at the
higher rate. A tenant's capacity alone is the highest rate whose attainment reaches the
target (``capacity.json`` when a capacity search measured it); a set's co-located capacity
along a mix w is the largest scale λ whose predicted attainments all reach their targets at
r_i = λ·w_i, and W = Σ λ w_i / C_i.

**Calibration.** ``fit_kappa`` fits the one coefficient κ of a sharing mode to measured
co-located sets (least squares on the log ratios of predicted to measured latencies); a
report that uses a fitted κ says so, and its leave-one-out scoring refits κ without the set
it leaves out (``reports.scoring``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reports.profiles import TenantProfile

TIME_SLICE, MPS, HOST = "time-slice", "mps", "host"
DECODER_FIGURES = ("tpot_p50_s", "ttft_p99_s", "slo_attainment")
ENCODER_FIGURES = ("e2e_p99_s", "slo_attainment")
LATENCY_FIGURES = ("tpot_p50_s", "ttft_p99_s", "e2e_p99_s")
# a co-located search stops looking once a tenant would be read this far above its ladder
MAX_EXTRAPOLATION = 2.0
# in fitting κ, a prediction censored on one side only counts as this factor off
CENSORED_PENALTY = 10.0


def predicted_figures(kind: str) -> tuple[str, ...]:
    """The figures predicted for a tenant: TPOT p50, TTFT p99 (E2E p99 for the encoder), SLO
    attainment."""
    return ENCODER_FIGURES if kind == "encoder" else DECODER_FIGURES


@dataclass(frozen=True)
class Model:
    """Which executor is shared (``mode``), the host's cores, and the stretch coefficient."""

    mode: str  # time-slice | mps | host
    cores: float = 1.0
    kappa: float = 1.0
    fitted_on: int = 0  # measured sets kappa was fitted on (0: the plain model)

    @property
    def name(self) -> str:
        base = {TIME_SLICE: "time-slice GPU", MPS: "MPS", HOST: "host CPU"}[self.mode]
        if not self.fitted_on:
            return f"time rescaling, {base}"
        return f"time rescaling, {base}, κ = {self.kappa:.2f} fitted on {self.fitted_on} sets"

    def demand(self, p: TenantProfile, rate: float) -> float:
        """The tenant's demand on the shared executor at ``rate`` (a fraction, or cores)."""
        if self.mode == HOST:
            v = p.demand_at("proc_cpu_mean_pct", rate)
            return 0.0 if v is None else max(v, 0.0) / 100.0
        if self.mode == MPS:
            v = p.demand_at("gpm_sm_util_mean_pct", rate)
            if v is None:
                v = p.demand_at("gpu_util_mean_pct", rate)
            return 0.0 if v is None else min(max(v, 0.0) / 100.0, 1.0)
        v = p.demand_at("gpu_util_mean_pct", rate)
        return 0.0 if v is None else min(max(v, 0.0) / 100.0, 1.0)

    def co_demand(self, d: Mapping[str, float], tenant: str) -> float:
        """The co-tenants' demand, as a share of the executor (cores for the host)."""
        others = sum(v for t, v in d.items() if t != tenant)
        return others / max(self.cores, 1e-9) if self.mode == HOST else others

    def stretches(self, profiles: Mapping[str, TenantProfile],
                  rates: Mapping[str, float]) -> dict[str, float]:
        """s_i for every tenant of the set at ``rates``: the larger of the fluid bound (the
        executor cannot give more than it has: Σ demand / capacity, MPS and host) and
        1 + κ x the co-tenants' demand (time-slice: κ = 1; MPS and host: κ = 0 unless
        fitted); on the host the co-tenants' pull is felt by lockstep tenants only
        (``lockstep``)."""
        d = {t: self.demand(profiles[t], r) for t, r in rates.items()}
        total = sum(d.values())
        fluid = 1.0
        if self.mode == HOST:
            fluid = max(1.0, total / max(self.cores, 1e-9))
        elif self.mode == MPS:
            fluid = max(1.0, total)
        return {t: max(fluid, 1.0 + self.kappa * self.lockstep(profiles[t]) * self.co_demand(d, t))
                for t in rates}

    def lockstep(self, p: TenantProfile) -> float:
        """How much a tenant feels its co-tenants' demand before the executor is full. On a
        GPU, 1: every kernel waits its turn. On the host, w - 1 for a tenant whose compute
        runs in lockstep over w cores: the encoder's torch threads span every core, so a
        co-tenant on any one of them stalls its whole batch, while a vLLM CPU engine is one
        thread (one OpenMP thread, set by cotenant) that the scheduler moves to a free core."""
        if self.mode != HOST:
            return 1.0
        return max(self.cores - 1.0, 0.0) if p.kind == "encoder" else 0.0


def plain_kappa(mode: str) -> float:
    """κ of the plain model: a time-sliced GPU serves one kernel at a time (κ = 1); MPS and
    the host's cores serve the tenants side by side until they are full (κ = 0)."""
    return 1.0 if mode == TIME_SLICE else 0.0


def model_for(mode: str, cores: float | None) -> Model:
    """The plain model of a sharing mode."""
    return Model(mode=mode, cores=float(cores or 1.0), kappa=plain_kappa(mode))


@dataclass(frozen=True)
class TenantPrediction:
    tenant: str
    rate: float
    stretch: float
    equivalent_rate: float  # r·s: the solo rate whose figures are read
    extrapolated: bool  # r·s outside the ladder
    figures: dict[str, float | None] = field(default_factory=dict)


def predict_tenant(p: TenantProfile, rate: float, s: float,
                   attainment: bool = True) -> TenantPrediction:
    """f(S) = s · f_solo(r·s); attainment of the solo requests at r·s against bounds / s
    (left out when not ``attainment``)."""
    r = rate * s
    figs: dict[str, float | None] = {}
    for f in predicted_figures(p.kind):
        if f == "slo_attainment" and not attainment:
            continue
        if f == "slo_attainment":
            att = [rung.arm.attainment(p.slo, s) for rung in p.rungs]
            v = p.value_at(att, r, log_y=False, rising=False)
            figs[f] = None if v is None else min(1.0, max(0.0, v))
        else:
            v = p.value_at([rung.row.get(f) for rung in p.rungs], r)
            figs[f] = None if v is None else s * v
    return TenantPrediction(p.tenant, rate, s, r, not p.covers(r), figs)


def predict_set(profiles: Mapping[str, TenantProfile], rates: Mapping[str, float],
                model: Model, attainment: bool = True) -> dict[str, TenantPrediction]:
    """Each tenant's predicted figures when the set runs together at ``rates``."""
    missing = [t for t in rates if t not in profiles or not profiles[t].rungs]
    if missing:
        raise KeyError(f"no solo profile for {', '.join(missing)}")
    s = model.stretches(profiles, rates)
    return {t: predict_tenant(profiles[t], r, s[t], attainment) for t, r in rates.items()}


# ---- capacity -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Capacity:
    """A tenant's capacity alone (req/s) with its bracket; ``censored`` says when the ladder
    did not reach the knee ("at least" / "below")."""

    tenant: str
    rps: float | None
    lo: float | None
    hi: float | None
    source: str  # capacity.json | profile
    censored: str | None = None


def solo_capacity(p: TenantProfile, measured: Mapping[str, Any] | None = None) -> Capacity:
    """From ``capacity.json``'s entry when given, else the profile: the rate where the
    attainment curve (interpolated between rungs) crosses the target; the bracket is the
    last rung that met it and the first that did not."""
    if measured and measured.get("capacity_rps") is not None:
        br = measured.get("bracket") or [None, None]
        return Capacity(p.tenant, float(measured["capacity_rps"]), br[0], br[1], "capacity.json")
    rates = [r.rate for r in p.rungs]
    att = [r.row.get("slo_attainment") for r in p.rungs]
    ok = [a is not None and a >= p.slo.target for a in att]
    if not rates:
        return Capacity(p.tenant, None, None, None, "profile", "no solo rung")
    if not ok[0]:
        return Capacity(p.tenant, rates[0], None, rates[0], "profile",
                        f"below {rates[0]:.3g} req/s (the lowest rung missed the target)")
    k = next((i for i, good in enumerate(ok) if not good), None)
    if k is None:
        return Capacity(p.tenant, rates[-1], rates[-1], None, "profile",
                        f"at least {rates[-1]:.3g} req/s (every rung met the target)")
    a0, a1 = float(att[k - 1] or 0.0), float(att[k] or 0.0)
    x0, x1 = math.log(rates[k - 1]), math.log(rates[k])
    w = (a0 - p.slo.target) / (a0 - a1) if a0 > a1 else 0.0
    return Capacity(p.tenant, math.exp(x0 + w * (x1 - x0)), rates[k - 1], rates[k], "profile")


@dataclass(frozen=True)
class SetCapacity:
    tenants: tuple[str, ...]
    mix: dict[str, float]  # r_i = scale · mix_i
    scale: float | None
    rates: dict[str, float]
    W: float | None
    first_fail: str | None  # the tenant whose attainment falls below target first
    censored: str | None = None


def _passes(profiles: Mapping[str, TenantProfile], rates: Mapping[str, float],
            model: Model, margin: float = 0.0) -> tuple[bool, str | None, bool]:
    """(every tenant meets its target, the worst tenant, any read beyond the ladder limit)."""
    pred = predict_set(profiles, rates, model)
    worst, least, beyond = None, math.inf, False
    for t, tp in pred.items():
        att = tp.figures.get("slo_attainment")
        m = -1.0 if att is None else att - min(1.0, max(0.0, profiles[t].slo.target + margin))
        if m < least:
            worst, least = t, m
        top = profiles[t].rungs[-1].rate
        beyond |= tp.equivalent_rate > MAX_EXTRAPOLATION * top
    return least >= 0.0, worst, beyond


def set_capacity(profiles: Mapping[str, TenantProfile], mix: Mapping[str, float],
                 capacities: Mapping[str, Capacity], model: Model,
                 margin: float = 0.0) -> SetCapacity:
    """The largest scale λ at which every tenant's predicted attainment meets its target
    (raised by ``margin``: the bounds of an interval) when tenant i is offered λ·mix_i (a
    log grid, then bisection), and W there."""
    tenants = tuple(mix)
    grid = np.exp(np.linspace(math.log(1e-3), math.log(10.0), 61))
    last_ok: float | None = None
    fail: float | None = None
    who: str | None = None
    censored = None
    for lam in grid:
        good, worst, beyond = _passes(profiles, {t: lam * mix[t] for t in tenants}, model,
                                      margin)
        if not good:
            fail, who = float(lam), worst
            break
        last_ok = float(lam)
        if beyond:
            censored = "at least: the profiles end before the set's knee"
            break
    if fail is not None and last_ok is not None:
        lo, hi = last_ok, fail
        for _ in range(30):
            mid = math.sqrt(lo * hi)
            good, worst, _ = _passes(profiles, {t: mid * mix[t] for t in tenants}, model, margin)
            if good:
                lo = mid
            else:
                hi, who = mid, worst
            if hi / lo - 1 < 1e-4:
                break
        last_ok = lo
    if last_ok is None:
        return SetCapacity(tenants, dict(mix), 0.0, {t: 0.0 for t in tenants}, 0.0, who,
                           "no rate of the mix meets every target")
    rates = {t: last_ok * mix[t] for t in tenants}
    return SetCapacity(tenants, dict(mix), last_ok, rates, weighted_capacity(rates, capacities),
                       who, censored)


def weighted_capacity(rates: Mapping[str, float], capacities: Mapping[str, Capacity]) -> float | None:
    """W = Σ r_i / C_i (None when a capacity is unknown or zero)."""
    total = 0.0
    for t, r in rates.items():
        c = capacities.get(t)
        if c is None or not c.rps:
            return None
        total += r / c.rps
    return total


def default_mix(tenants: Sequence[str], capacities: Mapping[str, Capacity]) -> dict[str, float]:
    """Each tenant the same fraction of its solo capacity: w_i = C_i."""
    return {t: float(capacities[t].rps or 0.0) for t in tenants}


def fit_kappa(profiles: Mapping[str, TenantProfile], sets: Sequence[Any], model: Model,
              grid: Sequence[float] | None = None) -> Model:
    """The κ (of ``grid``, default 0 to 4 by 0.05) that minimises the squared log ratio of
    predicted to measured latency figures over ``sets`` (``reports.colocated.MeasuredSet``);
    a prediction that is infinite (censored) where the measurement is finite, or the other
    way round, counts as a factor of ``CENSORED_PENALTY`` off, so a κ cannot hide its errors
    behind censoring. The plain model when no set has a finite figure to fit on."""
    ks = np.linspace(0.0, 4.0, 81) if grid is None else np.asarray(grid, dtype=float)
    usable = [s for s in sets if all(t in profiles and profiles[t].rungs for t in s.tenants)]
    best: tuple[float, float] | None = None
    for k in ks:
        m = Model(model.mode, model.cores, float(k))
        sq, n = 0.0, 0
        for s in usable:
            for t, tp in predict_set(profiles, s.rates, m, attainment=False).items():
                for f in LATENCY_FIGURES:
                    pv, mv = tp.figures.get(f), s.figures[t].get(f)
                    if not pv or not mv or pv <= 0 or mv <= 0:
                        continue
                    if math.isfinite(pv) and math.isfinite(mv):
                        sq += math.log(pv / mv) ** 2
                    elif math.isfinite(pv) != math.isfinite(mv):
                        sq += math.log(CENSORED_PENALTY) ** 2
                    else:
                        continue  # both censored: they agree
                    n += 1
        if n and (best is None or sq / n < best[1] - 1e-12):
            best = (float(k), sq / n)
    if best is None:
        return model_for(model.mode, model.cores)
    return Model(model.mode, model.cores, best[0], len(usable))
