"""Executors: who runs a campaign's resident groups, and where.

A campaign is a list of resident groups (``plan_campaign``); a group starts its servers once,
runs its pending experiments and stops them (``runner.run_group``), and needs one whole GPU.
An executor decides where each group runs; nothing else changes between executors, and the
run directory they leave is the same file for file (the manifests say who ran what, where:
``executor``, ``host``, ``gpu``).

``local`` (default)
    Without ``--gpus``: groups one after another in this process, on the spec's GPU.
    With ``--gpus 0,1,...``: groups side by side, one per listed GPU ("slot"); each group
    runs in its own worker process (multiprocessing, spawn) with ``CUDA_VISIBLE_DEVICES``
    set to its GPU (``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so the number is also the NVML index
    that the sampler reads). Workers write straight into the run directory. On a host
    without a GPU the numbers are pseudo-slots: groups still run side by side (on the CPU,
    sharing its cores), the manifests' ``gpu`` is null. That is how the parallel path is
    tested without a GPU.
``ray``
    Each group is a Ray task asking for one GPU (``num_gpus=1``; on a cluster without GPUs,
    one CPU instead). The task runs ``run_group`` into a temporary run directory on its node
    and streams each experiment's files back (relative path -> bytes) as soon as the
    experiment ends; the driver writes them into the campaign's run directory atomically,
    data files first and ``manifest.json`` last, so a manifest that says ``completed`` always
    has its files. Server logs follow when the group ends.

Failures: a worker that dies (killed, out of memory, node lost) leaves its unreported
experiments ``failed`` with the reason; ``retries=N`` runs a group's failed experiments again,
in fresh servers, up to N times; the campaign always completes. ``--resume`` skips completed
manifests whoever wrote them, so it works across executors.

Servers started by a worker that is killed would outlive it (they run in their own
sessions); every worker process keeps a small guard process that kills the process groups of
its servers when the worker's end of a pipe closes without a goodbye.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from orchestrator.campaign import Experiment
from orchestrator.errors import OrchestratorError
from orchestrator.experiment import ExperimentOutcome

# runner imports this module lazily; the names used from runner are imported in functions.

LogFn = Callable[[str], None]
DoneFn = Callable[[ExperimentOutcome], None]
ProgressFn = Callable[[str, str, Any], None]  # (group label, experiment id, snapshot | None)
GroupFn = Callable[..., Any]  # runner.run_group's signature

EXECUTORS = ("local", "ray")
RAY_INSTALL_HINT = "pip install 'cotenant[ray]'"


@dataclass
class GroupJob:
    """One resident group's pending experiments; ``label`` (``g<i>``, i = the group's index in
    the plan) is stable across runs and keeps the logs of parallel groups apart."""

    label: str
    experiments: list[Experiment]
    attempt: int = 0

    @property
    def resident(self) -> tuple[str, ...]:
        return self.experiments[0].resident


class Executor(Protocol):
    name: str
    retries: int

    def run(self, ctx: Any, jobs: list[GroupJob], *, log: LogFn, on_done: DoneFn,
            progress: ProgressFn | None = None) -> None:
        """Run every job; call ``on_done`` once per experiment with its final outcome, and
        ``progress(label, experiment_id, snapshot or None)`` while experiments replay (where
        the executor can: in-process and local workers; Ray tasks log only)."""
        ...


# ---- construction ----------------------------------------------------------------------


def parse_gpus(text: str | None) -> list[str] | None:
    """``"0,1,3"`` -> ``["0", "1", "3"]``; None or empty -> None."""
    if text is None or not str(text).strip():
        return None
    out: list[str] = []
    for part in str(text).split(","):
        p = part.strip()
        if not p.isdigit():
            raise OrchestratorError(
                f"--gpus {text!r}: a comma-separated list of GPU indices, e.g. 0,1 (got {p!r})"
            )
        if str(int(p)) in out:
            raise OrchestratorError(f"--gpus {text!r}: GPU {int(p)} is listed twice")
        out.append(str(int(p)))
    return out


def make_executor(
    name: str = "local",
    *,
    gpus: list[str] | str | None = None,
    address: str | None = None,
    retries: int = 0,
) -> Executor:
    """The executor ``cotenant run --executor NAME`` asks for; errors are OrchestratorError."""
    if isinstance(gpus, str):
        gpus = parse_gpus(gpus)
    if retries < 0:
        raise OrchestratorError(f"--retries must be 0 or more, got {retries}")
    if name == "local":
        if address:
            raise OrchestratorError("--address is for --executor ray")
        if gpus:
            return LocalParallelExecutor(check_slots(gpus), retries=retries)
        return SerialExecutor(retries=retries)
    if name == "ray":
        if gpus:
            raise OrchestratorError(
                "--gpus is for --executor local; Ray gives each group one GPU of the cluster"
            )
        import_ray()  # fail now, before anything starts, if Ray is missing
        return RayExecutor(address=address, retries=retries)
    raise OrchestratorError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise OrchestratorError(
            f"--executor ray needs Ray, an optional extra: {RAY_INSTALL_HINT}"
        ) from None
    return ray


def check_slots(slots: list[str]) -> list[str]:
    """Refuse GPU indices this host does not have; with no GPU at all they are pseudo-slots."""
    from orchestrator.telemetry import detect_gpu

    if detect_gpu(0) is None:
        return slots  # no NVML GPU: pseudo-slots (documented; what the CPU tests use)
    missing = [s for s in slots if detect_gpu(int(s)) is None]
    if missing:
        raise OrchestratorError(f"--gpus: this host has no GPU {', '.join(missing)}")
    return slots


# ---- shared pieces ---------------------------------------------------------------------


def pin_context(ctx: Any, index: int | None) -> Any:
    """The GroupContext for a group pinned to GPU ``index`` (None: no GPU): its GPU facts,
    the spec's GPU index for the sampler (NVML ignores CUDA_VISIBLE_DEVICES), and a memory
    plan for that device when it differs from the one the driver planned for."""
    from orchestrator.runner import make_memory_plan
    from orchestrator.telemetry import detect_gpu

    gpu = detect_gpu(index) if index is not None else None
    spec = ctx.spec
    if gpu is not None and spec.gpu.index != index:
        spec = spec.model_copy(update={"gpu": spec.gpu.model_copy(update={"index": index})})
    mem = ctx.mem
    backend = "cuda" if gpu else "cpu"
    same_size = (
        gpu is None
        or spec.gpu.memory_gib is not None
        or int(gpu["memory_total_bytes"]) == mem.total_bytes
    )
    if mem.backend != backend or not same_size:
        mem, _ = make_memory_plan(spec)
    return replace(ctx, spec=spec, gpu=gpu, mem=mem)


def outcome_tuple(o: ExperimentOutcome) -> tuple[str, str, str | None, int, int]:
    return (o.experiment.id, o.status, o.reason, int(o.requests), int(o.errors))


def record_failed(ctx: Any, exp: Experiment, reason: str, *, host: str | None = None,
                  fresh: bool = False) -> ExperimentOutcome:
    """Mark ``exp`` failed in ``ctx.run_dir`` after its worker died. A worker that wrote into
    the run directory itself (local) may have left a manifest: at ``running`` it keeps what
    it said and becomes ``failed``; at ``completed`` it stands (the worker died after
    writing it). Otherwise (or with ``fresh``: a Ray task, whose files never arrived) a new
    manifest is written."""
    from orchestrator.runner import _manifest
    from rundir.envelope import Manifest
    from rundir.errors import RunDirError
    from rundir.io import read_json, salvage_requests

    exp_dir = ctx.run_dir / exp.id
    path = exp_dir / "manifest.json"
    old: dict[str, Any] | None = None
    if not fresh:
        with contextlib.suppress(RunDirError):
            old = read_json(path) if path.exists() else None
        if old and old.get("status") not in ("running", "completed"):
            old = None  # from an earlier run, not this attempt
    if old and old.get("status") == "completed":
        counts = old.get("counts") or {}
        return ExperimentOutcome(exp, "completed", None, int(sum(counts.values())), 0)
    with contextlib.suppress(Exception):  # what was measured stays readable
        salvage_requests(exp_dir, keep=True)
    if old:
        m = Manifest(exp_dir, {k: v for k, v in old.items() if k != "schema_version"})
    else:
        m = _manifest(ctx, exp)
        if host is not None:
            m.data["host"] = host
        m.start()  # the same keys as a local experiment that never started
    m.finish("failed", reason)
    return ExperimentOutcome(exp, "failed", reason, 0, 0)


class _Base:
    """Retries and final outcomes, the same for every executor."""

    name = "local"
    fresh_failures = False  # True where workers never write into the run directory (Ray)

    def __init__(self, retries: int = 0) -> None:
        self.retries = retries

    def _report(self, job: GroupJob, out: ExperimentOutcome, held: list[Experiment],
                log: LogFn, on_done: DoneFn) -> None:
        if out.status == "failed" and job.attempt < self.retries:
            held.append(out.experiment)
            log(f"[yellow]failed[/] {out.experiment.id} ({out.reason}); "
                f"retry {job.attempt + 1} of {self.retries} comes later")
            return
        on_done(out)

    def _end(self, ctx: Any, job: GroupJob, reported: set[str], held: list[Experiment],
             died: str | None, log: LogFn, on_done: DoneFn, host: str | None = None) -> GroupJob | None:
        """The job is over: experiments it never reported failed (``died`` says why); returns
        the retry job for the failed ones, if retries are left."""
        for exp in job.experiments:
            if exp.id in reported:
                continue
            reason = died or "the group ended without running it"
            out = record_failed(ctx, exp, reason, host=host, fresh=self.fresh_failures)
            reported.add(exp.id)
            self._report(job, out, held, log, on_done)
        if not held:
            return None
        return GroupJob(job.label, list(held), job.attempt + 1)


class SerialExecutor(_Base):
    """Groups one after another in this process, on the spec's GPU (today's behaviour)."""

    name = "local"

    def __init__(self, retries: int = 0, group_fn: GroupFn | None = None) -> None:
        super().__init__(retries)
        self.group_fn = group_fn

    def run(self, ctx: Any, jobs: list[GroupJob], *, log: LogFn, on_done: DoneFn,
            progress: ProgressFn | None = None) -> None:
        from orchestrator.runner import run_group

        group_fn = self.group_fn or run_group
        extra = {"progress": progress} if progress else {}
        todo = deque(jobs)
        while todo:
            job = todo.popleft()
            reported: set[str] = set()
            held: list[Experiment] = []

            def done(out: ExperimentOutcome, job: GroupJob = job, reported: set[str] = reported,
                     held: list[Experiment] = held) -> None:
                reported.add(out.experiment.id)
                self._report(job, out, held, log, on_done)

            group_fn(replace(ctx, label=job.label), job.experiments, log=log, on_done=done, **extra)
            retry = self._end(ctx, job, reported, held, None, log, on_done)
            if retry:
                todo.append(retry)


# ---- the guard: no orphan servers when a worker is killed ------------------------------

_GUARD_SRC = r"""
import os, shutil, signal, sys, time
# not a child of the worker: Ray kills a dead worker's children (this guard among them)
if os.fork() > 0:
    os._exit(0)
groups = {}  # process group id -> its leader's start time (clock ticks since boot) or None
for line in sys.stdin:
    line = line.strip()
    if line == "done":
        sys.exit(0)
    g, _, st = line[1:].partition(":")
    if g.isdigit():
        if line[0] == "+":
            groups[int(g)] = int(st) if st.isdigit() else None
        else:
            groups.pop(int(g), None)
PROC = os.path.isdir("/proc")
def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
def ours(g, st):
    # a group id is a pid and pids are recycled: while the leader we were told about runs, the
    # whole group; once it is gone, the group's members that started after it (left-over
    # children); a leader that started at another time means the id now names a stranger
    if not PROC or st is None:
        return [0]  # no way to tell: the group as it is
    lead = stat(g)
    if lead is not None and lead[0] not in ("Z", "X"):
        return [0] if int(lead[19]) == st else []
    out = []
    for e in os.listdir("/proc"):
        f = stat(e) if e.isdigit() else None
        if f and int(f[2]) == g and f[0] not in ("Z", "X") and int(f[19]) >= st:
            out.append(int(e))
    return out
def kill(g, st, sig):
    targets = ours(g, st)
    for pid in targets:
        try:
            os.killpg(g, sig) if pid == 0 else os.kill(pid, sig)
        except OSError:
            if pid == 0:
                return False
    return bool(targets)
def alive(g, st):
    if not PROC or st is None:
        try:
            os.killpg(g, 0)
            return True
        except OSError:
            return False
    return bool(ours(g, st))
for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
    for g, st in list(groups.items()):
        if not kill(g, st, sig):
            groups.pop(g, None)
        elif sig == signal.SIGTERM:
            kill(g, st, signal.SIGCONT)  # a stopped server acts on the SIGTERM now
    end = time.monotonic() + wait
    while time.monotonic() < end and any(alive(g, st) for g, st in groups.items()):
        time.sleep(0.1)
for folder in sys.argv[1:]:
    shutil.rmtree(folder, ignore_errors=True)
"""


class OrphanGuard:
    """A guard process told the process group of every server this process starts (polled
    from ``servers.process.running_servers``); if this process dies without saying goodbye,
    the guard's stdin closes and it kills those groups (SIGTERM, then SIGKILL after 5 s),
    then removes the ``remove`` folders (a Ray task's temporary run directory)."""

    def __init__(self, interval_s: float = 0.2, remove: list[Path] | None = None) -> None:
        self.interval_s = interval_s
        self.remove = [str(p) for p in remove or []]
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sent: set[int] = set()
        self._t0 = time.monotonic()

    def start(self) -> OrphanGuard:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _GUARD_SRC, *self.remove], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self._proc.wait()  # it forks and returns at once; the guard itself lives on
        self._thread = threading.Thread(target=self._loop, name="orphan-guard", daemon=True)
        self._thread.start()
        return self

    def _send(self, line: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(line.encode() + b"\n")
        self._proc.stdin.flush()

    def sync(self) -> None:
        from servers.process import running_servers

        # only servers started since the guard began: never servers the process already ran
        # (in a test session, the shared fixtures' tenants)
        now = {
            p.pgid: p.start_ticks
            for p in running_servers()
            if p.pgid is not None and (p.started_at or 0.0) >= self._t0
        }
        with contextlib.suppress(OSError, ValueError):
            for g in now.keys() - self._sent:
                # with the leader's start time: the guard never signals a recycled group id
                self._send(f"+{g}" + (f":{now[g]}" if now[g] is not None else ""))
            for g in self._sent - now.keys():
                self._send(f"-{g}")
            self._sent = set(now)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sync()

    def stop(self) -> None:
        """Goodbye. Servers still running now (a clean-up that was cut short) are left to
        the guard, which stops them as if this process had died."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._proc is not None:
            with contextlib.suppress(OSError, ValueError):
                self.sync()
                if not self._sent:
                    self._send("done")
                assert self._proc.stdin is not None
                self._proc.stdin.close()

    def __enter__(self) -> OrphanGuard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- local, side by side on several GPUs -----------------------------------------------


def _raise_interrupt(signum: int, frame: Any) -> None:
    """The first SIGINT or SIGTERM interrupts; later ones (Ctrl-C reaches the worker, then
    the driver's SIGTERM does) are ignored so that the clean-up runs to its end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def _watch_parent(interval_s: float = 1.0) -> None:
    """A worker whose driver is gone interrupts itself (SIGTERM -> KeyboardInterrupt): its
    experiment is marked interrupted and its servers stop, as on Ctrl-C."""
    parent = os.getppid()

    def loop() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=loop, name="watch-driver", daemon=True).start()


def _local_worker(slot: str, ctx: Any, pending: list[Experiment], conn: Any,
                  group_fn: GroupFn | None) -> None:
    """A worker process: one group on one GPU. Messages to the driver: ("log", text),
    ("progress", label, experiment id, snapshot | None), ("done", outcome tuple),
    ("error", text), ("end",)."""
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    os.environ["CUDA_VISIBLE_DEVICES"] = slot
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    _watch_parent()

    def send(*msg: Any) -> None:
        with contextlib.suppress(OSError, ValueError):
            conn.send(msg)

    guard = OrphanGuard().start()
    try:
        from orchestrator.runner import run_group

        ctx = pin_context(ctx, int(slot))
        (group_fn or run_group)(
            ctx, pending,
            log=lambda m: send("log", str(m)),
            on_done=lambda o: send("done", outcome_tuple(o)),
            progress=lambda label, eid, snap: send("progress", label, eid, snap),
        )
        send("end")
    except KeyboardInterrupt:
        send("interrupted")
    except BaseException as e:
        send("error", f"{type(e).__name__}: {e}", traceback.format_exc())
    finally:
        guard.stop()
        conn.close()


@dataclass
class _Running:
    job: GroupJob
    slot: str
    proc: Any
    conn: Any
    reported: set[str] = field(default_factory=set)
    held: list[Experiment] = field(default_factory=list)
    ended: bool = False
    error: str | None = None


class LocalParallelExecutor(_Base):
    """Groups side by side on this host, one per slot (a GPU index), each in a spawned worker
    process pinned with CUDA_VISIBLE_DEVICES. A group takes the first free slot in the order
    given; a slot runs one group at a time."""

    name = "local"

    def __init__(self, slots: list[str], retries: int = 0, group_fn: GroupFn | None = None,
                 stop_grace_s: float = 60.0) -> None:
        super().__init__(retries)
        if not slots:
            raise OrchestratorError("the parallel local executor needs at least one slot")
        self.slots = list(slots)
        self.group_fn = group_fn
        self.stop_grace_s = stop_grace_s

    def run(self, ctx: Any, jobs: list[GroupJob], *, log: LogFn, on_done: DoneFn,
            progress: ProgressFn | None = None) -> None:
        import multiprocessing as mp
        from multiprocessing.connection import wait

        mpc = mp.get_context("spawn")
        todo = deque(jobs)
        free = list(self.slots)
        running: list[_Running] = []
        try:
            while todo or running:
                while todo and free:
                    job = todo.popleft()
                    slot = free.pop(0)
                    recv, send = mpc.Pipe(duplex=False)
                    p = mpc.Process(
                        target=_local_worker,
                        args=(slot, replace(ctx, label=job.label), job.experiments, send,
                              self.group_fn),
                        name=f"cotenant-{job.label}",
                    )
                    p.start()
                    send.close()
                    running.append(_Running(job, slot, p, recv))
                    log(f"group {job.label} ({'+'.join(job.resident)}, {len(job.experiments)} "
                        f"experiments{', retry' if job.attempt else ''}) on slot {slot}")
                wait([r.conn for r in running] + [r.proc.sentinel for r in running], timeout=1.0)
                for r in list(running):
                    self._drain(r, log, on_done, progress)
                    if r.proc.exitcode is None:
                        continue
                    r.proc.join()
                    self._drain(r, log, on_done, progress)
                    running.remove(r)
                    free.append(r.slot)
                    free.sort(key=self.slots.index)
                    died = None
                    if r.error:
                        died = f"worker of group {r.job.label} on slot {r.slot} failed: {r.error}"
                    elif not r.ended:
                        died = (f"worker of group {r.job.label} on slot {r.slot} died "
                                f"(exit code {r.proc.exitcode})")
                    if died:
                        log(f"[red]{died}[/]")
                    retry = self._end(replace(ctx, gpu=_slot_gpu(r.slot)), r.job, r.reported,
                                      r.held, died, log, on_done)
                    if retry:
                        todo.append(retry)
        except BaseException:
            self._stop_all(running, log, on_done)
            raise

    def _drain(self, r: _Running, log: LogFn, on_done: DoneFn,
               progress: ProgressFn | None = None) -> None:
        by_id = {e.id: e for e in r.job.experiments}
        while True:
            try:
                if not r.conn.poll():
                    return
                msg = r.conn.recv()
            except (EOFError, OSError):
                return
            kind = msg[0]
            if kind == "progress":
                if progress:
                    progress(*msg[1:])
            elif kind == "log":
                log(f"[dim]{r.job.label}@{r.slot}[/] {msg[1]}")
            elif kind == "done":
                eid, status, reason, n, errors = msg[1]
                r.reported.add(eid)
                self._report(r.job, ExperimentOutcome(by_id[eid], status, reason, n, errors),
                             r.held, log, on_done)
            elif kind == "error":
                r.error = msg[1]
                log(f"[red]group {r.job.label} on slot {r.slot}:[/] {msg[2]}")
            elif kind == "end":
                r.ended = True
            elif kind == "interrupted":
                r.ended = True
                r.error = "interrupted"

    def _stop_all(self, running: list[_Running], log: LogFn, on_done: DoneFn) -> None:
        """Ctrl-C or an error in the driver: SIGTERM every worker (each marks its experiment
        interrupted and stops its servers), wait, then SIGKILL what is left."""
        for r in running:
            with contextlib.suppress(OSError):
                r.proc.terminate()
        deadline = time.monotonic() + self.stop_grace_s
        for r in running:
            r.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if r.proc.exitcode is None:
                r.proc.kill()
                r.proc.join()
            with contextlib.suppress(Exception):
                self._drain(r, log, on_done)


def _slot_gpu(slot: str) -> dict[str, Any] | None:
    from orchestrator.telemetry import detect_gpu

    return detect_gpu(int(slot)) if slot.isdigit() else None


# ---- Ray ---------------------------------------------------------------------------------


def _collect(folder: Path, root: Path) -> dict[str, bytes]:
    """Every plain file under ``folder`` as {path relative to root: bytes}; names starting
    with '.' (temporary files of atomic writes, caches) are left out."""
    out: dict[str, bytes] = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        out[rel.as_posix()] = p.read_bytes()
    return out


def _rebase(obj: Any, old: str, new: str) -> Any:
    """Paths under the worker's temporary run directory -> the same paths in the campaign's."""
    if isinstance(obj, str):
        return new + obj[len(old):] if obj == old or obj.startswith(old + "/") else obj
    if isinstance(obj, dict):
        return {k: _rebase(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rebase(v, old, new) for v in obj]
    return obj


def ray_group_task(payload: dict[str, Any], label: str, pending: list[Experiment],
                   old_logs: list[str]) -> Iterator[dict[str, Any]]:
    """A Ray task (streaming generator): run one group into a temporary run directory on
    this node, yield each experiment's files as it ends, then the server logs.

    ``old_logs`` names the group's log files already in the campaign's run directory (an
    earlier attempt or run): empty stand-ins here make the new ones numbered after them,
    as a local run numbers them, and are not sent back."""
    import ray

    from orchestrator.runner import GroupContext, run_group
    from rundir.envelope import host_info

    ids = ray.get_gpu_ids()
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    spec = payload["spec"]
    tmp = Path(tempfile.mkdtemp(prefix=f"cotenant-{spec.name}-{label}-"))
    run_dir = tmp / spec.name
    run_dir.mkdir()
    log_dir = run_dir / "logs" / label
    log_dir.mkdir(parents=True)
    for name in old_logs:
        (log_dir / name).touch()
    guard = OrphanGuard(remove=[tmp]).start()
    t: threading.Thread | None = None
    try:
        base = Path(payload["base"])
        if payload["files"] and not all((base / rel).is_file() for rel in payload["files"]):
            base = tmp / "spec"  # the spec's folder is not here: its files came with the task
            for rel, data in payload["files"].items():
                (base / rel).parent.mkdir(parents=True, exist_ok=True)
                (base / rel).write_bytes(data)
        ctx = GroupContext(spec, base, payload["mem"], None, run_dir, "ray", label)
        ctx = pin_context(ctx, int(ids[0]) if ids else None)
        host = host_info()["hostname"]
        yield {"kind": "start", "host": host, "gpu": ctx.gpu, "root": str(run_dir),
               "pid": os.getpid()}
        q: queue.Queue[tuple[str, Any]] = queue.Queue()

        def body() -> None:
            try:
                run_group(ctx, pending, log=lambda m: q.put(("log", str(m))),
                          on_done=lambda o: q.put(("done", o)))
                q.put(("end", None))
            except BaseException as e:
                q.put(("error", (f"{type(e).__name__}: {e}", traceback.format_exc())))

        t = threading.Thread(target=body, name=f"cotenant-{label}", daemon=True)
        t.start()
        error = None
        while True:
            kind, x = q.get()
            if kind == "log":
                yield {"kind": "log", "text": x}
            elif kind == "done":
                yield {"kind": "experiment", "outcome": outcome_tuple(x),
                       "files": _collect(run_dir / x.experiment.id, run_dir)}
            else:
                error = x if kind == "error" else None
                break
        t.join()
        logs = {rel: data for rel, data in _collect(run_dir / "logs", run_dir).items()
                if not (rel.startswith(f"logs/{label}/") and Path(rel).name in old_logs)}
        yield {"kind": "end", "files": logs, "error": error}
    finally:
        if t is not None and t.is_alive():  # cancelled or interrupted mid-group
            from servers.process import stop_all

            stop_all()
        guard.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class _Task:
    job: GroupJob
    gen: Any
    reported: set[str] = field(default_factory=set)
    held: list[Experiment] = field(default_factory=list)
    host: str | None = None
    gpu: dict[str, Any] | None = None
    root: str | None = None
    ended: bool = False
    error: str | None = None


@dataclass
class TransferStats:
    """Driver-side cost of gathering files from Ray workers."""

    files: int = 0
    bytes: int = 0
    write_s: float = 0.0
    items: int = 0


class RayExecutor(_Base):
    """Each group a Ray task with one GPU (or, on a cluster without GPUs, ``cpus_per_group``
    CPUs); the driver writes what the tasks stream back."""

    name = "ray"
    fresh_failures = True

    def __init__(self, address: str | None = None, retries: int = 0, cpus_per_group: float = 1.0,
                 init_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(retries)
        self.address = address
        self.cpus_per_group = cpus_per_group
        self.init_kwargs = init_kwargs or {}
        self.stats = TransferStats()

    def run(self, ctx: Any, jobs: list[GroupJob], *, log: LogFn, on_done: DoneFn,
            progress: ProgressFn | None = None) -> None:
        ray = import_ray()
        started = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  **self.init_kwargs}
            prev = signal.getsignal(signal.SIGTERM)
            ray.init(address=self.address, **kw)
            started = True
            # ray.init makes SIGTERM exit at once; keep the campaign's handler (SIGTERM ->
            # KeyboardInterrupt: tasks cancelled, campaign marked interrupted)
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signal.SIGTERM, prev)
        try:
            self._run(ray, ctx, jobs, log, on_done)
        finally:
            if started:
                ray.shutdown()

    def _options(self, ray: Any) -> dict[str, Any]:
        if ray.cluster_resources().get("GPU", 0) >= 1:
            return {"num_gpus": 1, "num_cpus": 1}
        return {"num_cpus": self.cpus_per_group}

    def _run(self, ray: Any, ctx: Any, jobs: list[GroupJob], log: LogFn, on_done: DoneFn) -> None:
        from orchestrator.spec import _files_of, resolve_path

        files: dict[str, bytes] = {}
        for w in ctx.spec.workloads.values():
            for _, p in _files_of(w):
                if not Path(p).expanduser().is_absolute():
                    files[p] = resolve_path(ctx.base, p).read_bytes()
        payload = ray.put({"spec": ctx.spec, "base": str(ctx.base), "mem": ctx.mem, "files": files})
        opts = self._options(ray)
        task_fn = ray.remote(max_retries=0)(ray_group_task)
        where = ", ".join(f"{k}={v:g}" for k, v in opts.items())
        log(f"ray: {len(jobs)} groups, each a task with {where}; cluster "
            f"{ {k: v for k, v in ray.cluster_resources().items() if k in ('CPU', 'GPU')} }")
        tasks: list[_Task] = []

        def submit(job: GroupJob) -> None:
            old_logs = sorted(p.name for p in (ctx.run_dir / "logs" / job.label).glob("*.log"))
            gen = task_fn.options(**opts, name=f"cotenant-{job.label}").remote(
                payload, job.label, job.experiments, old_logs)
            tasks.append(_Task(job, gen))

        for job in jobs:
            submit(job)
        try:
            while tasks:
                ready, _ = ray.wait([t.gen for t in tasks], num_returns=1, timeout=1.0)
                for gen in ready:
                    t = next(x for x in tasks if x.gen is gen)
                    over = self._step(ray, ctx, t, log, on_done)
                    if not over:
                        continue
                    tasks.remove(t)
                    died = None
                    if t.error:
                        died = f"ray task of group {t.job.label} failed: {t.error}"
                        log(f"[red]{died}[/]")
                    retry = self._end(replace(ctx, gpu=t.gpu), t.job, t.reported, t.held, died,
                                      log, on_done, host=t.host)
                    if retry:
                        submit(retry)
        except BaseException:
            for t in tasks:
                with contextlib.suppress(Exception):
                    ray.cancel(t.gen, force=True)  # kills the worker; its guard stops the servers
            raise
        s = self.stats
        log(f"ray: gathered {s.files} files, {s.bytes / 1e6:.1f} MB in {s.items} messages; "
            f"writing them took {s.write_s:.2f} s")

    def _step(self, ray: Any, ctx: Any, t: _Task, log: LogFn, on_done: DoneFn) -> bool:
        """Take the next item of a task's stream; True when the task is over."""
        try:
            ref = next(t.gen)
            item = ray.get(ref)
        except StopIteration:
            if not t.ended:
                t.error = "its stream ended early"
            return True
        except Exception as e:  # the worker died (killed, OOM, node lost) or the task raised
            t.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            return True
        kind = item["kind"]
        self.stats.items += 1
        if kind == "start":
            t.host, t.gpu, t.root = item["host"], item["gpu"], item["root"]
            gpu = f"GPU {t.gpu['index']} ({t.gpu['name']})" if t.gpu else "no GPU"
            log(f"group {t.job.label} ({'+'.join(t.job.resident)}) on {t.host}, {gpu}")
        elif kind == "log":
            log(f"[dim]{t.job.label}@{t.host}[/] {item['text']}")
        elif kind == "experiment":
            eid, status, reason, n, errors = item["outcome"]
            self._write(ctx.run_dir, item["files"], t.root)
            t.reported.add(eid)
            exp = next(e for e in t.job.experiments if e.id == eid)
            self._report(t.job, ExperimentOutcome(exp, status, reason, n, errors), t.held, log,
                         on_done)
        elif kind == "end":
            self._write(ctx.run_dir, item["files"], None)
            t.ended = True
            if item["error"]:
                t.error = item["error"][0]
                log(f"[red]group {t.job.label}:[/] {item['error'][1]}")
        return False

    def _write(self, run_dir: Path, files: dict[str, bytes], root: str | None) -> None:
        """Data files first, manifest.json last (rebased to this run directory): a manifest
        that says completed always has its files."""
        import json

        from rundir.io import atomic_write_bytes, atomic_write_json

        t0 = time.perf_counter()
        manifests = []
        for rel, data in files.items():
            if rel.endswith("/manifest.json"):
                manifests.append((rel, data))
                continue
            atomic_write_bytes(run_dir / rel, data)
        for rel, data in manifests:
            obj = json.loads(data)
            if root:
                obj = _rebase(obj, root, str(run_dir))
            atomic_write_json(run_dir / rel, obj)
        self.stats.files += len(files)
        self.stats.bytes += sum(len(d) for d in files.values())
        self.stats.write_s += time.perf_counter() - t0
