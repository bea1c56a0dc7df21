"""The capacity search without servers: the bracket, the probe decisions, the mixes, W."""

from __future__ import annotations

import math

import pytest
from scipy.stats import beta

from orchestrator.capacity.run import plan_searches
from orchestrator.capacity.search import (
    BY_EARLY,
    BY_INTERVAL,
    BY_POINT,
    FAIL,
    PASS,
    REPEAT,
    Attempt,
    Bracket,
    TenantCount,
    clopper_pearson,
    failed_order,
    judge_probe,
    judge_tenant,
    mix_rates,
    ray_fractions,
    w_bracket,
    weighted_capacity,
)
from orchestrator.errors import SpecError
from orchestrator.spec import parse_spec, searched_alone


def search(capacity: float, **kw: float) -> Bracket:
    """Run a bracket against a tenant whose probes pass exactly below ``capacity``."""
    args = {"start": 1.0, "step": 2.0, "tolerance": 0.05, "lo_limit": 1 / 16, "hi_limit": 64.0,
            "max_probes": 30, **kw}
    br = Bracket(**args)  # type: ignore[arg-type]
    while (x := br.next()) is not None:
        br.record(x, x <= capacity)
    return br


@pytest.mark.parametrize("capacity", [0.2, 0.93, 1.0, 3.7, 17.0])
def test_the_bracket_converges_to_the_tolerance_around_the_capacity(capacity: float) -> None:
    br = search(capacity)
    scale, (lo, hi), censored, reason = br.outcome()
    assert censored is None and reason is None
    assert hi is not None and lo <= capacity < hi and hi / lo - 1 <= 0.05
    assert scale == lo
    # geometric steps, then bisection on the log: about log2 steps + log2(log(2)/log(1.05))
    assert br.probes <= abs(math.log2(capacity)) + 2 + math.ceil(math.log2(math.log(2) / math.log(1.05)))


def test_a_capacity_above_the_limit_is_a_bound_and_below_it_zero() -> None:
    scale, (lo, hi), censored, reason = search(1000.0).outcome()
    assert (scale, lo, hi, censored) == (64.0, 64.0, None, "at least")
    assert "up to 64" in str(reason)
    scale, (lo, hi), censored, reason = search(0.01).outcome()
    assert (scale, lo, censored) == (0.0, 0.0, "zero") and hi == 1 / 16
    assert "down to 0.0625" in str(reason)


def test_the_probe_budget_leaves_the_bracket_open() -> None:
    scale, (lo, hi), censored, reason = search(3.7, max_probes=4).outcome()
    # 1, 2, 4 (fails), then sqrt(2 x 4): the budget ends it 41% wide
    assert censored == "open" and lo == 2.82843 and hi == 4.0 and "probe budget (4)" in str(reason)


def test_bisection_scales_have_six_significant_digits() -> None:
    br = search(3.7)
    assert all(float(f"{s:.6g}") == s for s in br.scales)


def test_clopper_pearson_is_the_beta_interval() -> None:
    lo, hi = clopper_pearson(45, 50, 0.95)
    assert lo == pytest.approx(beta.ppf(0.025, 45, 6)) and hi == pytest.approx(beta.ppf(0.975, 46, 5))
    assert clopper_pearson(0, 0, 0.95) == (0.0, 1.0)


def test_a_tenant_passes_fails_or_repeats_by_its_interval() -> None:
    assert judge_tenant(200, 196, 0.90, 0.95, last=False).decision == PASS  # lo 0.95
    v = judge_tenant(200, 150, 0.90, 0.95, last=False)
    assert (v.decision, v.decided_by) == (FAIL, BY_INTERVAL)
    v = judge_tenant(20, 18, 0.90, 0.95, last=False)  # 0.90 with n=20: straddles
    assert v.decision == REPEAT and v.ci[0] < 0.90 < v.ci[1]
    v = judge_tenant(20, 18, 0.90, 0.95, last=True)
    assert (v.decision, v.decided_by) == (PASS, BY_POINT)
    v = judge_tenant(20, 17, 0.90, 0.95, last=True)
    assert (v.decision, v.decided_by) == (FAIL, BY_POINT)
    v = judge_tenant(20, 19, 0.90, 0.95, last=False, early=True)
    assert (v.decision, v.decided_by) == (FAIL, BY_EARLY)


def _att(eid: str, **counts: tuple[int, int]) -> Attempt:
    return Attempt(eid, "completed", {t: TenantCount(n, m) for t, (n, m) in counts.items()})


def test_a_probe_pools_its_attempts_and_a_set_passes_only_when_every_tenant_does() -> None:
    targets = {"a": 0.9, "b": 0.9}
    one = [_att("p__all__cap0x1__r0", a=(20, 19), b=(20, 20))]
    assert judge_probe(one, ("a", "b"), targets, 0.95, 3)[0] == REPEAT
    # pooled 57/60 and 60/60: a's interval (0.861, 0.99) still straddles; b passes (lo 0.94)
    three = one + [_att("r1", a=(20, 19), b=(20, 20)), _att("r2", a=(20, 19), b=(20, 20))]
    decision, v = judge_probe(three, ("a", "b"), targets, 0.95, 3)
    assert decision == PASS and v["a"].decided_by == BY_POINT and v["b"].decided_by == BY_INTERVAL
    assert v["a"].requests == 60 and v["a"].met == 57
    bad = [_att("r0", a=(100, 99), b=(100, 60))]
    decision, v = judge_probe(bad, ("a", "b"), targets, 0.95, 3)
    assert decision == FAIL and v["b"].decision == FAIL and v["a"].decision == PASS


def test_a_failed_attempt_adds_nothing_and_an_early_stop_fails_its_tenant() -> None:
    failed = Attempt("r0", "failed", {}, reason="a died")
    assert judge_probe([failed], ("a",), {"a": 0.9}, 0.95, 3)[0] == REPEAT
    early = Attempt("r1", "completed", {"a": TenantCount(10, 9)},
                    early_stop="a: 3 of its 30 window requests already missed the SLO")
    decision, v = judge_probe([failed, early], ("a",), {"a": 0.9}, 0.95, 3)
    assert decision == FAIL and v["a"].decided_by == BY_EARLY


def test_the_tenant_that_stopped_a_set_probe_early_failed_first() -> None:
    # b's misses stopped the attempt at a third of its window; a's unsent requests were
    # dropped with it, so a's attainment is the lower one, yet b failed first
    stopped = Attempt("r0", "completed", {"a": TenantCount(300, 90), "b": TenantCount(30, 10)},
                      early_stop="b: 4 of its 30 window requests already missed the SLO")
    decision, v = judge_probe([stopped], ("a", "b"), {"a": 0.9, "b": 0.9}, 0.95, 3)
    assert decision == FAIL and v["a"].attainment < v["b"].attainment  # type: ignore[operator]
    assert failed_order(v) == ["b", "a"]


def test_with_confirm_a_failure_must_be_seen_in_two_windows() -> None:
    t, targets = ("a",), {"a": 0.9}
    stop = "a: 12 of its 100 window requests already missed the SLO"
    early = Attempt("r0", "completed", {"a": TenantCount(40, 28)}, early_stop=stop)
    fine = _att("r1", a=(100, 99))
    weak = _att("r2", a=(100, 60))  # interval (0.50, 0.70): below 0.9 on its own
    # one failing window is repeated, not trusted
    assert judge_probe([early], t, targets, 0.95, 3, confirm=True)[0] == REPEAT
    assert judge_probe([early], t, targets, 0.95, 3)[0] == FAIL  # the old rule
    # a second failing window (early or by its interval) fails the probe
    assert judge_probe([early, early], t, targets, 0.95, 3, confirm=True)[0] == FAIL
    assert judge_probe([early, weak], t, targets, 0.95, 3, confirm=True)[0] == FAIL
    # a clean window after the early stop: a third decides; two clean windows outvote it and
    # the probe is judged on the whole windows only (198/200 passes)
    assert judge_probe([early, fine], t, targets, 0.95, 3, confirm=True)[0] == REPEAT
    decision, v = judge_probe([early, fine, fine], t, targets, 0.95, 3, confirm=True)
    assert decision == PASS and v["a"].requests == 200
    # with room for two attempts only, the whole window decides
    assert judge_probe([early, fine], t, targets, 0.95, 2, confirm=True)[0] == PASS
    # no attempt left to confirm with: one failing window fails
    assert judge_probe([early], t, targets, 0.95, 1, confirm=True)[0] == FAIL
    # a straddling clean window after the early stop, with room for four: repeated
    mid = _att("r3", a=(20, 18))
    assert judge_probe([early, mid, mid], t, targets, 0.95, 4, confirm=True)[0] == REPEAT


def test_mixes_lie_on_the_time_division_line_at_scale_one() -> None:
    caps = {"a": 10.0, "b": 40.0}
    equal = mix_rates(("a", "b"), caps, fractions=ray_fractions(2, 0, 1))
    assert equal == {"a": 5.0, "b": 20.0} and weighted_capacity(equal, caps) == pytest.approx(1.0)
    same = mix_rates(("a", "b"), caps, relative={"a": 1, "b": 1})
    assert same["a"] == same["b"] == pytest.approx(8.0)  # 8/10 + 8/40 = 1
    rays = [ray_fractions(2, k, 3) for k in range(3)]
    assert rays[1] == pytest.approx([0.5, 0.5]) and rays[0][0] > 0.5 > rays[2][0]
    assert all(sum(r) == pytest.approx(1.0) for r in rays)
    assert ray_fractions(3, 0, 5) == pytest.approx([1 / 3] * 3)


def test_w_bracket_combines_the_scale_and_the_solo_brackets() -> None:
    mix = {"a": 5.0, "b": 20.0}
    solo = {"a": (10.0, 10.5), "b": (40.0, 42.0)}
    lo, hi = w_bracket(mix, (0.8, 0.84), solo)
    assert lo == pytest.approx(0.8 * (5 / 10.5 + 20 / 42))
    assert hi == pytest.approx(0.84 * (5 / 10 + 20 / 40))
    assert w_bracket(mix, (0.8, None), solo)[1] is None
    # a at least 10 req/s (no high end): W can be as low as b's share alone
    lo, _ = w_bracket(mix, (0.8, 0.84), {"a": (10.0, None), "b": (40.0, 42.0)})
    assert lo == pytest.approx(0.8 * 20 / 42)


SPEC = {
    "name": "c",
    "tenants": [{"name": "a", "kind": "vllm", "model": "tiny-llama"},
                {"name": "b", "kind": "vllm", "model": "tiny-llama"},
                {"name": "e", "kind": "encoder", "model": "all-minilm-l6-v2"}],
    "workloads": {n: {"kind": "synthetic", "arrival": {"process": "poisson", "rate": 2},
                      "input_tokens": {"dist": "fixed", "value": 8}} for n in "abe"},
    "slo": {"a": {"ttft_ms": 100}, "b": {"tpot_ms": 50}},
    "strategy": ["capacity"],
}


def test_the_spec_names_its_searches_and_refuses_what_cannot_be_searched() -> None:
    spec = parse_spec({**SPEC, "capacity": {"sets": [["b", "a"]], "rays": 2,
                                             "mixes": [{"a": 1, "b": 1}]}})
    assert searched_alone(spec) == ["a", "b"]  # e has no SLO
    keys = [(s.key, s.kind, s.mix_index) for s in plan_searches(spec)]
    assert keys == [("a", "solo", 0), ("b", "solo", 0), ("a+b", "set", 0), ("a+b#1", "set", 1),
                    ("a+b#2", "set", 2)]
    with pytest.raises(SpecError, match=r"capacity: tenant 'e' has no SLO bound"):
        parse_spec({**SPEC, "capacity": {"sets": [["a", "e"]]}})
    with pytest.raises(SpecError, match=r"capacity.sets.0: no tenant named 'z'"):
        parse_spec({**SPEC, "capacity": {"sets": [["a", "z"]]}})
    with pytest.raises(SpecError, match=r"capacity.mixes.0: gives no rate for b"):
        parse_spec({**SPEC, "capacity": {"sets": [["a", "b"]], "mixes": [{"a": 1}]}})
    with pytest.raises(SpecError, match=r"capacity.tolerance"):
        parse_spec({**SPEC, "capacity": {"tolerance": 0}})
