"""The local executors: groups one after another in this process (``SerialExecutor``), or side
by side on this host, one per GPU, each in a spawned worker process (``LocalParallelExecutor``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator.campaign import Experiment
from orchestrator.device import detect_gpu
from orchestrator.errors import OrchestratorError
from orchestrator.executors.base import (
    DoneFn,
    GroupFn,
    GroupJob,
    LogFn,
    ProgressFn,
    _Base,
    outcome_tuple,
    pin_context,
)
from orchestrator.executors.guard import OrphanGuard
from orchestrator.experiment import ExperimentOutcome
from orchestrator.group import GroupContext, run_group


class SerialExecutor(_Base):
    """Groups one after another in this process, on the spec's GPU (today's behaviour)."""

    name = "local"

    def __init__(self, retries: int = 0, group_fn: GroupFn | None = None) -> None:
        super().__init__(retries)
        self.group_fn = group_fn

    def run(self, ctx: GroupContext, jobs: list[GroupJob], *, log: LogFn, on_done: DoneFn,
            progress: ProgressFn | None = None) -> None:
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


# ---- side by side on several GPUs --------------------------------------------------------


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


def _local_worker(slot: str, ctx: GroupContext, pending: list[Experiment], conn: Any,
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

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "gpus": list(self.slots)}

    def run(self, ctx: GroupContext, jobs: list[GroupJob], *, log: LogFn, on_done: DoneFn,
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
    return detect_gpu(int(slot)) if slot.isdigit() else None
