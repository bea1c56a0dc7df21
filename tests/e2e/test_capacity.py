"""Capacity searches against real servers (the MiniLM encoder on the CPU: it starts in
seconds): a search converges with its probes on disk; a tenant killed during a probe fails
that probe, not the search; SIGKILL mid-search, then --resume, keeps every finished probe
byte for byte and completes; an SLO no rate can meet ends at capacity 0 with the reason."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import polars as pl
import pytest

from tests.e2e.test_faults import (
    ENC,
    TELEMETRY,
    Run,
    completed_files,
    lost,
    manifests,
    measuring,
    no_half_written,
    wait_for,
    write_spec,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LOAD = {"kind": "synthetic", "arrival": {"process": "poisson", "rate": 10},
        "input_tokens": {"dist": "fixed", "value": 32}}
WINDOWS = {"warmup_s": 0.5, "duration_s": 2.5, "drain_s": 2, "seed": 11,
           "warmup": {"deadline_s": 30, "max_rounds": 4}, "idle": {"deadline_s": 10}}
TOL = 0.45  # one bisection after the doubling: the fewest probes that still bisect


# the searches start at the workload's rate and double: MiniLM alone meets a 60 ms E2E SLO up
# to about 80-110 req/s here, so starting at 40 brackets it in two doublings
NEAR_KNEE = {**LOAD, "arrival": {"process": "poisson", "rate": 40}}


def capacity_spec(tmp: Path, name: str, tenants: list[dict], slo: dict, capacity: dict) -> Path:
    return write_spec(tmp, name, tenants, {t["name"]: NEAR_KNEE for t in tenants},
                      strategy=["capacity"], experiment=WINDOWS, slo=slo, capacity=capacity,
                      telemetry=TELEMETRY)


def completed_probes(run_dir: Path) -> list[str]:
    return [e for e, m in manifests(run_dir).items() if m.get("status") == "completed"]


def test_a_search_survives_a_killed_tenant_and_a_killed_runner_and_converges(tmp_path):
    enc2 = {**ENC, "name": "enc2"}
    spec = capacity_spec(tmp_path, "cap", [ENC, enc2],
                         {"enc": {"e2e_ms": 60}, "enc2": {"e2e_ms": 60}},
                         {"sets": [["enc", "enc2"]], "tolerance": TOL, "max_attempts": 1,
                          "max_probes": 8, "confirm_failures": False})
    run_dir = tmp_path / "cap"
    run = Run(spec, tmp_path)
    # 1. a tenant killed during a probe: that attempt fails, the set restarts, the search goes on
    victim = wait_for(lambda: (m := measuring(run_dir)) and m.get("tenants") and m, 180,
                      "a probe measuring", run)
    os.kill(int(victim["tenants"]["enc"]["pid"]), signal.SIGKILL)
    killed = victim["experiment_id"]
    wait_for(lambda: manifests(run_dir)[killed]["status"] == "failed", 60, "the probe failed", run)
    # 2. the runner killed after a few more probes: nothing it finished may change
    wait_for(lambda: len(completed_probes(run_dir)) >= 4, 240, "four completed probes", run)
    os.killpg(run.proc.pid, signal.SIGKILL)
    run.finish(30)
    run.survivors()
    before = completed_files(run_dir)
    rows_before = pl.read_parquet(run_dir / "probes.parquet")
    # 3. resume: the searches replay their finished probes from disk and complete
    resumed = Run(spec, tmp_path, "--resume")
    out = resumed.finish(400)
    assert resumed.proc.returncode == 0, out[-3000:]
    assert lost(before, run_dir) == [], "a finished probe was rewritten by the resume"
    no_half_written(run_dir)

    m = manifests(run_dir)
    assert m[killed]["status"] == "failed" and "enc" in m[killed]["reason"]
    retry = killed.replace("__r0", "__r1")
    assert m[retry]["status"] == "completed" and m[retry]["probe"]["attempt"] == 1

    probes = pl.read_parquet(run_dir / "probes.parquet")
    assert probes.height > rows_before.height
    # the rows written before the kill are still the first rows, unchanged
    assert probes.head(rows_before.height).equals(rows_before)
    assert set(probes["experiment_id"]) <= set(m)
    cap = json.loads((run_dir / "capacity.json").read_text())
    for t in ("enc", "enc2"):
        c = cap["tenants"][t]
        lo, hi = c["bracket"]
        solo = probes.filter((pl.col("search") == t) & (pl.col("decision").is_in(["pass", "fail"])))
        passed = solo.filter(pl.col("decision") == "pass")["offered_rps"]
        failed = solo.filter(pl.col("decision") == "fail")["offered_rps"]
        assert c["capacity_rps"] == pytest.approx(lo) and lo == pytest.approx(passed.max(), rel=1e-5)
        if c["censored"] is None:
            assert hi == pytest.approx(failed.min(), rel=1e-5) and hi / lo - 1 <= TOL + 1e-6
            assert passed.max() < failed.min()  # the bracket is consistent with every probe
            assert c["knee_experiment"] in m and isinstance(c["binding"], list)
        else:
            assert c["censored"] in ("at least", "open") and c["reason"]
    s = cap["sets"]["enc+enc2"]
    caps = {t: cap["tenants"][t]["capacity_rps"] for t in ("enc", "enc2")}
    assert sum(s["mix"][t] / caps[t] for t in caps) == pytest.approx(1.0, rel=1e-4)
    assert s["W"] == pytest.approx(s["scale"]) and s["W_bracket"][0] <= s["W"]
    assert s["rates"]["enc"] == pytest.approx(s["scale"] * s["mix"]["enc"], rel=1e-4)
    sets = probes.filter(pl.col("kind") == "set")
    assert sets.height and set(sets["tenant"]) == {"enc", "enc2"}
    assert json.loads((run_dir / "campaign.json").read_text())["status"] == "completed"


def test_an_slo_no_rate_can_meet_is_capacity_zero_with_the_reason(tmp_path):
    # after the campaign's own experiment: the searches go on with its servers (one start)
    spec = write_spec(tmp_path, "never", [ENC], {"enc": LOAD}, strategy=["isolated", "capacity"],
                      experiment=WINDOWS, slo={"enc": {"e2e_ms": 0.001}},
                      capacity={"tolerance": TOL, "min_rps": {"enc": 2.0}}, telemetry=TELEMETRY)
    run = Run(spec, tmp_path)
    out = run.finish(300)
    assert run.proc.returncode == 0, out[-3000:]
    run_dir = tmp_path / "never"
    assert "the searches go on with the last block's servers" in out
    assert [p.name for p in (run_dir / "logs").rglob("enc.*.log")] == ["enc.0.log"]
    lifetimes = {e: m.get("server_lifetime") for e, m in manifests(run_dir).items()}
    assert set(lifetimes.values()) == {0} and "enc__all__x1__r0" in lifetimes
    cap = json.loads((run_dir / "capacity.json").read_text())["tenants"]["enc"]
    assert cap["capacity_rps"] == 0 and cap["censored"] == "zero"
    assert "missed at every scale probed, down to" in cap["reason"]
    probes = pl.read_parquet(run_dir / "probes.parquet")
    # a failure is confirmed by a second window (capacity.confirm_failures): each probe's
    # first attempt is repeated, its second fails the probe
    assert set(probes.filter(pl.col("attempt") == 0)["decision"]) == {"repeat"}
    assert set(probes.filter(pl.col("attempt") == 1)["decision"]) == {"fail"}
    assert probes["attempt"].max() == 1
    assert probes["offered_rps"].min() == pytest.approx(2.0)
    # each probe stopped as soon as its misses made the target unreachable
    fails = probes.filter(pl.col("decision") == "fail")
    assert probes["early_stop"].all() and (fails["decided_by"] == "early").all()
    m = manifests(run_dir)
    assert all("already missed the SLO" in (m[e].get("early_stop") or "")
               for e in probes["experiment_id"])
