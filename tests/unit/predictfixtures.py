"""Synthetic host (CPU) run directories whose co-located behaviour is known in closed form.

Each tenant follows power laws in its offered rate r: a latency figure is
``base x (r / rate)^alpha`` times a per-request factor ``u_k = exp(sigma z_k)`` with the z_k
evenly spaced on [-1, 1] (so quantiles and SLO attainment are known exactly: attainment is
linear in log r), and its engine uses ``cores_per_rps x r`` cores. A co-located set is
written the way the time-rescaling model says it behaves, with a stretch computed here,
independently of reports.prediction:

    s_i = max(fluid, 1 + kappa x L_i x sum_{j != i} c_j / cores),  fluid = max(1, sum_k c_k / cores)

with L_i = cores - 1 for the encoder (lockstep over every core) and 0 for a vLLM engine

and figures s_i x f_solo(r_i s_i). Power laws are straight lines on the log scale, so the
predictor's log-log interpolation between rungs is exact and its errors must vanish.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tests.unit.runfixtures import (
    RunSpec,
    Tenant,
    manifest,
    request_row,
    spec_dict,
    write_campaign,
    write_experiment,
)

CORES = 2


@dataclass(frozen=True)
class Law:
    name: str
    kind: str = "vllm"
    rate: float = 4.0  # offered req/s at rate scale 1
    ttft0: float = 0.05
    tpot0: float = 0.01
    e2e0: float = 0.05  # the encoder's
    alpha: float = 0.5
    cores_per_rps: float = 0.1
    sigma: float = 0.5
    out_tokens: int = 9

    def cores(self, r: float) -> float:
        return self.cores_per_rps * r

    def scale(self, r: float, s: float = 1.0) -> float:
        """The latency multiplier of every request at rate r under stretch s."""
        return s * ((r * s) / self.rate) ** self.alpha


@dataclass
class Plan:
    laws: Sequence[Law]
    ladder: Sequence[float] = (0.5, 1.0, 2.0)  # rate scales of the solo experiments
    sets: Sequence[tuple[tuple[str, ...], float]] = ()  # (active set, rate scale)
    kappa: float = 0.0
    repetitions: int = 2
    rep_noise: float = 0.0  # per-repetition latency factor: 1 + rep_noise x (+1, -1, ...)
    requests: int = 201
    slo: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    name: str = "predict-fixture"


def stretches(laws: Mapping[str, Law], rates: Mapping[str, float], kappa: float) -> dict[str, float]:
    c = {t: laws[t].cores(r) for t, r in rates.items()}
    fluid = max(1.0, sum(c.values()) / CORES)
    lock = {t: CORES - 1.0 if laws[t].kind == "encoder" else 0.0 for t in rates}
    return {t: max(fluid, 1.0 + kappa * lock[t] * (sum(c.values()) - c[t]) / CORES)
            for t in rates}


def _z(n: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, n)


def _rows(law: Law, r: float, s: float, n: int, level: float) -> list[dict[str, Any]]:
    u = np.exp(law.sigma * _z(n)) * law.scale(r, s) * level
    out = []
    for k, f in enumerate(u):
        t0 = 2.0 + 10.0 * k / n  # inside the window [2, 12)
        if law.kind == "encoder":
            out.append(request_row(law.name, k, scheduled_s=t0, e2e_s=law.e2e0 * f,
                                   kind="embedding", batch_size=1))
        else:
            ttft, tpot = law.ttft0 * f, law.tpot0 * f
            out.append(request_row(law.name, k, scheduled_s=t0, ttft_s=ttft,
                                   e2e_s=ttft + tpot * (law.out_tokens - 1),
                                   output_tokens=law.out_tokens))
    return out


def _telemetry(laws: Mapping[str, Law], rates: Mapping[str, float],
               s: Mapping[str, float]) -> list[dict[str, Any]]:
    busy = sum(laws[t].cores(r) for t, r in rates.items())
    rows: list[dict[str, Any]] = []
    for ts in np.arange(2.0, 12.0, 0.5):
        rows.append({"t_s": float(ts), "scope": "device", "source": "host",
                     "host_cpu_pct": min(100.0, 100.0 * busy / CORES)})
        for t in laws:
            own = laws[t].cores(rates[t]) * s.get(t, 1.0) if t in rates else 0.0
            rows.append({"t_s": float(ts), "scope": t, "source": "host",
                         "proc_cpu_pct": 100.0 * own, "proc_rss_bytes": 2**30})
    return rows


def write_predict_run(root: Path, plan: Plan) -> Path:
    """The run directory: every tenant alone over ``plan.ladder``, then ``plan.sets``."""
    laws = {law.name: law for law in plan.laws}
    rs = RunSpec(name=plan.name, tenants=[Tenant(x.name, x.kind, "tiny-llama" if x.kind == "vllm"
                                                else "all-minilm-l6-v2", rate=x.rate)
                                         for x in plan.laws],
                 strategy=("isolated",), repetitions=plan.repetitions, gpu=False,
                 slo={k: dict(v) for k, v in plan.slo.items()}, failed={})
    run_dir = root / plan.name
    todo = [((t,), sc) for sc in plan.ladder for t in laws] + [(tuple(a), sc) for a, sc in plan.sets]
    ids, exps = [], []
    for active, sc in todo:
        for rep in range(plan.repetitions):
            eid = f"{'+'.join(active)}__all__x{sc:g}__r{rep}"
            ids.append(eid)
            exps.append((eid, active, sc, rep))
    write_campaign(run_dir, spec_dict(rs), ids)
    camp = json.loads((run_dir / "campaign.json").read_text())
    camp["host"] = {"hostname": "fixture-host", "cpus": CORES}
    (run_dir / "campaign.json").write_text(json.dumps(camp))
    info = {t: {"kind": x.kind, "model": "m", "max_num_seqs": 64 if x.kind == "vllm" else None}
            for t, x in laws.items()}
    for eid, active, sc, rep in exps:
        rates = {t: laws[t].rate * sc for t in active}
        s = stretches(laws, rates, plan.kappa) if len(active) > 1 else {t: 1.0 for t in active}
        level = 1.0 + plan.rep_noise * (1 if rep % 2 == 0 else -1)
        reqs = [row for t in active for row in _rows(laws[t], rates[t], s[t], plan.requests, level)]
        m = manifest(eid, plan.name, resident=list(laws), active=list(active), tenants=info,
                     repetition=rep, rate_scale=sc,
                     slo={t: dict(plan.slo[t]) for t in active if t in plan.slo},
                     workloads={t: {"kind": "synthetic", "offered_rate": rates[t]} for t in active})
        write_experiment(run_dir, m, reqs, _telemetry(laws, rates, s))
    return run_dir


def solo_latency(law: Law, base: float, r: float, s: float = 1.0, q: float = 0.5) -> float:
    """The closed form: quantile q of base x u at rate r under stretch s."""
    z = float(np.quantile(_z(201), q))
    return base * math.exp(law.sigma * z) * law.scale(r, s)


def attainment(law: Law, bound: float, base: float, r: float, s: float = 1.0) -> float:
    """Share of requests with base x u x scale <= bound (uniform z on [-1, 1])."""
    z = (math.log(bound / (base * law.scale(r, s)))) / law.sigma
    return min(1.0, max(0.0, (z + 1.0) / 2.0))
