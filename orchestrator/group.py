"""The group loop: one resident set started (and warmed up), its pending experiments run
against it one after another, block by block, and its servers stopped, whichever executor
runs it (``executors``).

Every start and restart of the resident set is followed by a warm-up (``warmup.warm_up``),
recorded in the manifest of every experiment run on that server start with the start's
number (``server_lifetime``: the n of the servers' ``logs/<label>/<tenant>.<n>.log``). The
plan's chunks (``experiment.restarts``) restart the set between blocks, so that several
server lifetimes enter the interval.

A tenant that fails to start, dies or hangs, and a workload that cannot be built, become
failed experiments (the manifest says why, with the log's tail); a failure that may have left
the servers unwell restarts the resident set before the next experiment; a full disk stops
the campaign (``CampaignError``) after stopping the servers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.campaign import Experiment
from orchestrator.errors import CampaignError
from orchestrator.experiment import (
    ExperimentOutcome,
    SetupFailed,
    TenantDied,
    disk_full,
    run_experiment,
)
from orchestrator.planner import MemoryPlan
from orchestrator.residents import ResidentSet
from orchestrator.spec import CampaignSpec
from orchestrator.warmup import warm_up
from rundir.envelope import Manifest, experiment_status, host_info
from servers.errors import ServerError


@dataclass
class GroupContext:
    """What one resident group needs to run, whichever executor runs it."""

    spec: CampaignSpec
    base: Path
    mem: MemoryPlan
    gpu: dict[str, Any] | None
    run_dir: Path
    executor: str
    label: str  # unique per group in a campaign: keeps log files of parallel groups apart
    # offered the group's running servers when its last experiment is done: a receiver that
    # returns True owns them (and the stack that stops them), e.g. the campaign's capacity
    # searches, which then start nothing (``orchestrator.runner``)
    handoff: Callable[[tuple[str, ...], ResidentSet, ServerStart, ExitStack], bool] | None = None


def run_group(
    ctx: GroupContext,
    pending: list[Experiment],
    *,
    log: Any = None,
    on_done: Any = None,
    progress: Any = None,
) -> list[ExperimentOutcome]:
    """Start one resident set, run its pending experiments, stop it. Never raises for a
    tenant that fails to start, dies or hangs, nor for a workload that cannot be built: those
    become failed experiments; raises CampaignError when one says the campaign cannot go on
    (a full disk), after stopping the servers. ``progress``, if
    given, is called ``progress(label, experiment_id, snapshot)`` about twice a second while
    an experiment replays (a `workloads.progress.ProgressSnapshot`), and with ``None`` when it
    ends."""
    spec, run_dir = ctx.spec, ctx.run_dir
    log = log or (lambda m: None)
    on_done = on_done or (lambda out: None)
    outcomes: list[ExperimentOutcome] = []

    def done(out: ExperimentOutcome) -> None:
        outcomes.append(out)
        on_done(out)

    resident = pending[0].resident
    tenants = [spec.tenant(n) for n in resident]
    with ExitStack() as stack:
        env_for = stack.enter_context(sharing(spec, run_dir, ctx.label))
        residents = ResidentSet(tenants, ctx.mem, run_dir / "logs" / ctx.label, run_dir / ".cache",
                                env_for=env_for, on_event=log)
        stack.callback(residents.stop)
        try:
            server = start_and_warm(ctx, residents, log)
        except Exception as e:  # ServerError quotes the log; anything else: its type too
            why = str(e) if isinstance(e, ServerError) else f"{type(e).__name__}: {e}"
            for exp in pending:
                done(fail_unstarted(ctx, exp, f"resident set did not start: {why}"))
            return outcomes
        last = _run_pending(ctx, pending, residents, server, log, done, progress)
        if last is not None and ctx.handoff is not None and not residents.dead():
            held = stack.pop_all()
            if not ctx.handoff(resident, residents, last, held):
                held.close()
    return outcomes


@dataclass
class ServerStart:
    """One start of a resident set: its number and its warm-up (the manifests' keys)."""

    lifetime: int
    warmup: dict[str, dict[str, Any]]

    def manifest_keys(self) -> dict[str, Any]:
        return {"server_lifetime": self.lifetime, "warmup": self.warmup}


def server_lifetime(residents: ResidentSet) -> int:
    """The number of the resident set's latest start: the n of its servers' log files
    (``<tenant>.<n>.log``), which counts every start in the run directory, resumes included."""
    ns = []
    for rec in residents.starts[-max(1, len(residents.running)):]:
        with contextlib.suppress(ValueError, IndexError):
            ns.append(int(rec.log_path.name.rsplit(".", 2)[-2]))
    return max(ns, default=0)


def start_and_warm(ctx: GroupContext, residents: ResidentSet, log: Any,
                   restart: bool = False) -> ServerStart:
    """Start (or restart) the resident set, then warm every tenant up."""
    if restart:
        residents.restart()
    else:
        residents.start()
    lifetime = server_lifetime(residents)
    warm = warm_up(ctx.spec, ctx.base, residents, ctx.run_dir / "logs" / ctx.label, lifetime,
                   log=log)
    return ServerStart(lifetime, warm)


def _run_pending(ctx: GroupContext, pending: list[Experiment], residents: ResidentSet,
                 server: ServerStart, log: Any, done: Any, progress: Any) -> ServerStart | None:
    """The experiments one after another; the set restarts (and warms up again) where the
    plan's chunk changes and after a failure that may have left the servers unwell (once,
    when both fall together). Returns the last server start, None when a restart failed or
    the last experiment failed in a way that may have left the servers unwell."""
    chunk = pending[0].chunk
    restart_why: str | None = None
    for i, exp in enumerate(pending):
        if exp.chunk != chunk:
            chunk = exp.chunk
            restart_why = restart_why or "the next server lifetime"
        if restart_why:
            try:
                log(f"restarting the resident set: {restart_why}")
                server = start_and_warm(ctx, residents, log, restart=True)
            except ServerError as e:
                log(f"[red]restart failed:[/] {e}")
                for other in pending[i:]:
                    done(fail_unstarted(ctx, other, f"resident set could not be restarted: {e}"))
                return None
            restart_why = None
        out = run_one(ctx, exp, residents, progress, server)
        done(out)
        if out.fatal:  # e.g. a full disk: every experiment after would fail too
            raise CampaignError(
                f"campaign stopped after {exp.id}: {out.fatal}. Experiments completed "
                "so far are kept; make room, then run again with --resume"
            )
        if out.status == "failed" and out.restart:
            restart_why = "after a failure"
    return None if restart_why else server


def manifest_for(ctx: GroupContext, exp: Experiment, server: ServerStart | None = None
                 ) -> Manifest:
    """The manifest of ``exp`` in ``ctx``'s run directory, with the keys every experiment has
    (and, where it ran on a server start, that start's number and warm-up)."""
    spec, x = ctx.spec, ctx.spec.experiment
    return Manifest(
        ctx.run_dir / exp.id,
        {
            **exp.to_dict(),
            "campaign": spec.name,
            "warmup_s": x.warmup_s,
            "duration_s": exp.duration_s(spec),
            "drain_s": x.drain_s,
            "slo": {n: s.model_dump(mode="json") for n, s in spec.slo.items()},
            "sharing": spec.sharing.mode,
            "executor": ctx.executor,
            "host": host_info()["hostname"],
            "gpu": ctx.gpu,
            **(server.manifest_keys() if server else {}),
        },
    )


class _Feed:
    """The replayer's progress calls (start/update/stop) as ``feed(label, id, snapshot)``."""

    def __init__(self, feed: Any, label: str, experiment_id: str) -> None:
        self.feed, self.label, self.eid = feed, label, experiment_id

    def start(self, total: int) -> None:
        pass

    def update(self, snap: Any) -> None:
        self.feed(self.label, self.eid, snap)

    def stop(self) -> None:
        self.feed(self.label, self.eid, None)


def run_one(ctx: GroupContext, exp: Experiment, residents: ResidentSet,
         progress: Any = None, server: ServerStart | None = None) -> ExperimentOutcome:
    m = manifest_for(ctx, exp, server)
    feed = _Feed(progress, ctx.label, exp.id) if progress else None
    try:
        m.start()
        return run_experiment(ctx.spec, ctx.base, exp, residents, ctx.run_dir, m, progress=feed)
    except TenantDied as e:  # died (or hung) before the experiment began
        m.finish("failed", str(e), log_tail=residents.log_tails(list(e.dead)))
        return ExperimentOutcome(exp, "failed", str(e), 0, 0)
    except SetupFailed as e:  # e.g. its trace file is gone: nothing was sent
        m.finish("failed", str(e))
        return ExperimentOutcome(exp, "failed", str(e), 0, 0, restart=False)
    except KeyboardInterrupt:
        _mark_interrupted(m)
        raise
    except OSError as e:
        if not disk_full(e):
            raise
        reason = f"disk full: {e}"
        with contextlib.suppress(OSError):
            m.finish("failed", reason)
        return ExperimentOutcome(exp, "failed", reason, 0, 0, fatal=reason)


def _mark_interrupted(m: Manifest) -> None:
    """Ctrl-C (or SIGTERM) wherever it came in the experiment, even in the middle of writing
    its results: a manifest left at running says interrupted, and what was measured is
    compacted into requests.parquet if that was not written yet."""
    from rundir.io import salvage_requests

    exp_dir = m.path.parent
    if experiment_status(exp_dir) not in ("running", None):
        return  # it finished (completed, failed) before the interrupt
    with contextlib.suppress(Exception):
        salvage_requests(exp_dir, keep=True)
    with contextlib.suppress(OSError):
        m.finish("interrupted", "interrupted by the user (SIGINT/SIGTERM)")


def fail_unstarted(ctx: GroupContext, exp: Experiment, reason: str) -> ExperimentOutcome:
    m = manifest_for(ctx, exp)
    m.start()
    m.finish("failed", reason)  # the reason quotes the failing tenant's log
    return ExperimentOutcome(exp, "failed", reason, 0, 0)


@contextlib.contextmanager
def sharing(spec: CampaignSpec, run_dir: Path, label: str = "") -> Iterator[Any]:
    """time-slice: nothing to do. mps: an MPS daemon for the resident set's lifetime."""
    if spec.sharing.mode != "mps":
        yield lambda name: {}
        return
    from servers.mps import MpsDaemon

    pct = spec.sharing.mps_active_thread_percentage
    # one daemon per group: groups side by side on several GPUs must not share a pipe folder
    with MpsDaemon(run_dir / ".mps" / label / "pipe", run_dir / "logs" / "mps" / label) as mps:
        yield lambda name: mps.env_for(pct.get(name))
