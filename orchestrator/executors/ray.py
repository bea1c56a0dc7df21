"""The Ray executor: each resident group a Ray task asking for one GPU (or, on a cluster
without GPUs, CPUs), run into a temporary run directory on its node; the task streams each
experiment's files back as it ends and the driver writes them into the campaign's run
directory, data files first and ``manifest.json`` last."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.campaign import Experiment
from orchestrator.executors.base import (
    DoneFn,
    GroupJob,
    LogFn,
    ProgressFn,
    _Base,
    import_ray,
    outcome_tuple,
    pin_context,
)
from orchestrator.executors.guard import OrphanGuard
from orchestrator.experiment import ExperimentOutcome
from orchestrator.group import GroupContext, run_group
from rundir.envelope import host_info


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


def _task_dirs(name: str, label: str, old_logs: list[str]) -> tuple[Path, Path]:
    """(a temporary folder on this node, the group's run directory in it), with empty
    stand-ins of ``old_logs`` in its log folder."""
    tmp = Path(tempfile.mkdtemp(prefix=f"cotenant-{name}-{label}-"))
    run_dir = tmp / name
    run_dir.mkdir()
    log_dir = run_dir / "logs" / label
    log_dir.mkdir(parents=True)
    for log_name in old_logs:
        (log_dir / log_name).touch()
    return tmp, run_dir


def _task_base(payload: dict[str, Any], tmp: Path) -> Path:
    """The spec's folder (its trace files are relative to it): the driver's where this node
    has its files, else a copy of the files that came with the task."""
    base = Path(payload["base"])
    if payload["files"] and not all((base / rel).is_file() for rel in payload["files"]):
        base = tmp / "spec"  # the spec's folder is not here: its files came with the task
        for rel, data in payload["files"].items():
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            (base / rel).write_bytes(data)
    return base


def _start_group(ctx: GroupContext, pending: list[Experiment],
                 ) -> tuple[threading.Thread, queue.Queue[tuple[str, Any]]]:
    """``run_group`` on a thread of its own; what it says comes through the queue: ("log",
    text), ("done", outcome), then ("end", None) or ("error", (text, traceback))."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue()

    def body() -> None:
        try:
            run_group(ctx, pending, log=lambda m: q.put(("log", str(m))),
                      on_done=lambda o: q.put(("done", o)))
            q.put(("end", None))
        except BaseException as e:
            q.put(("error", (f"{type(e).__name__}: {e}", traceback.format_exc())))

    t = threading.Thread(target=body, name=f"cotenant-{ctx.label}", daemon=True)
    t.start()
    return t, q


def _relay(q: queue.Queue[tuple[str, Any]], run_dir: Path,
           ) -> Generator[dict[str, Any], None, Any]:
    """The group thread's messages as stream items, each experiment with its files, until
    it ends; returns its error (text, traceback) or None."""
    while True:
        kind, x = q.get()
        if kind == "log":
            yield {"kind": "log", "text": x}
        elif kind == "done":
            yield {"kind": "experiment", "outcome": outcome_tuple(x),
                   "files": _collect(run_dir / x.experiment.id, run_dir)}
        else:
            return x if kind == "error" else None


def ray_group_task(payload: dict[str, Any], label: str, pending: list[Experiment],
                   old_logs: list[str]) -> Iterator[dict[str, Any]]:
    """A Ray task (streaming generator): run one group into a temporary run directory on
    this node, yield each experiment's files as it ends, then the server logs.

    ``old_logs`` names the group's log files already in the campaign's run directory (an
    earlier attempt or run): empty stand-ins here make the new ones numbered after them,
    as a local run numbers them, and are not sent back."""
    import ray

    ids = ray.get_gpu_ids()
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    spec = payload["spec"]
    tmp, run_dir = _task_dirs(spec.name, label, old_logs)
    guard = OrphanGuard(remove=[tmp]).start()
    t: threading.Thread | None = None
    try:
        ctx = GroupContext(spec, _task_base(payload, tmp), payload["mem"], None, run_dir, "ray",
                           label)
        ctx = pin_context(ctx, int(ids[0]) if ids else None)
        host = host_info()["hostname"]
        yield {"kind": "start", "host": host, "gpu": ctx.gpu, "root": str(run_dir),
               "pid": os.getpid()}
        t, q = _start_group(ctx, pending)
        error = yield from _relay(q, run_dir)
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

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "address": self.address}

    def run(self, ctx: GroupContext, jobs: list[GroupJob], *, log: LogFn, on_done: DoneFn,
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

    def _run(self, ray: Any, ctx: GroupContext, jobs: list[GroupJob], log: LogFn, on_done: DoneFn) -> None:
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

    def _step(self, ray: Any, ctx: GroupContext, t: _Task, log: LogFn, on_done: DoneFn) -> bool:
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
