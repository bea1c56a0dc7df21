"""A campaign: the experiments a spec asks for, in an order that restarts servers as little as
possible, and the loop that runs them, resumably, into a run directory.

Order: experiments are grouped by resident set (a group starts its servers once). Inside a
group, the experiments come in **blocks**: a block is one repetition, and holds every cell of
the group once (its co-located arms and the alone arms of their tenants, with the same
arrivals), in an order shuffled with the campaign's **order seed**, so slow drift (clocks,
caches, warm-up) spreads over all sets instead of landing on one. Blocks run one after the
other (A B A B, not A A B B). ``experiment.restarts: N`` cuts a group's blocks into N
contiguous chunks and restarts the resident set between chunks (``Experiment.chunk``), so
that N server lifetimes enter the interval.

The order seed is fresh per campaign unless the spec or ``cotenant run --seed`` gives one;
campaign.json records it and ``--resume`` reuses it, so a resumed plan is the same plan. The
trace seeds derive from it too: in repetition r a tenant gets the same arrivals alone and
co-located (paired), and other arrivals in another campaign.
"""

from __future__ import annotations

import hashlib
import random
import secrets
from dataclasses import dataclass, field
from typing import Any

from orchestrator.spec import CampaignSpec, expand_sets
from rundir.ids import ExperimentId


@dataclass(frozen=True)
class Experiment:
    id: str
    resident: tuple[str, ...]
    active: tuple[str, ...]
    repetition: int  # the block
    rate_scale: float
    # Trace seed: depends on the order seed, the repetition and the rate only, so in
    # repetition r a tenant gets the same arrivals alone and co-located (a paired
    # comparison); see tenant_seed().
    seed: int
    prompt_seed: int  # differs for every experiment: no prompt is ever reused across experiments
    order_seed: int | None = None
    # the planned server lifetime: the group restarts its servers when this changes
    chunk: int = 0
    # a capacity probe (orchestrator.capacity): each active tenant's offered req/s, which
    # replaces rate_scale x its workload's rate, and the manifest's ``probe`` record
    rates: tuple[tuple[str, float], ...] | None = None
    probe: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    window_s: float | None = None  # a probe's measurement window, where it is not the spec's

    def duration_s(self, spec: CampaignSpec) -> float:
        """The measurement window: the probe's own, else ``experiment.duration_s``."""
        return spec.experiment.duration_s if self.window_s is None else self.window_s

    def tenant_seed(self, tenant: str) -> int:
        return derived_seed(self.seed, tenant)

    def rate_of(self, tenant: str, base_rps: float) -> float:
        """``tenant``'s offered req/s: the probe's rate, else ``rate_scale x base_rps``."""
        if self.rates is not None:
            return dict(self.rates)[tenant]
        return self.rate_scale * base_rps

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment_id": self.id,
            "resident": list(self.resident),
            "active": list(self.active),
            "repetition": self.repetition,
            "block": self.repetition,
            "rate_scale": self.rate_scale,
            "seed": self.seed,
            "prompt_seed": self.prompt_seed,
            "order_seed": self.order_seed,
            **({"probe": self.probe} if self.probe is not None else {}),
        }


@dataclass
class ResidentGroup:
    resident: tuple[str, ...]
    experiments: list[Experiment] = field(default_factory=list)


@dataclass
class CampaignPlan:
    spec: CampaignSpec
    groups: list[ResidentGroup]
    order_seed: int = 0
    restarts: int = 1
    blocks: int = 1  # repetitions planned (0 .. blocks - 1)

    @property
    def experiments(self) -> list[Experiment]:
        return [e for g in self.groups for e in g.experiments]

    def expected_seconds(self, start_s: float = 45.0, warmup_s: float = 10.0) -> float:
        """Rough wall time: servers started (and warmed up) per group and lifetime, plus each
        experiment's windows."""
        x = self.spec.experiment
        per_exp = x.warmup_s + x.duration_s + min(x.drain_s, 5.0) + 1.5
        lifetimes = min(self.restarts, self.blocks)
        per_start = start_s + (warmup_s if x.warmup.enabled else 0.0)
        starts = sum(len(g.resident) for g in self.groups) * per_start * lifetimes
        return starts + per_exp * len(self.experiments)

    def extend(self, more: int) -> list[Experiment]:
        """Add ``more`` blocks (the next repetition indices, the same plan rules, one new chunk
        of server lifetimes after the planned ones); returns the new experiments."""
        first = self.blocks
        new_groups = _plan_groups(self.spec, self.order_seed, range(first, first + more),
                                  chunks=1, chunk0=_next_chunk(self))
        added: list[Experiment] = []
        by_resident = {g.resident: g for g in self.groups}
        for ng in new_groups:
            by_resident[ng.resident].experiments.extend(ng.experiments)
            added += ng.experiments
        self.blocks += more
        return added


def experiment_id(spec: CampaignSpec, resident: tuple[str, ...], active: tuple[str, ...],
                  rate_scale: float, rep: int) -> str:
    """The id of one experiment (``rundir.ids``: built and parsed there)."""
    return ExperimentId.of(active, resident, spec.tenant_names, rate_scale, rep).format()


def derived_seed(*parts: object) -> int:
    """A 32-bit seed derived from ``parts`` (stable across runs and machines)."""
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:4], "big")


def fresh_order_seed() -> int:
    """A new order seed (31 bits: readable, and an int everywhere)."""
    return secrets.randbits(31)


def resolve_order_seed(spec: CampaignSpec, override: int | None = None,
                       recorded: int | None = None) -> int:
    """The campaign's order seed: the one campaign.json recorded (a resume), else ``--seed``,
    else the spec's, else a fresh one."""
    for s in (recorded, override, spec.experiment.seed):
        if s is not None:
            return int(s)
    return fresh_order_seed()


def resolve_restarts(spec: CampaignSpec, gpu: bool) -> int:
    """Server lifetimes: the spec's ``restarts``, else 2 on a GPU and 1 on the CPU; never more
    than the planned blocks."""
    x = spec.experiment
    n = x.restarts if x.restarts is not None else (2 if gpu else 1)
    return max(1, min(n, x.repetitions))


def chunk_of(block: int, blocks: int, chunks: int) -> int:
    """The chunk (planned server lifetime) of ``block`` among ``blocks`` cut into ``chunks``
    contiguous chunks of sizes that differ by at most one."""
    return block * chunks // blocks


def plan_campaign(spec: CampaignSpec, order_seed: int | None = None, *, restarts: int = 1,
                  blocks: int | None = None) -> CampaignPlan:
    """The plan: resident groups, each a sequence of blocks. ``order_seed`` None: the spec's
    seed, else a fresh one. ``blocks``: how many repetitions to plan (default: the spec's;
    more on a resume of a campaign that added blocks for precision: the planned ones split
    into ``restarts`` chunks, those beyond in one chunk after them)."""
    x = spec.experiment
    seed = resolve_order_seed(spec, order_seed)
    planned = x.repetitions
    restarts = max(1, min(restarts, planned))
    groups = _plan_groups(spec, seed, range(planned), chunks=restarts)
    plan = CampaignPlan(spec, groups, seed, restarts, planned)
    if blocks is not None and blocks > planned:
        plan.extend(blocks - planned)
    return plan


def _next_chunk(plan: CampaignPlan) -> int:
    return max((e.chunk for e in plan.experiments), default=-1) + 1


def _plan_groups(spec: CampaignSpec, order_seed: int, reps: range, *, chunks: int,
                 chunk0: int = 0) -> list[ResidentGroup]:
    """Blocks ``reps`` of every resident group; each block's order is drawn from its own
    generator (order seed, group, block), so that added blocks follow the same rules."""
    groups: dict[tuple[str, ...], ResidentGroup] = {}
    sets = expand_sets(spec)
    for resident, _active in sets:
        groups.setdefault(resident, ResidentGroup(resident))
    for resident, group in groups.items():
        cells = [(active, scale) for (res, active) in sets if res == resident
                 for scale in spec.experiment.rate_scales]
        for k, rep in enumerate(reps):
            block = list(cells)
            random.Random(derived_seed(order_seed, "order", "+".join(resident), rep)).shuffle(block)
            chunk = chunk0 + chunk_of(k, len(reps), chunks)
            for active, scale in block:
                eid = experiment_id(spec, resident, active, scale, rep)
                group.experiments.append(Experiment(
                    id=eid, resident=resident, active=active, repetition=rep, rate_scale=scale,
                    seed=derived_seed(order_seed, "trace", scale, rep),
                    prompt_seed=derived_seed(order_seed, "prompt", eid),
                    order_seed=order_seed, chunk=chunk,
                ))
    return list(groups.values())


def planned_blocks(experiment_ids: list[str]) -> int:
    """How many blocks a recorded campaign planned: one more than its largest repetition
    (capacity probes, whose repetition is an attempt, aside)."""
    ids = [ExperimentId.parse(e) for e in experiment_ids]
    reps = [x.repetition for x in ids if x.repetition is not None and not x.probe]
    return max(reps, default=-1) + 1


# ---- the batch limit, before anything runs ------------------------------------------------------


@dataclass(frozen=True)
class BatchLimitNote:
    """Per decoder tenant and rate scale: the latency budget the batch limit leaves."""

    tenant: str
    rate_scale: float
    rate_rps: float
    max_num_seqs: int
    budget_s: float  # mean E2E above which more than max_num_seqs are in flight
    slo_e2e_s: float | None  # the SLO's implied E2E bound, where it names one
    slo_basis: str  # how slo_e2e_s was made

    @property
    def warn(self) -> bool:
        return self.slo_e2e_s is not None and self.budget_s < self.slo_e2e_s

    def text(self) -> str:
        head = (f"{self.tenant} x{self.rate_scale:g}: {self.rate_rps:.3g} req/s; max_num_seqs "
                f"{self.max_num_seqs} holds it while mean E2E stays under {self.budget_s:.3g} s "
                "(Little's law: in flight = rate x time in service)")
        if self.slo_e2e_s is None:
            return head + "; the SLO names no E2E bound to compare"
        cmp = "below" if self.warn else "at or above"
        tail = ("the batch limit binds before the SLO does: this rate measures the limit, "
                "not the GPU") if self.warn else "the SLO binds first"
        return (f"{head}; the SLO allows E2E up to {self.slo_e2e_s:.3g} s ({self.slo_basis}): "
                f"the budget is {cmp} it, {tail}")


def slo_e2e_bound(slo: Any, mean_out: float) -> tuple[float | None, str]:
    """The E2E bound an SLO implies: its e2e_ms, else ttft + (out - 1) x tpot where it names
    both (``mean_out``: the mean output length); (None, "") where it implies none."""
    if slo is None:
        return None, ""
    if slo.e2e_ms is not None:
        return slo.e2e_ms / 1e3, f"e2e {slo.e2e_ms:g} ms"
    if slo.ttft_ms is not None and slo.tpot_ms is not None:
        out = max(mean_out, 1.0)
        bound = (slo.ttft_ms + (out - 1) * slo.tpot_ms) / 1e3
        return bound, f"ttft {slo.ttft_ms:g} ms + {out - 1:.3g} x tpot {slo.tpot_ms:g} ms"
    return None, ""


def batch_limit_notes(spec: CampaignSpec, base: Any) -> list[BatchLimitNote]:
    """For each decoder tenant with a workload and each rate scale: the mean E2E at which the
    offered rate needs more requests in flight than ``max_num_seqs`` holds, beside the SLO's
    implied E2E bound (``cotenant plan`` warns where the budget is below it)."""
    from workloads.build import offered_rate
    from workloads.shapes import mean_output_tokens

    notes = []
    for t in spec.tenants:
        w = spec.workloads.get(t.name)
        if t.kind != "vllm" or w is None:
            continue
        bound, basis = slo_e2e_bound(spec.slo.get(t.name), mean_output_tokens(w, base, t.name))
        for scale in spec.experiment.rate_scales:
            rate = offered_rate(w, scale, base_dir=base)
            if rate <= 0:
                continue
            notes.append(BatchLimitNote(t.name, scale, rate, t.max_num_seqs,
                                        t.max_num_seqs / rate, bound, basis))
    return notes
