"""The campaign loop: plan memory, start each resident set once, run its experiments, record
everything, survive crashed tenants, stop every server on the way out, build the report.

The loop is handed its executor (``executors``: who runs each resident group, and where); the
group loop below it is ``group.run_group``.
"""

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

from orchestrator.campaign import CampaignPlan, plan_campaign
from orchestrator.device import make_memory_plan
from orchestrator.errors import CampaignError
from orchestrator.executors.base import Executor, GroupJob
from orchestrator.executors.factory import make_executor
from orchestrator.experiment import ExperimentOutcome
from orchestrator.group import GroupContext
from orchestrator.planner import MemoryPlan
from orchestrator.spec import CampaignSpec
from rundir.envelope import (
    experiment_status,
    host_info,
    mask_secrets,
    read_campaign,
    utc_now,
    versions,
    write_campaign,
)


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
    executor: Executor | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    report: bool = True,
) -> CampaignResult:
    """Run ``spec``'s campaign into ``out_root/<name>/`` and build its report. ``executor``
    runs the resident groups (``executors.factory.make_executor`` builds the one ``cotenant
    run`` asks for); without one, the groups run one after another in this process."""
    console = console or Console(stderr=True)
    t0 = time.monotonic()
    ex = executor if executor is not None else make_executor()
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
        **ex.describe(),  # executor, gpus, address, retries
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
    ex: Executor,
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

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


def _say(console: Console, out: ExperimentOutcome) -> None:
    colour = {"completed": "green", "failed": "red", "interrupted": "yellow"}[out.status]
    msg = f"[{colour}]{out.status}[/] {out.experiment.id}: {out.requests} requests, {out.errors} not ok"
    if out.reason:
        msg += f" ({out.reason})"
    console.log(msg)
