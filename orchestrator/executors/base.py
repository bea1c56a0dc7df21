"""What every executor shares: the job (one resident group's pending experiments), the
protocol, and the books of retries and final outcomes (``_Base``); a failed experiment's
manifest after its worker died (``record_failed``); a group pinned to a GPU (``pin_context``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from orchestrator.campaign import Experiment
from orchestrator.device import detect_gpu, make_memory_plan
from orchestrator.errors import OrchestratorError
from orchestrator.experiment import ExperimentOutcome
from orchestrator.group import GroupContext, manifest_for

LogFn = Callable[[str], None]
DoneFn = Callable[[ExperimentOutcome], None]
ProgressFn = Callable[[str, str, Any], None]  # (group label, experiment id, snapshot | None)
GroupFn = Callable[..., Any]  # group.run_group's signature

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

    def describe(self) -> dict[str, Any]:
        """What campaign.json records of it: executor (its name), gpus, address, retries."""
        ...

    def run(self, ctx: GroupContext, jobs: list[GroupJob], *, log: LogFn, on_done: DoneFn,
            progress: ProgressFn | None = None) -> None:
        """Run every job; call ``on_done`` once per experiment with its final outcome, and
        ``progress(label, experiment_id, snapshot or None)`` while experiments replay (where
        the executor can: in-process and local workers; Ray tasks log only)."""
        ...


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise OrchestratorError(
            f"--executor ray needs Ray, an optional extra: {RAY_INSTALL_HINT}"
        ) from None
    return ray


# ---- shared pieces ---------------------------------------------------------------------


def pin_context(ctx: GroupContext, index: int | None) -> GroupContext:
    """The GroupContext for a group pinned to GPU ``index`` (None: no GPU): its GPU facts,
    the spec's GPU index for the sampler (NVML ignores CUDA_VISIBLE_DEVICES), and a memory
    plan for that device when it differs from the one the driver planned for."""
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


def record_failed(ctx: GroupContext, exp: Experiment, reason: str, *, host: str | None = None,
                  fresh: bool = False) -> ExperimentOutcome:
    """Mark ``exp`` failed in ``ctx.run_dir`` after its worker died. A worker that wrote into
    the run directory itself (local) may have left a manifest: at ``running`` it keeps what
    it said and becomes ``failed``; at ``completed`` it stands (the worker died after
    writing it). Otherwise (or with ``fresh``: a Ray task, whose files never arrived) a new
    manifest is written."""
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
        m = manifest_for(ctx, exp)
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

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "gpus": None, "address": None, "retries": self.retries}

    def _report(self, job: GroupJob, out: ExperimentOutcome, held: list[Experiment],
                log: LogFn, on_done: DoneFn) -> None:
        if out.status == "failed" and job.attempt < self.retries:
            held.append(out.experiment)
            log(f"[yellow]failed[/] {out.experiment.id} ({out.reason}); "
                f"retry {job.attempt + 1} of {self.retries} comes later")
            return
        on_done(out)

    def _end(self, ctx: GroupContext, job: GroupJob, reported: set[str], held: list[Experiment],
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
