"""Executors end to end on the CPU, with real encoder tenants: the same small campaign (two
resident sets) run by the local executor (one after the other), the local executor on two
pseudo-slots (side by side) and Ray (a local instance started here, 2 CPUs) leaves the same
files; a Ray worker killed mid-experiment gives failed experiments, not a hung driver.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import polars as pl
import psutil
import pytest

from orchestrator.executors.factory import make_executor
from orchestrator.runner import CampaignResult, run_campaign
from orchestrator.spec import parse_spec

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ENC = {"name": "enc", "kind": "encoder", "model": "all-minilm-l6-v2", "max_batch": 16}
ENC2 = {"name": "enc2", "kind": "encoder", "model": "all-minilm-l6-v2", "max_batch": 8,
        "batch_window_ms": 2}
LOAD = {"kind": "synthetic", "arrival": {"process": "poisson", "rate": 10},
        "input_tokens": {"dist": "fixed", "value": 32}}
PARQUETS = ("requests.parquet", "telemetry.parquet", "server_metrics.parquet")


def _spec(name: str, duration_s: float = 2.0):
    return parse_spec({
        "name": name,
        "tenants": [ENC, ENC2],
        "workloads": {"enc": LOAD, "enc2": LOAD},
        "strategy": ["isolated"],
        "experiment": {"warmup_s": 1, "duration_s": duration_s, "drain_s": 5, "repetitions": 1,
                       "seed": 0, "residency": "exact"},
        "telemetry": {"interval_s": 0.2, "process_interval_s": 0.5, "scrape_interval_s": 0.5},
    })


def _run(tmp: Path, name: str, **kw) -> CampaignResult:
    ex = make_executor(kw.pop("executor", "local"), gpus=kw.pop("gpus", None),
                       retries=kw.pop("retries", 0))
    return run_campaign(_spec(name, kw.pop("duration_s", 2.0)), tmp, tmp / kw.pop("out"), ex,
                        report=False, **kw)


def _files(run_dir: Path) -> list[str]:
    return sorted(
        p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*")
        if p.is_file() and not any(x.startswith(".") for x in p.relative_to(run_dir).parts)
    )


def _manifests(run_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("*/manifest.json")}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory, local_ray) -> dict[str, Path]:
    """The same spec (campaign 'same') run by each executor into its own out folder."""
    tmp = tmp_path_factory.mktemp("executors")
    out = {}
    for label, kw in (("local", {}), ("slots", {"gpus": ["0", "1"]}), ("ray", {"executor": "ray"})):
        res = _run(tmp, "same", out=label, **kw)
        assert res.run_dir.exists()
        out[label] = res.run_dir
    return out


def test_every_executor_writes_the_same_files(three_runs):
    local = three_runs["local"]
    ms = _manifests(local)
    assert set(ms) == {"enc__enc__x1__r0", "enc2__enc2__x1__r0"}
    for eid, m in ms.items():  # the pipeline works: otherwise comparing files says little
        assert m["status"] == "completed", (eid, m.get("reason"))
    for label in ("slots", "ray"):
        other = three_runs[label]
        assert _files(other) == _files(local), label
        oms = _manifests(other)
        assert set(oms) == set(ms)
        for eid, m in oms.items():
            assert list(m) == list(ms[eid]), (label, eid)  # same keys, same order
            assert m["status"] == "completed", (label, eid, m.get("reason"))
            assert m["executor"] == ("ray" if label == "ray" else "local")
            assert m["host"] == socket.gethostname() and m["gpu"] is None
            for t in m["tenants"].values():  # paths point into this run directory
                assert t["log"].startswith(str(other) + "/"), t["log"]
                assert Path(t["log"]).is_file()
            for f in PARQUETS:
                assert pl.read_parquet_schema(other / eid / f) == \
                    pl.read_parquet_schema(local / eid / f), (label, eid, f)
            assert pl.read_parquet(other / eid / "requests.parquet").height > 0
        c = json.loads((other / "campaign.json").read_text())
        assert c["status"] == "completed" and c["experiments"] == json.loads(
            (local / "campaign.json").read_text())["experiments"]


def test_side_by_side_really_overlaps(three_runs):
    """With two slots (or Ray) the two resident sets measure at about the same time; the
    local executor runs them one after the other."""
    def gap(run_dir: Path) -> float:
        a = [m["anchor_wall_s"] for m in _manifests(run_dir).values()]
        return abs(a[0] - a[1])

    one_after_the_other = gap(three_runs["local"])  # window, stop, then the next start
    assert one_after_the_other > 6
    assert gap(three_runs["slots"]) < one_after_the_other / 2
    assert gap(three_runs["ray"]) < one_after_the_other / 2


def test_resume_across_executors(three_runs, tmp_path):
    """A campaign started locally (one experiment done) is finished by Ray."""
    src = three_runs["local"]
    run_dir = tmp_path / "resume" / "same"
    shutil.copytree(src, run_dir)
    gone = "enc2__enc2__x1__r0"
    shutil.rmtree(run_dir / gone)
    kept = (run_dir / "enc__enc__x1__r0" / "requests.parquet").read_bytes()
    res = run_campaign(_spec("same"), tmp_path, tmp_path / "resume", make_executor("ray"),
                       resume=True, report=False)
    assert res.skipped == 1 and [o.experiment.id for o in res.outcomes] == [gone]
    ms = _manifests(run_dir)
    assert ms[gone]["status"] == "completed" and ms[gone]["executor"] == "ray"
    assert ms["enc__enc__x1__r0"]["executor"] == "local"
    assert (run_dir / "enc__enc__x1__r0" / "requests.parquet").read_bytes() == kept
    # the resumed group's server log comes after the first run's, as a local resume numbers it
    assert sorted(p.name for p in (run_dir / "logs" / "g1").glob("*.log")) == \
        ["enc2.0.log", "enc2.1.log"]


def _worker(label: str) -> psutil.Process | None:
    for p in psutil.process_iter(["cmdline"]):
        if (p.info["cmdline"] or [""])[0] == f"ray::cotenant-{label}":
            return p
    return None


class _Killed:
    """A campaign run by Ray in a thread whose group g1 worker is SIGKILLed mid-window."""

    def __init__(self, tmp: Path, name: str, **kw) -> None:
        self.result: dict[str, object] = {}
        self.pattern = os.path.join(tempfile.gettempdir(), f"cotenant-{name}-g1-*", name, "*",
                                    "manifest.json")
        t0 = time.monotonic()

        def drive() -> None:
            try:
                # the kill lands within a poll (0.2 s) of the window's start: 1 + 4 s of window
                # leave it the room, and the retried group measures the whole window again
                self.result["res"] = _run(tmp, name, out="runs", executor="ray", duration_s=4.0, **kw)
            except BaseException as e:  # pragma: no cover - reported below
                self.result["error"] = e

        driver = threading.Thread(target=drive, daemon=True)
        driver.start()
        # wait until group g1 measures (its manifest, in the worker's temporary run directory)
        self.victim = self._wait_measuring(driver)
        worker = _worker("g1")
        assert worker is not None
        self.servers = [c.pid for c in worker.children(recursive=True)]
        assert self.servers
        worker.send_signal(signal.SIGKILL)
        driver.join(timeout=120)
        assert not driver.is_alive(), "the driver hangs after a worker was killed"
        assert "error" not in self.result, self.result.get("error")
        self.res = self.result["res"]
        assert isinstance(self.res, CampaignResult)
        self.wall_s = time.monotonic() - t0

    def _wait_measuring(self, driver: threading.Thread) -> dict:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and driver.is_alive():
            for path in glob.glob(self.pattern):
                try:
                    m = json.loads(Path(path).read_text())
                except (OSError, ValueError):
                    continue
                if m.get("status") == "running" and m.get("anchor_wall_s"):
                    return m
            time.sleep(0.2)
        raise AssertionError(f"group g1 never started measuring: {self.result}")

    def assert_no_leftovers(self) -> None:
        """The killed worker's servers and temporary run directory do not outlive it."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (_alive(self.servers) or glob.glob(self.pattern)):
            time.sleep(0.2)
        left = _alive(self.servers)
        for pid in left:  # do not leak them into the rest of the session
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        assert not left, f"servers of the killed worker outlived it: {left}"
        assert not glob.glob(self.pattern)


def test_killed_ray_worker_gives_failed_experiments(tmp_path, local_ray):
    k = _Killed(tmp_path, "kill")
    by = {o.experiment.id: o for o in k.res.outcomes}
    dead = by[k.victim["experiment_id"]]
    assert dead.status == "failed" and "ray task of group g1 failed" in (dead.reason or "")
    assert by["enc__enc__x1__r0"].status == "completed"  # the other group is untouched
    ms = _manifests(k.res.run_dir)
    assert ms[dead.experiment.id]["status"] == "failed"
    assert ms[dead.experiment.id]["executor"] == "ray"
    assert "WorkerCrashedError" in ms[dead.experiment.id]["reason"]
    assert json.loads((k.res.run_dir / "campaign.json").read_text())["status"] == "completed"
    k.assert_no_leftovers()
    assert k.wall_s < 150


def test_killed_ray_worker_is_retried(tmp_path, local_ray):
    k = _Killed(tmp_path, "retry", retries=1)
    assert len(k.res.outcomes) == 2 and all(o.status == "completed" for o in k.res.outcomes)
    m = _manifests(k.res.run_dir)[k.victim["experiment_id"]]
    assert m["status"] == "completed" and m["reason"] is None and m["executor"] == "ray"
    assert m["anchor_wall_s"] > k.victim["anchor_wall_s"]  # measured again, after the kill
    assert pl.read_parquet(k.res.run_dir / m["experiment_id"] / "requests.parquet").height > 0
    k.assert_no_leftovers()


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out

