"""The campaign loop: plan memory, start each resident set once, run its experiments, record
everything, survive crashed tenants, stop every server on the way out, build the report.

The loop is handed its executor (``executors``: who runs each resident group, and where); the
group loop below it is ``group.run_group``. campaign.json records the order seed and the
server lifetimes (``restarts``) as resolved, so that ``--resume`` replans the same plan.
With ``experiment.precision``, after the planned blocks the loop computes each co-located
tenant's paired interval (``reports.precision``) and adds blocks until every half-width is
at most the target or ``max_repetitions`` is reached; the live display shows the widest
interval left, and ``--resume`` picks the goal up where a campaign stopped.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from orchestrator.campaign import (
    CampaignPlan,
    plan_campaign,
    planned_blocks,
    resolve_order_seed,
    resolve_restarts,
)
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
from rundir.io import sweep_temporaries


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
    if existing:  # a run killed mid-write (SIGKILL) left the temporary file of that write
        sweep_temporaries(run_dir)
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
    seed: int | None = None,
) -> CampaignResult:
    """Run ``spec``'s campaign into ``out_root/<name>/`` and build its report. ``executor``
    runs the resident groups (``executors.factory.make_executor`` builds the one ``cotenant
    run`` asks for); without one, the groups run one after another in this process. ``seed``
    (``--seed``) fixes the order seed; a resume reuses the one campaign.json recorded."""
    console = console or Console(stderr=True)
    t0 = time.monotonic()
    ex = executor if executor is not None else make_executor()
    mem, gpu = make_memory_plan(spec)
    run_dir = prepare_run_dir(out_root, spec, resume=resume, overwrite=overwrite)
    prior = read_campaign(run_dir) or {}
    plan = _plan(spec, seed, prior, gpu=mem.backend == "cuda")
    campaign_data = {
        "name": spec.name,
        "spec": spec.model_dump(mode="json"),
        "versions": versions(),
        "host": host_info(),
        "gpu": gpu,
        "backend": mem.backend,
        "plan": mem.to_dict(),
        "experiments": [e.id for e in plan.experiments],
        "order_seed": plan.order_seed,
        "restarts": plan.restarts,
        "precision": prior.get("precision"),
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
            loop = _Loop(spec, base, plan, mem, gpu, run_dir, console, result, ex, campaign_data)
            loop.run(resume)
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


def _plan(spec: CampaignSpec, seed: int | None, prior: dict[str, Any], *, gpu: bool,
          ) -> CampaignPlan:
    """The campaign's plan: a resume replans what campaign.json recorded (its order seed, its
    server lifetimes and the blocks it had added for precision), so it is the same plan."""
    recorded = prior.get("order_seed")
    if recorded is not None and seed is not None and int(seed) != int(recorded):
        raise CampaignError(
            f"this campaign's order seed is {recorded} (campaign.json); --resume reuses it: "
            f"drop --seed {seed}, or start afresh with --overwrite"
        )
    order_seed = resolve_order_seed(spec, seed, recorded)
    restarts = prior.get("restarts") or resolve_restarts(spec, gpu)
    blocks = planned_blocks(list(prior.get("experiments") or [])) if prior else None
    return plan_campaign(spec, order_seed, restarts=int(restarts), blocks=blocks)


class _Loop:
    """The campaign's rounds on one live display: the planned blocks, then (with
    ``experiment.precision``) blocks added until the intervals are narrow enough."""

    def __init__(self, spec: CampaignSpec, base: Path, plan: CampaignPlan, mem: MemoryPlan,
                 gpu: dict[str, Any] | None, run_dir: Path, console: Console,
                 result: CampaignResult, ex: Executor, campaign_data: dict[str, Any]) -> None:
        self.spec, self.plan, self.run_dir, self.console = spec, plan, run_dir, console
        self.result, self.ex, self.campaign_data = result, ex, campaign_data
        self.ctx = GroupContext(spec, base, mem, gpu, run_dir, ex.name, "")
        self.kept: tuple[Any, ...] | None = None  # the last group's servers, for the searches

    def run(self, resume: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        self.progress = _campaign_display()(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=self.console, transient=False,
        )
        with self.progress:
            total = len(self.plan.experiments)
            self.bar = self.progress.add_task(f"campaign {self.spec.name}", total=total)
            todo = [[e for e in g.experiments
                     if not (resume and experiment_status(self.run_dir / e.id) == "completed")]
                    for g in self.plan.groups]
            self.result.skipped = total - sum(len(t) for t in todo)
            self.progress.advance(self.bar, self.result.skipped)
            if self.result.skipped:
                self.console.print(f"resume: {self.result.skipped} of {total} experiments "
                                   "already completed, skipped")
            with contextlib.ExitStack() as leftover:
                leftover.callback(self._stop_kept)
                self.round(todo, handoff=self._keeps_servers())
                if self.spec.experiment.precision is not None:
                    self.precision()
                if "capacity" in self.spec.strategy:
                    self.capacity()

    def _keeps_servers(self) -> Any:
        """The handoff that keeps the last group's running servers for the capacity searches
        (one start less: on the H200 a start is 47-97 s), where that is safe: the searches'
        first resident set is that group's, nothing runs after it (one group, no precision
        rounds, no retries) and the group runs in this process (the serial executor)."""
        from orchestrator.capacity.run import plan_searches
        from orchestrator.executors.local import SerialExecutor

        groups = self.plan.groups
        if ("capacity" not in self.spec.strategy or len(groups) != 1
                or self.spec.experiment.precision is not None
                or not isinstance(self.ex, SerialExecutor) or self.ex.retries):
            return None
        searches = plan_searches(self.spec)
        if not searches or searches[0].resident != tuple(groups[0].resident):
            return None

        def keep(resident: tuple[str, ...], residents: Any, server: Any, stack: Any) -> bool:
            self._stop_kept()
            self.kept = (resident, residents, server, stack)
            return True

        return keep

    def _stop_kept(self) -> None:
        if self.kept is not None:
            kept, self.kept = self.kept, None
            kept[3].close()

    def round(self, todo: list[list[Any]], handoff: Any = None) -> int:
        """Run each group's ``todo`` (one list a plan group); returns how many completed.
        ``handoff``: ``GroupContext.handoff`` for this round."""
        completed = 0

        def on_done(out: ExperimentOutcome) -> None:
            nonlocal completed
            self.result.outcomes.append(out)
            if out.status == "completed":
                completed += 1
                self.result.window_s += self.spec.experiment.warmup_s + self.spec.experiment.duration_s
            self.progress.advance(self.bar)
            _say(self.progress.console, out)

        jobs = [GroupJob(f"g{i}", pending) for i, pending in enumerate(todo) if pending]
        ctx = replace(self.ctx, handoff=handoff)
        self.ex.run(ctx, jobs, log=self.progress.console.log, on_done=on_done,
                    progress=self.progress.feed)
        return completed

    def precision(self) -> None:
        """Add blocks until every co-located tenant's primary figure has a paired log-ratio
        interval no wider than the target, or ``max_repetitions``; campaign.json records
        ``precision: {target, reached, widest, repetitions}`` after each look."""
        from reports.precision import paired_half_widths

        goal = self.spec.experiment.precision
        assert goal is not None
        while True:
            widths = paired_half_widths(self.run_dir)
            rec = precision_record(widths, goal.half_width, self.plan.blocks)
            self.progress.goal = _goal_line(rec)
            self.campaign_data["precision"] = rec
            write_campaign(self.run_dir, self.campaign_data)
            if rec["reached"] or self.plan.blocks >= goal.max_repetitions:
                self.progress.console.log(_goal_line(rec))
                return
            more = blocks_to_add(widths, goal.half_width, self.plan.blocks, goal.max_repetitions)
            new = {e.id for e in self.plan.extend(more)}
            self.progress.console.log(f"{_goal_line(rec)}: adding {more} block(s)")
            self.campaign_data["experiments"] = [e.id for e in self.plan.experiments]
            write_campaign(self.run_dir, self.campaign_data)
            self.progress.update(self.bar, total=len(self.plan.experiments))
            todo = [[e for e in g.experiments if e.id in new] for g in self.plan.groups]
            if self.round(todo) == 0:
                self.progress.console.log("[red]precision: no added experiment completed; "
                                          "stopping[/]")
                rec = precision_record(paired_half_widths(self.run_dir), goal.half_width,
                                       self.plan.blocks)
                self.campaign_data["precision"] = rec
                return


    def capacity(self) -> None:
        """The capacity searches (``orchestrator.capacity``), after the planned experiments:
        every probe listed in campaign.json as it starts, the bracket on the display."""
        from orchestrator.capacity.run import CapacityRun

        listed = self.campaign_data["experiments"]
        probes = self.progress.add_task("capacity probes", total=None)

        def on_probe(eid: str) -> None:
            if eid not in listed:
                listed.append(eid)
                write_campaign(self.run_dir, self.campaign_data)

        def on_done(out: ExperimentOutcome) -> None:
            self.result.outcomes.append(out)
            if out.status == "completed":
                x = self.spec.experiment
                self.result.window_s += x.warmup_s + out.experiment.duration_s(self.spec)
            self.progress.advance(probes)
            _say(self.progress.console, out)

        run = CapacityRun(self.ctx, self.plan.order_seed, log=self.progress.console.log,
                          on_probe=on_probe, on_done=on_done, display=self.progress,
                          progress=self.progress.feed)
        if self.kept is not None:
            kept, self.kept = self.kept, None
            run.adopt(*kept)
            self.progress.console.log("capacity: the searches go on with the last block's "
                                      f"servers (server lifetime {kept[2].lifetime})")
        run.run()
        self.progress.goal = None


def precision_record(widths: list[Any], target: float, blocks: int) -> dict[str, Any]:
    """campaign.json's ``precision``: the target, whether every half-width reached it, the
    widest cell ({group_id, tenant, figure, n, log_half_width}, null half-width: fewer than
    two pairs) and the repetitions planned."""
    widest = max(widths, key=lambda w: w.log_half_width, default=None)
    return {
        "target": target,
        "reached": all(w.log_half_width <= target for w in widths),
        "widest": widest.to_dict() if widest is not None else None,
        "repetitions": blocks,
    }


def blocks_to_add(widths: list[Any], target: float, blocks: int, cap: int) -> int:
    """How many blocks to add next: enough for the widest cell to reach ``target`` if its
    spread holds (half-width ~ 1/sqrt(n)), at least one, at most doubling what was run (the
    spread of few pairs is itself uncertain), never past ``cap`` repetitions."""
    need = 0
    for w in widths:
        if w.log_half_width <= target:
            continue
        if w.n < 2 or not math.isfinite(w.log_half_width):
            need = max(need, blocks + max(1, 2 - w.n))
        else:
            need = max(need, math.ceil(w.n * (w.log_half_width / target) ** 2) + (blocks - w.n))
    more = min(max(need - blocks, 1), max(blocks, 1))
    return max(0, min(more, cap - blocks))


def _goal_line(rec: dict[str, Any]) -> str:
    w = rec.get("widest")
    head = f"precision ±{rec['target']:g} (log), {rec['repetitions']} blocks"
    if w is None:
        return f"{head}: no co-located tenant to measure"
    hw = w["log_half_width"]
    width = "no interval yet" if hw is None else f"±{hw:.3f}"
    state = "reached" if rec["reached"] else "widest left"
    return f"{head}: {state} {width}: {w['tenant']} in {w['group_id']} ({w['figure']}, n={w['n']})"


def _campaign_display() -> Any:
    """rich's Progress (the campaign bar) plus, under it, the precision goal (the widest
    interval left and its cell) and what each running group is doing: its experiment, and
    per active tenant the completion rate, errors and p50 TTFT."""
    from rich.progress import Progress
    from rich.text import Text

    from workloads.progress import tenant_line

    class CampaignDisplay(Progress):
        def __init__(self, *columns: Any, **kw: Any) -> None:
            self.running: dict[str, tuple[str, Any]] = {}  # group label -> (experiment, snapshot)
            self.goal: str | None = None  # the precision goal: the widest interval left
            super().__init__(*columns, **kw)  # (renders once already)

        def feed(self, label: str, experiment_id: str, snap: Any) -> None:
            if snap is None:
                self.running.pop(label, None)
            else:
                self.running[label] = (experiment_id, snap)

        def get_renderables(self) -> Any:
            yield self.make_tasks_table(self.tasks)
            if self.goal:
                yield Text(f"  {self.goal}")
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
