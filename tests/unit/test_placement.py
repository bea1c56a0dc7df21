"""Placement of target loads by first-fit decreasing on predicted capacities (synthetic laws)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from reports.errors import ReportError
from reports.placement import items_for, place, placement_text
from reports.predict_cli import load_explanation
from tests.unit.predictfixtures import Law, Plan, write_predict_run

SLO = {"a": {"ttft_ms": 57.0}, "b": {"ttft_ms": 57.0}, "c": {"ttft_ms": 57.0}}


def _run(root: Path, cores_per_rps: float, name: str) -> Path:
    laws = [Law(n, rate=4.0, cores_per_rps=cores_per_rps) for n in ("a", "b", "c")]
    return write_predict_run(root, Plan(laws, sets=[(("a", "b"), 0.5)], slo=SLO, name=name))


@pytest.fixture(scope="module")
def light(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 0.02 core per req/s: three tenants together never reach the 2 cores
    return _run(tmp_path_factory.mktemp("light"), 0.02, "light")


@pytest.fixture(scope="module")
def heavy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 0.8 core per req/s: at 40% of capacity (~1 req/s) each engine takes 0.8 core, two take
    # 1.6 of 2 cores and three 2.4: the third stretches the others past their SLO
    return _run(tmp_path_factory.mktemp("heavy"), 0.8, "heavy")


def test_tenants_that_do_not_interfere_share_one_gpu(light: Path) -> None:
    x = load_explanation(light)
    cap = x.capacities["a"].rps
    assert cap is not None
    p = place(x, {t: 0.3 * cap for t in ("a", "b", "c")})
    assert p.needed == 1 and p.dedicated == 3
    assert sorted(p.gpus[0].tenants) == ["a", "b", "c"]
    assert p.verify == [0]
    assert "GPUs needed: 1 co-located, against 3 with one GPU per tenant" in placement_text(p)


def test_interference_opens_a_new_gpu(heavy: Path) -> None:
    x = load_explanation(heavy)
    cap = x.capacities["a"].rps
    assert cap is not None
    p = place(x, {t: 0.4 * cap for t in ("a", "b", "c")})
    assert [len(g.items) for g in p.gpus] == [2, 1]
    assert p.gpus[0].prediction is not None and p.gpus[0].prediction["scale"] >= 1.0
    assert p.needed == 2 and p.dedicated == 3


def test_a_load_above_one_gpu_becomes_replicas(light: Path) -> None:
    x = load_explanation(light)
    cap = x.capacities["a"].rps
    assert cap is not None
    items = items_for(x, {"a": 2.5 * cap, "b": 0.2 * cap})
    assert [i.tenant for i in items] == ["a", "a", "a", "b"]
    assert items[0].fraction == pytest.approx(2.5 / 3)
    p = place(x, {"a": 2.5 * cap, "b": 0.2 * cap})
    assert p.needed == 3 and p.dedicated == 4  # one replica of a per GPU, b joins the first
    assert all(g.tenants.count("a") == 1 for g in p.gpus)


def test_unknown_tenants_are_refused(light: Path) -> None:
    x = load_explanation(light)
    with pytest.raises(ReportError, match="no solo profile for it"):
        place(x, {"zz": 1.0})


def test_plan_command_places_targets(light: Path, tmp_path: Path) -> None:
    from orchestrator.cli.campaign import plan

    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: s\ntenants:\n"
        + "".join(f"  - {{name: {n}, kind: vllm, model: tiny-llama}}\n" for n in ("a", "b", "c")))
    res = CliRunner().invoke(plan, [str(spec), "--profiles", str(light), "--targets", "a=1,b=1"])
    assert res.exit_code == 0, res.output
    assert "GPUs needed: 1 co-located, against 2" in res.output
    assert "verify first" in res.output
    bad = CliRunner().invoke(plan, [str(spec), "--profiles", str(light), "--targets", "q=1"])
    assert bad.exit_code != 0 and "no tenant named q" in bad.output
    half = CliRunner().invoke(plan, [str(spec), "--targets", "a=1"])
    assert half.exit_code != 0 and "go together" in half.output
