"""The campaign spec: strict loading, one clear message naming the file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.campaign import plan_campaign
from orchestrator.errors import SpecError
from orchestrator.spec import expand_sets, load_spec, parse_spec

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))

BASE = {
    "name": "t",
    "tenants": [
        {"name": "a", "kind": "vllm", "model": "tiny-llama"},
        {"name": "b", "kind": "vllm", "model": "tiny-llama-wide"},
        {"name": "e", "kind": "encoder", "model": "all-minilm-l6-v2"},
    ],
    "workloads": {
        n: {"kind": "synthetic", "arrival": {"process": "poisson", "rate": 1}} for n in "abe"
    },
}


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates(path: Path):
    from orchestrator.capacity.run import plan_searches

    spec, _ = load_spec(path)
    searches = plan_searches(spec) if "capacity" in spec.strategy else []
    assert plan_campaign(spec).experiments or searches


def test_typo_names_file_and_field(tmp_path):
    data = {**BASE, "tenants": [{**BASE["tenants"][0], "max_num_seq": 4}, *BASE["tenants"][1:]]}
    with pytest.raises(SpecError) as e:
        load_spec(_write(tmp_path, data))
    msg = str(e.value)
    assert "spec.yaml" in msg and "tenants.0(a).vllm.max_num_seq" in msg and "unknown key" in msg


def test_unknown_kind(tmp_path):
    data = {**BASE, "tenants": [{"name": "a", "kind": "tgi", "model": "m"}]}
    with pytest.raises(SpecError, match=r"tenants\.0\(a\).*tgi|does not match any of the expected tags"):
        load_spec(_write(tmp_path, data))


def test_negative_rate(tmp_path):
    data = {**BASE, "workloads": {"a": {"kind": "synthetic", "arrival": {"process": "poisson", "rate": -2}}}}
    with pytest.raises(SpecError, match=r"workloads\.a\.synthetic\.arrival\.poisson\.rate"):
        load_spec(_write(tmp_path, data))


def test_missing_trace_file(tmp_path):
    data = {**BASE, "workloads": {"a": {"kind": "trace", "path": "nope.csv"}}}
    with pytest.raises(SpecError, match=r"workloads\.a\.path: no such file: nope\.csv"):
        load_spec(_write(tmp_path, data))


def test_active_not_resident(tmp_path):
    data = {**BASE, "strategy": [{"resident": ["a"], "active": ["a", "b"]}]}
    with pytest.raises(SpecError, match=r"strategy\.0\.active: b not in the resident set"):
        load_spec(_write(tmp_path, data))


def test_workload_for_unknown_tenant_and_duplicate_names():
    with pytest.raises(SpecError, match="workloads.zz: no tenant named 'zz'"):
        parse_spec({**BASE, "workloads": {"zz": BASE["workloads"]["a"]}})
    with pytest.raises(SpecError, match="repeated: a"):
        parse_spec({**BASE, "tenants": [BASE["tenants"][0], BASE["tenants"][0]]})


def test_bad_yaml_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ntenants: [\n  - a: b\n")
    with pytest.raises(SpecError, match=r"bad\.yaml, line \d+"):
        load_spec(p)


def test_expand_strategies_shared_and_exact():
    spec = parse_spec({**BASE, "strategy": ["isolated", "pairs", "all"]})
    sets = expand_sets(spec)
    assert len(sets) == 3 + 3 + 1
    assert all(res == ("a", "b", "e") for res, _ in sets)  # shared residency
    exact = parse_spec({**BASE, "strategy": ["isolated", "pairs"],
                        "experiment": {"residency": "exact"}})
    assert (("a",), ("a",)) in expand_sets(exact)
    assert (("a", "b"), ("a", "b")) in expand_sets(exact)


def test_plan_interleaves_repetitions_and_ids_are_stable():
    spec = parse_spec({**BASE, "strategy": ["isolated", "all"],
                       "experiment": {"repetitions": 3, "seed": 0}})
    exps = plan_campaign(spec).experiments
    reps = [e.repetition for e in exps]
    # each round holds every set once before the next repetition starts (A B A B, not A A B B)
    assert reps == sorted(reps) and len(exps) == 4 * 3
    assert [e.id for e in exps] == [e.id for e in plan_campaign(spec).experiments]
    assert len({e.prompt_seed for e in exps}) == len(exps)  # prompts never reused
    # paired design: a tenant's trace seed is the same alone and co-located in a repetition
    alone = next(e for e in exps if e.active == ("a",) and e.repetition == 1)
    together = next(e for e in exps if len(e.active) == 3 and e.repetition == 1)
    assert alone.tenant_seed("a") == together.tenant_seed("a")
    assert alone.tenant_seed("a") != next(
        e for e in exps if e.active == ("a",) and e.repetition == 0).tenant_seed("a")
    # seed 0 is a seed like any other: shuffles differ from seed 1
    other = parse_spec({**BASE, "strategy": ["isolated", "all"],
                        "experiment": {"repetitions": 3, "seed": 1}})
    assert [e.id for e in plan_campaign(other).experiments] != [e.id for e in exps]


def test_command_line_overrides_rename_and_validate(tmp_path: Path) -> None:
    from orchestrator.cli.campaign import override_spec

    s, _ = load_spec(Path(__file__).parents[2] / "examples" / "h100-pairing.yaml")
    assert override_spec(s, Path("x.yaml")) is s
    o = override_spec(s, Path("x.yaml"), sharing="mps", rate_scales="2")
    assert o.name == f"{s.name}-x2-mps" and o.sharing.mode == "mps"
    assert o.experiment.rate_scales == [2.0]
    assert o.tenants == s.tenants and o.workloads == s.workloads and o.slo == s.slo
    with pytest.raises(SpecError, match=r"--rate-scales 'two'"):
        override_spec(s, Path("x.yaml"), rate_scales="two")
    with pytest.raises(SpecError, match=r"(?s)x.yaml with --rate-scales -1.*rate_scales"):
        override_spec(s, Path("x.yaml"), rate_scales="-1")


def test_the_round_two_sections_and_their_defaults() -> None:
    s = parse_spec(BASE)
    x = s.experiment
    assert x.seed is None and x.restarts is None and x.precision is None
    assert (x.warmup.enabled, x.warmup.tolerance, x.warmup.deadline_s, x.warmup.max_rounds) == (
        True, 0.15, 120.0, 10)
    assert (x.idle.deadline_s, x.idle.gpu_util_pct) == (30.0, 10.0)
    r = s.report
    assert (r.margin, r.level, r.multiplicity, r.pool_variance) == (0.10, 0.95, "holm", "auto")
    full = parse_spec({**BASE, "slo": {"a": {"tpot_ms": 50}},
                       "experiment": {"repetitions": 4, "seed": 3, "restarts": 2,
                                      "precision": {"half_width": 0.1, "max_repetitions": 12,
                                                    "figures": {"e": "e2e_p99_s"}}},
                       "report": {"multiplicity": "bh", "pool_variance": "never"}})
    assert full.slo["a"].attainment == 0.90
    assert full.experiment.precision is not None
    assert full.experiment.precision.figures == {"e": "e2e_p99_s"}
    assert full.report.multiplicity == "bh"


@pytest.mark.parametrize(("patch", "where"), [
    ({"slo": {"a": {"attainment": 0}}}, r"slo\.a\.attainment"),
    ({"slo": {"a": {"attainment": 1.2}}}, r"slo\.a\.attainment"),
    ({"report": {"multiplicity": "bonferroni"}}, r"report\.multiplicity"),
    ({"report": {"margin": -0.1}}, r"report\.margin"),
    ({"experiment": {"seed": -1}}, r"experiment\.seed"),
    ({"experiment": {"warmup": {"tolerance": 0}}}, r"experiment\.warmup\.tolerance"),
    ({"experiment": {"warmup": {"max_rounds": 1}}}, r"experiment\.warmup\.max_rounds"),
    ({"experiment": {"idle": {"gpu_util_pct": 0}}}, r"experiment\.idle\.gpu_util_pct"),
    ({"experiment": {"idle": {"deadline": 3}}}, r"experiment\.idle\.deadline.*unknown key"),
    ({"experiment": {"repetitions": 2, "restarts": 3}}, r"restarts \(3\) exceeds repetitions"),
    ({"experiment": {"repetitions": 5, "precision": {"max_repetitions": 4}}},
     r"max_repetitions \(4\) is below repetitions \(5\)"),
    ({"experiment": {"precision": {"figures": {"zz": "tpot_p50_s"}}}},
     r"precision\.figures\.zz: no tenant named 'zz'"),
    ({"experiment": {"precision": {"figures": {"a": "tpot_p51_s"}}}},
     r"precision\.figures\.a: 'tpot_p51_s' is not a figure"),
])
def test_the_round_two_sections_are_strict(patch: dict, where: str) -> None:
    with pytest.raises(SpecError, match=where):
        parse_spec({**BASE, **patch})
