"""The group loop without servers: a stand-in resident set, warm-up and experiment, to check
when the set restarts (the plan's chunks, failures, once when both fall together), that each
start is warmed up, and what every manifest records of its server start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator import group as grp
from orchestrator.campaign import plan_campaign
from orchestrator.experiment import ExperimentOutcome
from orchestrator.group import GroupContext, run_group
from orchestrator.planner import MemoryPlan
from orchestrator.residents import StartRecord
from orchestrator.spec import parse_spec


class FakeResidents:
    """Starts number their log files as the real one does (``<tenant>.<n>.log``)."""

    events: list[str] = []

    def __init__(self, tenants: list[Any], plan: Any, log_dir: Path, cache: Path, **kw: Any):
        self.tenants = tenants
        self.log_dir = log_dir
        self.running: dict[str, Any] = {}
        self.starts: list[StartRecord] = []

    def start(self) -> None:
        self.events.append("start")
        for t in self.tenants:
            n = len([s for s in self.starts if s.tenant == t.name])
            self.starts.append(StartRecord(t.name, 0.1, self.log_dir / f"{t.name}.{n}.log"))
            self.running[t.name] = object()

    def restart(self) -> None:
        self.events.append("restart")
        self.stop()
        self.start()

    def stop(self) -> None:
        self.running.clear()

    def log_tails(self, names: Any = None) -> dict[str, str]:
        return {}


@pytest.fixture
def group(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    FakeResidents.events = []
    warmups: list[int] = []

    def warm_up(spec: Any, base: Any, residents: Any, log_dir: Path, lifetime: int,
                **kw: Any) -> dict[str, Any]:
        FakeResidents.events.append(f"warm {lifetime}")
        warmups.append(lifetime)
        return {n: {"requests": 4, "rounds": 2, "p50_s": [0.1, 0.1], "settled": True,
                    "reason": "settled", "seconds": 0.2, "errors": 0} for n in residents.running}

    fail: set[str] = set()

    def run_experiment(spec: Any, base: Any, exp: Any, residents: Any, run_dir: Path,
                       manifest: Any, progress: Any = None) -> ExperimentOutcome:
        FakeResidents.events.append(exp.id)
        status = "failed" if exp.id in fail else "completed"
        manifest.finish(status, "boom" if status == "failed" else None)
        return ExperimentOutcome(exp, status, None, 1, 0)

    monkeypatch.setattr(grp, "ResidentSet", FakeResidents)
    monkeypatch.setattr(grp, "warm_up", warm_up)
    monkeypatch.setattr(grp, "run_experiment", run_experiment)

    def run(repetitions: int, restarts: int, failing: set[str] = frozenset()) -> Any:
        fail.clear()
        fail.update(failing)
        FakeResidents.events = []
        spec = parse_spec({
            "name": "g",
            "tenants": [{"name": "e", "kind": "encoder", "model": "all-minilm-l6-v2"},
                        {"name": "f", "kind": "encoder", "model": "all-minilm-l6-v2"}],
            "workloads": {n: {"kind": "synthetic", "arrival": {"process": "poisson", "rate": 1}}
                          for n in "ef"},
            "strategy": ["isolated"],
            "experiment": {"repetitions": repetitions, "restarts": restarts, "seed": 4},
        })
        plan = plan_campaign(spec, restarts=restarts)
        run_dir = tmp_path / "runs" / spec.name
        run_dir.mkdir(parents=True, exist_ok=True)
        mem = MemoryPlan(backend="cpu", total_bytes=8 << 30, reserve_bytes=0)
        ctx = GroupContext(spec, tmp_path, mem, None, run_dir, "local", "g0")
        outs = run_group(ctx, plan.experiments)
        ms = {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("*/manifest.json")}
        return plan, outs, ms, list(FakeResidents.events)

    return run


def test_the_set_restarts_between_chunks_and_warms_up_after_every_start(group: Any) -> None:
    plan, outs, ms, events = group(repetitions=4, restarts=2)
    assert [o.status for o in outs] == ["completed"] * 8
    ids = [e.id for e in plan.experiments]
    assert events == ["start", "warm 0", *ids[:4], "restart", "start", "warm 1", *ids[4:]]
    for e in plan.experiments:
        m = ms[e.id]
        assert m["server_lifetime"] == (0 if e.repetition < 2 else 1)
        assert m["block"] == e.repetition and m["order_seed"] == 4
        assert set(m["warmup"]) == {"e", "f"} and m["warmup"]["e"]["settled"] is True


def test_a_failure_restarts_once_even_at_a_chunk_boundary(group: Any) -> None:
    plan, _, ms, events = group(repetitions=4, restarts=2, failing=set())
    ids = [e.id for e in plan.experiments]
    # the last experiment of the first chunk fails, one in the middle of the second too
    plan, outs, ms, events = group(repetitions=4, restarts=2, failing={ids[3], ids[5]})
    assert events == ["start", "warm 0", *ids[:4], "restart", "start", "warm 1", *ids[4:6],
                      "restart", "start", "warm 2", *ids[6:]]
    assert [ms[i]["server_lifetime"] for i in ids] == [0, 0, 0, 0, 1, 1, 2, 2]
    assert [o.status for o in outs].count("failed") == 2


def test_one_lifetime_starts_once(group: Any) -> None:
    plan, _, ms, events = group(repetitions=3, restarts=1)
    assert events.count("start") == 1 and events.count("restart") == 0
    assert {m["server_lifetime"] for m in ms.values()} == {0}
