"""A campaign: the experiments a spec asks for, in an order that restarts servers as little as
possible, and the loop that runs them, resumably, into a run directory.

Order: experiments are grouped by resident set (a group starts its servers once). Inside a
group, repetitions interleave (A B A B, not A A B B) and the order inside each round is
shuffled with the campaign's seed, so slow drift (clocks, caches, warm-up) spreads over all
sets instead of landing on one.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from orchestrator.spec import CampaignSpec, expand_sets
from rundir.ids import ExperimentId


@dataclass(frozen=True)
class Experiment:
    id: str
    resident: tuple[str, ...]
    active: tuple[str, ...]
    repetition: int
    rate_scale: float
    # Trace seed: depends on the repetition and rate only, so in repetition r a tenant gets the
    # same arrivals alone and co-located (a paired comparison); see tenant_seed().
    seed: int
    prompt_seed: int  # differs for every experiment: no prompt is ever reused across experiments

    def tenant_seed(self, tenant: str) -> int:
        return _seed(self.seed, tenant)

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment_id": self.id,
            "resident": list(self.resident),
            "active": list(self.active),
            "repetition": self.repetition,
            "rate_scale": self.rate_scale,
            "seed": self.seed,
            "prompt_seed": self.prompt_seed,
        }


@dataclass
class ResidentGroup:
    resident: tuple[str, ...]
    experiments: list[Experiment] = field(default_factory=list)


@dataclass
class CampaignPlan:
    spec: CampaignSpec
    groups: list[ResidentGroup]

    @property
    def experiments(self) -> list[Experiment]:
        return [e for g in self.groups for e in g.experiments]

    def expected_seconds(self, start_s: float = 45.0) -> float:
        """Rough wall time: servers started per group, plus each experiment's windows."""
        x = self.spec.experiment
        per_exp = x.warmup_s + x.duration_s + min(x.drain_s, 5.0) + 1.0
        starts = sum(len(g.resident) for g in self.groups) * start_s
        return starts + per_exp * len(self.experiments)


def experiment_id(spec: CampaignSpec, resident: tuple[str, ...], active: tuple[str, ...],
                  rate_scale: float, rep: int) -> str:
    """The id of one experiment (``rundir.ids``: built and parsed there)."""
    return ExperimentId.of(active, resident, spec.tenant_names, rate_scale, rep).format()


def _seed(*parts: object) -> int:
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:4], "big")


def plan_campaign(spec: CampaignSpec) -> CampaignPlan:
    x = spec.experiment
    groups: dict[tuple[str, ...], ResidentGroup] = {}
    rng = random.Random(x.seed)
    for resident, _active in expand_sets(spec):
        groups.setdefault(resident, ResidentGroup(resident))
    for resident, group in groups.items():
        cells = [
            (active, scale)
            for (res, active) in expand_sets(spec)
            if res == resident
            for scale in x.rate_scales
        ]
        for rep in range(x.repetitions):
            round_ = list(cells)
            rng.shuffle(round_)
            for active, scale in round_:
                eid = experiment_id(spec, resident, active, scale, rep)
                group.experiments.append(
                    Experiment(
                        id=eid,
                        resident=resident,
                        active=active,
                        repetition=rep,
                        rate_scale=scale,
                        seed=_seed(x.seed, "trace", scale, rep),
                        prompt_seed=_seed(x.seed, "prompt", eid),
                    )
                )
    return CampaignPlan(spec, list(groups.values()))
