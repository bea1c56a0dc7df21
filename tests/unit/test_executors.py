"""Executors without servers: slot assignment of the parallel local executor (real spawned
worker processes running a stand-in group function), a worker that dies, retries, the
orphan guard, option errors. The end-to-end runs with real tenants are in
tests/e2e/test_executors.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.campaign import plan_campaign
from orchestrator.errors import OrchestratorError
from orchestrator.executors.base import GroupJob
from orchestrator.executors.factory import make_executor, parse_gpus
from orchestrator.executors.local import LocalParallelExecutor, SerialExecutor
from orchestrator.experiment import ExperimentOutcome
from orchestrator.group import GroupContext
from orchestrator.planner import MemoryPlan
from orchestrator.spec import parse_spec

ROOT = Path(__file__).parents[2]


def _spec(n: int):
    tenants = [{"name": f"e{i}", "kind": "encoder", "model": "all-minilm-l6-v2"} for i in range(n)]
    return parse_spec({
        "name": "slots",
        "tenants": tenants,
        "workloads": {t["name"]: {"kind": "synthetic", "arrival": {"process": "poisson", "rate": 1},
                                  "input_tokens": {"dist": "fixed", "value": 8}} for t in tenants},
        "strategy": ["isolated"],
        "experiment": {"residency": "exact", "repetitions": 2, "warmup_s": 0, "duration_s": 1},
    })


def _ctx(tmp_path: Path, n: int) -> tuple[GroupContext, list[GroupJob]]:
    spec = _spec(n)
    plan = plan_campaign(spec)
    run_dir = tmp_path / "runs" / spec.name
    run_dir.mkdir(parents=True)
    mem = MemoryPlan(backend="cpu", total_bytes=8 << 30, reserve_bytes=0)
    ctx = GroupContext(spec, tmp_path, mem, None, run_dir, "local", "")
    jobs = [GroupJob(f"g{i}", list(g.experiments)) for i, g in enumerate(plan.groups)]
    return ctx, jobs


def stand_in_group(ctx, pending, *, log, on_done, progress=None):
    """Runs in the worker process: records where it ran, 'runs' each experiment for 0.4 s
    (feeding one progress snapshot). A resident set named e1 dies (exit code 3) the first
    time it runs."""
    rec = {"label": ctx.label, "slot": os.environ.get("CUDA_VISIBLE_DEVICES"),
           "order": os.environ.get("CUDA_DEVICE_ORDER"), "pid": os.getpid(),
           "gpu": ctx.gpu, "start": time.time()}
    marker = ctx.run_dir / f".died-{ctx.label}"
    if pending[0].resident == ("e1",) and os.environ.get("DIE_ONCE") and not marker.exists():
        marker.touch()
        log("dying on purpose")
        os._exit(3)
    for exp in pending:
        if progress:
            progress(ctx.label, exp.id, _snapshot(exp.active[0]))
        time.sleep(0.4)
        if progress:
            progress(ctx.label, exp.id, None)
        on_done(ExperimentOutcome(exp, "completed", None, 1, 0))
    rec["end"] = time.time()
    with open(ctx.run_dir / "slots.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


def _snapshot(tenant: str):
    from workloads.progress import ProgressSnapshot, TenantSnapshot

    t = TenantSnapshot(tenant, "completion", sent=5, done=4, errors=1, rate_rps=2.5, p50_s=0.0123)
    return ProgressSnapshot(1.0, 10, 5, 4, 1, 1, 0.0, (t,))


def test_live_progress_crosses_from_workers_and_renders(tmp_path):
    from rich.console import Console
    from rich.progress import TextColumn

    from orchestrator.runner import _campaign_display

    ctx, jobs = _ctx(tmp_path, 2)
    display = _campaign_display()(TextColumn("{task.description}"),
                                  console=Console(record=True, width=120))
    seen = []

    def feed(label, eid, snap):
        seen.append((label, eid, snap))
        display.feed(label, eid, snap)
        if snap is not None:
            display.console.print(*display.get_renderables())

    LocalParallelExecutor(["0", "1"], group_fn=stand_in_group).run(
        ctx, jobs, log=lambda m: None, on_done=lambda o: None, progress=feed)
    live = [s for s in seen if s[2] is not None]
    assert {label for label, _, _ in live} == {"g0", "g1"}
    assert live[0][2].tenants[0].p50_s == pytest.approx(0.0123)  # pickled across the pipe
    text = display.console.export_text()
    assert "TTFT p50 12.3 ms" in text and "2.5 req/s" in text and "errors 1" in text
    assert display.running == {}  # every experiment's end cleared its lines


def _records(ctx: GroupContext) -> list[dict]:
    return [json.loads(line) for line in (ctx.run_dir / "slots.jsonl").read_text().splitlines()]


def test_groups_take_the_first_free_slot_and_never_share_one(tmp_path):
    ctx, jobs = _ctx(tmp_path, 5)
    outs: list[ExperimentOutcome] = []
    ex = LocalParallelExecutor(["0", "1"], group_fn=stand_in_group)
    t0 = time.time()
    ex.run(ctx, jobs, log=lambda m: None, on_done=outs.append)
    wall = time.time() - t0
    recs = sorted(_records(ctx), key=lambda r: r["start"])
    assert sorted(r["label"] for r in recs) == [f"g{i}" for i in range(5)]  # each group once
    assert {r["slot"] for r in recs} == {"0", "1"}
    assert all(r["order"] == "PCI_BUS_ID" for r in recs)
    assert all(r["gpu"] is None for r in recs)  # no GPU here: pseudo-slots
    by = {r["label"]: r for r in recs}
    assert by["g0"]["slot"] == "0" and by["g1"]["slot"] == "1"  # first free slot, in list order
    assert len({r["pid"] for r in recs}) == 5  # a fresh worker process per group
    for slot in ("0", "1"):  # a slot runs one group at a time
        runs = sorted((r["start"], r["end"]) for r in recs if r["slot"] == slot)
        assert all(a[1] <= b[0] for a, b in zip(runs, runs[1:], strict=False)), runs
    # side by side: g0 and g1 overlap, and never more than two at once
    assert by["g1"]["start"] < by["g0"]["end"]
    for r in recs:
        assert sum(o["start"] <= r["start"] < o["end"] for o in recs) <= 2
    assert len(outs) == 10 and all(o.status == "completed" for o in outs)
    serial_s = sum(r["end"] - r["start"] for r in recs)
    assert wall < serial_s + 10  # spawn costs a second or two a worker, not the groups' time


def test_a_dead_worker_fails_its_experiments_and_the_others_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DIE_ONCE", "1")
    ctx, jobs = _ctx(tmp_path, 3)
    outs: list[ExperimentOutcome] = []
    LocalParallelExecutor(["0", "1"], group_fn=stand_in_group).run(
        ctx, jobs, log=lambda m: None, on_done=outs.append)
    by = {o.experiment.id: o for o in outs}
    assert len(by) == 6 == len(outs)
    dead = [o for o in outs if o.experiment.resident == ("e1",)]
    assert dead and all(o.status == "failed" for o in dead)
    assert all("died (exit code 3)" in (o.reason or "") for o in dead)
    for o in dead:  # the driver wrote their manifests
        m = json.loads((ctx.run_dir / o.experiment.id / "manifest.json").read_text())
        assert m["status"] == "failed" and "exit code 3" in m["reason"]
        assert m["executor"] == "local" and m["experiment_id"] == o.experiment.id
    assert all(o.status == "completed" for o in outs if o.experiment.resident != ("e1",))


def test_retries_run_the_failed_experiments_again(tmp_path, monkeypatch):
    monkeypatch.setenv("DIE_ONCE", "1")
    ctx, jobs = _ctx(tmp_path, 2)
    outs: list[ExperimentOutcome] = []
    logs: list[str] = []
    LocalParallelExecutor(["0"], retries=1, group_fn=stand_in_group).run(
        ctx, jobs, log=logs.append, on_done=outs.append)
    assert len(outs) == 4 and all(o.status == "completed" for o in outs)  # final outcomes only
    assert any("retry 1 of 1" in m for m in logs)
    assert [r["label"] for r in _records(ctx)] == ["g0", "g1"]  # g1 on its second attempt


def test_serial_executor_retries_in_process(tmp_path):
    ctx, jobs = _ctx(tmp_path, 2)
    calls: list[list[str]] = []

    def flaky(gctx, pending, *, log, on_done):
        calls.append([e.id for e in pending])
        for i, exp in enumerate(pending):
            bad = len(calls) == 1 and i == 0
            on_done(ExperimentOutcome(exp, "failed" if bad else "completed", "boom" if bad else None, 0, 0))

    outs: list[ExperimentOutcome] = []
    SerialExecutor(retries=1, group_fn=flaky).run(ctx, jobs, log=lambda m: None, on_done=outs.append)
    assert len(outs) == 4 and all(o.status == "completed" for o in outs)
    assert calls[-1] == [jobs[0].experiments[0].id]  # only the failed one, at the end


def test_options():
    assert parse_gpus("0, 1,3") == ["0", "1", "3"] and parse_gpus(None) is None
    with pytest.raises(OrchestratorError, match="GPU 1 is listed twice"):
        parse_gpus("1,1")
    with pytest.raises(OrchestratorError, match="comma-separated"):
        parse_gpus("a,b")
    assert isinstance(make_executor("local"), SerialExecutor)
    assert isinstance(make_executor("local", gpus="0,1"), LocalParallelExecutor)
    with pytest.raises(OrchestratorError, match="--address is for --executor ray"):
        make_executor("local", address="auto")
    with pytest.raises(OrchestratorError, match="--gpus is for --executor local"):
        make_executor("ray", gpus=["0"])
    with pytest.raises(OrchestratorError, match="unknown executor"):
        make_executor("slurm")


def test_ray_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(OrchestratorError, match=r"pip install 'cotenant\[ray\]'"):
        make_executor("ray")


def test_cli_without_ray_is_one_clean_line(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps(_spec(1).model_dump(mode="json")))
    code = textwrap.dedent(f"""
        import sys
        sys.modules["ray"] = None
        from orchestrator.cli import main
        sys.exit(main(["run", {str(spec)!r}, "--executor", "ray", "--out", {str(tmp_path)!r}]))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert p.returncode != 0
    assert "pip install 'cotenant[ray]'" in p.stderr + p.stdout
    assert "Traceback" not in p.stderr + p.stdout
    assert not (tmp_path / "slots").exists()  # refused before anything was written


def test_orphan_guard_kills_the_servers_of_a_killed_worker(tmp_path):
    """A worker SIGKILLed while its server runs: the guard stops the server's process group."""
    code = textwrap.dedent(f"""
        import sys, time
        from servers.process import ServerProcess
        from orchestrator.executors.guard import OrphanGuard
        g = OrphanGuard(interval_s=0.05).start()
        p = ServerProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(300)"],
                          log_path={str(tmp_path / "s.log")!r}, health_url="http://127.0.0.1:9/")
        p.start()
        time.sleep(0.5)
        print(p.pid, flush=True)
        time.sleep(300)
    """)
    worker = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT)
    try:
        server_pid = int(worker.stdout.readline())
        assert psutil.pid_exists(server_pid)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _alive(server_pid):
            time.sleep(0.1)
        assert not _alive(server_pid), "the server outlived its killed worker"
    finally:
        worker.kill()
        worker.wait()


def test_orphan_guard_leaves_servers_alone_on_a_clean_exit(tmp_path, monkeypatch):
    import servers.process
    from orchestrator.executors.guard import OrphanGuard

    # the guard adopts every server this process runs: in a test session those are the shared
    # fixtures' tenants, which it must not take (and kill on stop) here
    monkeypatch.setattr(servers.process, "running_servers", lambda: [])

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                               start_new_session=True)
    try:
        g = OrphanGuard().start()
        g._send(f"+{sleeper.pid}")
        g.stop()  # says goodbye: nothing is killed
        time.sleep(0.3)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_orphan_guard_never_signals_a_recycled_group(monkeypatch):
    """The guard is told each server's group id with its leader's start time; a group whose
    leader now started at another time is a stranger that got the recycled number (pids are
    recycled, pid_max is often 32768): the guard leaves it alone and kills only its own."""
    import servers.process
    from orchestrator.executors.guard import OrphanGuard
    from servers.proctable import proc_start_ticks

    monkeypatch.setattr(servers.process, "running_servers", lambda: [])
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    stranger = subprocess.Popen(sleep, start_new_session=True)
    ours = subprocess.Popen(sleep, start_new_session=True)
    try:
        g = OrphanGuard().start()
        st, st_ours = proc_start_ticks(stranger.pid), proc_start_ticks(ours.pid)
        assert st is not None and st_ours is not None
        g._send(f"+{stranger.pid}:{st - 1}")  # a server that had this number before
        g._send(f"+{ours.pid}:{st_ours}")
        g._stop.set()
        assert g._proc is not None and g._proc.stdin is not None
        g._proc.stdin.close()  # as if the worker had died: no goodbye
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and ours.poll() is None:
            time.sleep(0.1)
        assert ours.poll() == -signal.SIGTERM, "the guard did not stop its own group"
        time.sleep(0.5)
        assert stranger.poll() is None, "the guard signalled a recycled process group"
    finally:
        for p in (stranger, ours):
            p.kill()
            p.wait()


def test_the_guard_program_reads_what_the_worker_told_it():
    """The guard is a module of its own now (not a string), so its parsing is testable."""
    from orchestrator.executors.guard import read_groups

    assert read_groups(["+12:345\n", "+7\n", "-12\n", "+9:x\n", "\n"]) == {7: None, 9: None}
    assert read_groups(["+12:345\n", "done\n", "+7\n"]) is None  # goodbye: nothing to stop


def test_the_guard_program_imports_only_the_standard_library():
    """It is started as a process of its own and must start at once: nothing but the
    standard library may come with it."""
    code = ("import sys; before = set(sys.modules); "
            "import orchestrator.executors.guard; "
            "print('\\n'.join(sorted(set(sys.modules) - before)))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       check=True)
    ours = [m for m in p.stdout.split() if m.split(".")[0] in
            ("orchestrator", "servers", "workloads", "reports", "rundir")]
    assert ours == ["orchestrator", "orchestrator.executors", "orchestrator.executors.guard"]
    third_party = [m for m in p.stdout.split() if m.split(".")[0] not in sys.stdlib_module_names
                   and m not in ours]
    assert not third_party, third_party
