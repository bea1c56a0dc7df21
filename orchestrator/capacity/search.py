"""The capacity search itself, with no server in sight: the bracket on a rate, how a probe's
attempts decide, the mixes a set is searched along, and the records ``capacity.json`` holds.

A search runs on one scalar, the **scale**: alone, the multiplier of the tenant's workload
rate; for a set, the scale of its mix (each tenant's req/s at scale 1, normalised so that
sum(r_i / C_i) = 1: scale 1 lies on the time-division line, and the weighted capacity W of
the set is its scale). It brackets the capacity by geometric steps from the start (up
while probes pass, down while they fail), then bisects on the log scale until the
bracket's hi / lo - 1 is at most the tolerance. The capacity is the bracket's low end: the
highest scale measured to pass. Below ``lo_limit`` a failing search ends at capacity 0;
above ``hi_limit`` a passing one ends as a bound ("at least").

A probe passes when the Clopper-Pearson interval of its attainment (requests in the window
that were ok and met every bound of the SLO, over all of them) lies at or above the target,
fails when it lies below, and is repeated while it straddles the target (its attempts
pooled), up to ``max_attempts``; then its point estimate decides. A set's probe passes only
when every tenant passes. A probe stopped early (its misses already made the target
unreachable) fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy.stats import binomtest

PASS, FAIL, REPEAT, FAILED = "pass", "fail", "repeat", "failed"
BY_INTERVAL, BY_POINT, BY_EARLY = "interval", "point", "early"


@dataclass
class Bracket:
    """The search on one scale: ``lo`` the highest scale that passed, ``hi`` the lowest
    that failed (None: not found yet)."""

    start: float
    step: float
    tolerance: float
    lo_limit: float
    hi_limit: float
    max_probes: int
    lo: float | None = None
    hi: float | None = None
    probes: int = 0
    scales: list[float] = field(default_factory=list)

    def next(self) -> float | None:
        """The next scale to probe; None when the search is over (``outcome`` says how)."""
        if self.probes >= self.max_probes:
            return None
        lo, hi = self.lo, self.hi
        if lo is None and hi is None:
            return self.start
        if hi is None:
            assert lo is not None
            return None if lo >= self.hi_limit else min(lo * self.step, self.hi_limit)
        if lo is None:
            return None if hi <= self.lo_limit else max(hi / self.step, self.lo_limit)
        if hi / lo - 1 <= self.tolerance:
            return None
        return _round(math.sqrt(lo * hi))

    def record(self, scale: float, passed: bool) -> None:
        self.probes += 1
        self.scales.append(scale)
        if passed:
            self.lo = scale if self.lo is None else max(self.lo, scale)
        else:
            self.hi = scale if self.hi is None else min(self.hi, scale)

    def outcome(self) -> tuple[float, tuple[float, float | None], str | None, str | None]:
        """(capacity scale, bracket (lo, hi), censored, reason): censored is "at least"
        (every probe passed, up to the limit or the probe budget), "zero" (none passed, down
        to the limit) or "open" (the probe budget ended the search before the tolerance)."""
        lo, hi = self.lo, self.hi
        if lo is None:
            low = hi if hi is not None else self.start
            return 0.0, (0.0, hi), "zero", (
                f"the SLO was missed at every scale probed, down to {low:.4g}")
        if hi is None:
            why = ("the rate limit" if lo >= self.hi_limit
                   else f"the probe budget ({self.max_probes})")
            return lo, (lo, None), "at least", f"every probe passed, up to {lo:.4g} ({why})"
        if hi / lo - 1 > self.tolerance:
            return lo, (lo, hi), "open", (
                f"the probe budget ({self.max_probes}) ended the search with the bracket "
                f"{hi / lo - 1:.1%} wide (tolerance {self.tolerance:.0%})")
        return lo, (lo, hi), None, None


def _round(x: float) -> float:
    """Six significant digits: the experiment id writes the scale with ``%g``, and a resumed
    search must meet the same ids."""
    return float(f"{x:.6g}")


# ---- deciding a probe ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TenantCount:
    """One tenant's figures in one completed attempt."""

    requests: int
    met: int
    limits: tuple[str, ...] = ()


@dataclass(frozen=True)
class Attempt:
    """One attempt of a probe: a completed experiment's counts per tenant, or a failed one."""

    experiment_id: str
    status: str  # completed | failed | interrupted
    counts: Mapping[str, TenantCount]
    early_stop: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class TenantVerdict:
    requests: int
    met: int
    attainment: float | None
    ci: tuple[float, float]
    decision: str  # pass | fail | repeat
    decided_by: str


def clopper_pearson(met: int, n: int, level: float) -> tuple[float, float]:
    """The exact binomial interval of met / n (scipy); (0, 1) without a request."""
    if n <= 0:
        return 0.0, 1.0
    ci = binomtest(met, n).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def judge_tenant(requests: int, met: int, target: float, level: float, last: bool,
                 early: bool = False) -> TenantVerdict:
    """One tenant's verdict on pooled counts; ``last``: no attempt is left, so a straddling
    interval is decided by its point estimate."""
    lo, hi = clopper_pearson(met, requests, level)
    att = met / requests if requests else None
    if early:
        return TenantVerdict(requests, met, att, (lo, hi), FAIL, BY_EARLY)
    if requests and lo >= target:
        return TenantVerdict(requests, met, att, (lo, hi), PASS, BY_INTERVAL)
    if requests and hi < target:
        return TenantVerdict(requests, met, att, (lo, hi), FAIL, BY_INTERVAL)
    if not last:
        return TenantVerdict(requests, met, att, (lo, hi), REPEAT, "")
    passed = att is not None and att >= target
    return TenantVerdict(requests, met, att, (lo, hi), PASS if passed else FAIL, BY_POINT)


def stopped_on(attempts: Sequence[Attempt], tenants: Sequence[str]) -> set[str]:
    """The tenants of ``tenants`` whose certain misses stopped one of ``attempts`` early
    (``experiment.hopeless_probe`` names the tenant first: ``"<tenant>: ..."``)."""
    return {t for a in attempts if a.early_stop for t in tenants
            if a.early_stop.startswith(f"{t}:")}


def attempt_fails(a: Attempt, tenants: Sequence[str], targets: Mapping[str, float],
                  level: float) -> bool:
    """Whether one completed attempt fails on its own: ``judge_tenant`` on its counts alone
    fails one tenant (it stopped early on it, or its interval lies wholly below the target)."""
    early = stopped_on([a], tenants)
    counts = {t: a.counts.get(t, TenantCount(0, 0)) for t in tenants}
    return any(judge_tenant(c.requests, c.met, targets[t], level, last=False,
                            early=t in early).decision == FAIL for t, c in counts.items())


def judge_probe(attempts: Sequence[Attempt], tenants: Sequence[str], targets: Mapping[str, float],
                level: float, max_attempts: int, *, confirm: bool = False
                ) -> tuple[str, dict[str, TenantVerdict]]:
    """The probe's decision over its completed attempts (pooled): fail as soon as one tenant
    fails (by its interval, or an attempt stopped early on it), pass when every tenant
    passes, else repeat while attempts are left.

    With ``confirm`` a failure must be seen twice: the binomial interval of one window
    counts its requests as independent, but windows differ by more than that (a transient
    on the host fails one window and not the next; the experiment, not the request, is the
    unit of replication). An attempt that fails on its own (``attempt_fails``) is repeated
    while attempts are left, and a failing and a non-failing attempt get a third; two
    failing attempts fail the probe; one failing among three (or among the attempts there
    were room for) leaves the probe to the attempts that ran their whole window (an attempt
    stopped early is a truncated window whose counts are biased), judged as without
    ``confirm``."""
    done = [a for a in attempts if a.status == "completed"]
    if confirm and done:
        fails = sum(attempt_fails(a, tenants, targets, level) for a in done)
        if fails >= 2 or fails == len(done) == max_attempts:
            return FAIL, judge_probe(done, tenants, targets, level, max_attempts)[1]
        if fails == 1 and len(done) < min(3, max_attempts):
            # one failing window: run another; one failing and one not: a third decides
            return REPEAT, judge_probe(done, tenants, targets, level, max_attempts)[1]
        whole = [a for a in done if not a.early_stop]
        return judge_probe(whole, tenants, targets, level, max_attempts - (len(done) - len(whole)))
    last = len(done) >= max_attempts
    early = stopped_on(done, tenants)
    out: dict[str, TenantVerdict] = {}
    for t in tenants:
        n = sum(a.counts[t].requests for a in done if t in a.counts)
        m = sum(a.counts[t].met for a in done if t in a.counts)
        out[t] = judge_tenant(n, m, targets[t], level, last, early=t in early)
    if not done:
        return REPEAT, out
    decisions = {v.decision for v in out.values()}
    if FAIL in decisions:
        return FAIL, out
    if decisions == {PASS}:
        return PASS, out
    return REPEAT, out


def failed_order(verdicts: Mapping[str, TenantVerdict]) -> list[str]:
    """The tenants that did not pass a set's probe, the one that failed first first: a tenant
    whose misses stopped an attempt early, then by attainment. (The stop drops every tenant's
    unsent requests, so a co-tenant's attainment in that attempt may be lower than its own.)"""
    return sorted((t for t, v in verdicts.items() if v.decision != PASS),
                  key=lambda t: (verdicts[t].decided_by != BY_EARLY, verdicts[t].attainment or 0.0))


# ---- mixes ----------------------------------------------------------------------------------------

def ray_fractions(n: int, k: int, rays: int) -> list[float]:
    """Shares of the time-division line for mix ``k`` of ``rays``: a pair's rays evenly
    spread in angle between the axes (one ray: the equal shares); a larger set: equal."""
    if n != 2 or rays == 1:
        return [1.0 / n] * n
    theta = (k + 1) / (rays + 1) * math.pi / 2
    c, s = math.cos(theta), math.sin(theta)
    return [c / (c + s), s / (c + s)]


def mix_rates(tenants: Sequence[str], capacities: Mapping[str, float], *,
              fractions: Sequence[float] | None = None,
              relative: Mapping[str, float] | None = None) -> dict[str, float]:
    """Each tenant's req/s at scale 1, normalised so that sum(r_i / C_i) = 1: from shares of
    the time-division line (``fractions``: r_i = f_i C_i) or relative rates (``relative``)."""
    if relative is not None:
        raw = {t: float(relative[t]) for t in tenants}
        norm = sum(raw[t] / capacities[t] for t in tenants)
        return {t: _round(raw[t] / norm) for t in tenants}
    assert fractions is not None
    return {t: _round(f * capacities[t]) for t, f in zip(tenants, fractions, strict=True)}


def weighted_capacity(rates: Mapping[str, float], capacities: Mapping[str, float]) -> float:
    """W = sum(r_i / C_i)."""
    return sum(r / capacities[t] for t, r in rates.items())


def w_bracket(mix: Mapping[str, float], scale_bracket: tuple[float, float | None],
              solo: Mapping[str, tuple[float, float | None]]) -> tuple[float, float | None]:
    """W's bracket from the scale's bracket and the solo capacities' brackets: low with the
    lowest scale over the highest capacities, high with the highest over the lowest. A
    capacity that is only a lower bound (no high end) may be any larger, so its tenant adds
    nothing to the low end."""
    lo, hi = scale_bracket
    w_lo = lo * sum(r / c_hi for t, r in mix.items() if (c_hi := solo[t][1]))
    w_hi = None if hi is None else hi * sum(r / solo[t][0] for t, r in mix.items())
    return w_lo, w_hi


def knee_limits(attempts: Sequence[Attempt], tenant: str) -> list[str]:
    """What binds for ``tenant`` in the knee probe's attempts (any attempt)."""
    seen: list[str] = []
    for a in attempts:
        c = a.counts.get(tenant)
        for lim in c.limits if c else ():
            if lim not in seen:
                seen.append(lim)
    return seen


def jsonable(x: Any) -> Any:
    """Floats rounded for capacity.json (it is read by people too)."""
    if isinstance(x, float):
        return float(f"{x:.6g}") if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    return x
