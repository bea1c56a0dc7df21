"""Bottlenecks named from what saturates (alone, per load) and attribution in co-located sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reports import limits as L
from reports.aggregate import experiment_table
from reports.attribution import attribution_table
from reports.bottleneck import bottleneck_rows, bottleneck_table, load_fractions
from reports.colocated import measured_sets
from reports.profiles import Arm, Rung, Slo, TenantProfile, build_profiles, request_latencies
from rundir.reader import load_run
from tests.unit.predictfixtures import Law, Plan, write_predict_run


def _profile(kind: str, rows: list[dict[str, Any]]) -> TenantProfile:
    arm = Arm("t", kind, (), np.array([], dtype=bool), np.array([]), np.array([]), np.array([]))
    rungs = tuple(Rung(float(r["offered_rps"]), arm,
                       {"tenant": "t", "tenant_kind": kind, "experiments": 2, "rate_scale": 1.0,
                        "max_num_seqs": 16, **r}) for r in rows)
    return TenantProfile("t", kind, Slo(), rungs)


def test_each_rung_names_what_binds_or_nothing() -> None:
    p = _profile("vllm", [
        {"offered_rps": 1.0, "proc_cpu_mean_pct": 20.0, "requests_running_mean": 1.0,
         "gpu_util_mean_pct": 30.0, "sm_clock_mean_mhz": 1500.0},
        {"offered_rps": 2.0, "proc_cpu_mean_pct": 55.0, "requests_running_mean": 4.0,
         "gpu_util_mean_pct": 60.0, "sm_clock_mean_mhz": 1950.0},
        {"offered_rps": 4.0, "proc_cpu_mean_pct": 97.0, "requests_running_mean": 15.5,
         "gpu_util_mean_pct": 80.0, "sm_clock_mean_mhz": 1980.0},
    ])
    rows = bottleneck_rows(p)
    # a GPU tenant: its engine's CPU (0.97 core at the top rung) is not judged
    assert [r["binding"] for r in rows] == ["nothing saturated", "nothing saturated",
                                           "batch limit"]
    assert rows[0]["nearest"] == L.GPU_BUSY  # 30/95 beats 1/15.2
    assert rows[0]["rising"] is None
    # the batch limit rose most from the lowest rung: 1 -> 15.5 of 15.2 running
    assert rows[2]["rising"] == L.BATCH_LIMIT
    assert rows[2]["rising_to"] == pytest.approx(15.5 / (0.95 * 16))
    assert "engine CPU" not in rows[2]["reading"]
    # a lightly loaded GPU lowers its clocks: 1500 MHz is 24% under the busiest rung's
    assert rows[0]["clock_flag"] and not rows[1]["clock_flag"] and not rows[2]["clock_flag"]
    assert "SM clock 1,500 MHz" in rows[0]["reading"]


def test_load_fractions_follow_the_thresholds_of_limits() -> None:
    row = {"requests_running_mean": 0.95 * 64, "kv_cache_usage_mean": 0.45,
           "gpu_util_mean_pct": 95.0, "gpm_dram_bw_util_mean_pct": 40.0,
           "proc_cpu_mean_pct": 45.0, "host_cpu_mean_pct": 90.0, "send_delay_p99_s": 0.1}
    f = load_fractions(row, "vllm", 64)
    assert f == pytest.approx({L.BATCH_LIMIT: 1.0, L.KV_CACHE: 0.5, L.GPU_BUSY: 1.0,
                               L.MEMORY_BANDWIDTH: 0.5, L.HOST_CPU: 1.0, L.CLIENT: 2.0})
    no_gpu = {k: v for k, v in row.items() if not k.startswith(("gpu_", "gpm_"))}
    assert load_fractions(no_gpu, "vllm", 64)[L.ENGINE_CPU] == pytest.approx(0.5)
    assert set(load_fractions(row, "encoder", 64)) == {L.GPU_BUSY, L.MEMORY_BANDWIDTH,
                                                       L.HOST_CPU, L.CLIENT}
    assert load_fractions({"gpu_util_mean_pct": float("nan")}, "vllm", None) == {}


@pytest.fixture(scope="module")
def host_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    laws = [Law("a", rate=2.0, cores_per_rps=0.25), Law("e", kind="encoder", rate=8.0,
                                                       cores_per_rps=0.05)]
    plan = Plan(laws, sets=[(("a", "e"), 1.0), (("a", "e"), 2.0)], kappa=1.0,
                slo={"a": {"ttft_ms": 100.0}, "e": {"e2e_ms": 100.0}})
    return write_predict_run(tmp_path_factory.mktemp("host"), plan)


def test_the_host_cpu_is_named_where_it_binds(host_run: Path) -> None:
    run = load_run(host_run)
    exp, dev = experiment_table(run)
    b = bottleneck_table(build_profiles(run, exp, dev))
    got = {(r["tenant"], r["offered_rps"]): r["binding"] for r in b.iter_rows(named=True)}
    # a: 0.25, 0.5, 1 core of 2 -> host 12.5%, 25%, 50%; its engine binds at 0.9 core
    # e: 0.2, 0.4, 0.8 core -> nothing saturated (the encoder has no one-thread engine)
    assert got == {("a", 1.0): "nothing saturated", ("a", 2.0): "nothing saturated",
                   ("a", 4.0): "engine CPU", ("e", 4.0): "nothing saturated",
                   ("e", 8.0): "nothing saturated", ("e", 16.0): "nothing saturated"}
    assert all(r for r in b["reading"])


def test_attribution_names_whose_resource_grew(host_run: Path) -> None:
    run = load_run(host_run)
    exp, dev = experiment_table(run)
    lat = request_latencies(run)
    profiles = build_profiles(run, exp, dev, lat)
    sets = measured_sets(run, exp, dev, lat, profiles)
    assert [s.name for s in sets] == ["a + e", "a + e x2"]
    t = attribution_table(sets, profiles, cores=2)
    x2 = {r["tenant"]: r for r in t.iter_rows(named=True) if r["set"] == "a + e x2"}
    # at x2: a uses 1 core and e 0.8 of 2; the fixture stretches the lockstep encoder by
    # 1 + kappa x (2 - 1) x 1/2 = 1.5, and writes its process CPU as its use x its stretch
    assert x2["e"]["grew"] == "engine CPU 0.8 → 1.2 cores (+50%)"
    assert x2["a"]["grew"] is None and "none of its own resources grew" in x2["a"]["reading"]
    assert x2["a"]["binding"] == "engine CPU and host CPU"
    # the fixture's host is at 90% of 2 cores; the engines alone at x2: 1 + 0.8 cores
    assert x2["a"]["device"] == "host CPU 1.8 of 2 cores against 1.8 for its tenants' engines alone (sum)"
    assert x2["e"]["clock_flag"] is None  # no clocks on the host
    assert all(r["binding"] for r in t.iter_rows(named=True))
