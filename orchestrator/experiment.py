"""One experiment: health check, traces, telemetry, warm-up + measurement window, drain, results.

A tenant that dies fails the experiment (with the reason and its log tail), and so does one
that hangs (it does not answer ``/health`` after the window: its requests end as ``timeout``
rows at their deadline or the drain deadline, which bound the experiment); Ctrl-C marks it
interrupted; in every case what was measured is on disk (requests.jsonl is appended as
requests finish and compacted into requests.parquet at the end). A trace that cannot be built
(a deleted file) fails the experiment before anything is sent. A result file that cannot be
written (requests.parquet, telemetry.parquet, server_metrics.parquet) fails it with a reason
that names the file; a full disk fails it with ``fatal`` set: the campaign stops rather than
fail every experiment after it.

The pieces, in order: the idle gate (``orchestrator.idle``: every resident tenant has nothing
running or waiting, and the GPU is near idle, under a deadline; an experiment that could not
start idle runs anyway and its manifest says so), ``prepare`` (traces, targets, the manifest's
workloads and tenants), ``measure`` (the replay over the window while the sampler and the scraper run) and ``record``
(their files, requests.parquet, the manifest's end).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from orchestrator.campaign import Experiment
from orchestrator.idle import idle_gate
from orchestrator.residents import ResidentSet
from orchestrator.spec import CampaignSpec
from rundir.io import atomic_write_text, salvage_requests

if TYPE_CHECKING:

    from orchestrator.telemetry.sampler import Sampler
    from orchestrator.telemetry.scrape import MetricsScraper
    from workloads.replayer import Api, Target

PREPARE_S = 1.0
HEALTH_TIMEOUT_S = 5.0  # a tenant that does not answer /health within this is hung


@dataclass
class ExperimentOutcome:
    experiment: Experiment
    status: str  # completed | failed | interrupted
    reason: str | None
    requests: int
    errors: int
    restart: bool = True  # a failure that may have left the servers unwell: restart them
    fatal: str | None = None  # the campaign cannot go on (a full disk): why


def disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


class SetupFailed(Exception):
    """The experiment could not be prepared (its trace, its workload): nothing was sent, the
    servers are fine."""


def default_api(kind: str) -> Api:
    return "embeddings" if kind == "encoder" else "completions"


def tenant_scale(spec: CampaignSpec, base: Path, exp: Experiment, name: str) -> float:
    """The multiplier of ``name``'s workload rate in ``exp``: its rate scale, or for a
    capacity probe the probe's rate over the workload's own."""
    if exp.rates is None:
        return exp.rate_scale
    from workloads.build import offered_rate

    own = offered_rate(spec.workloads[name], 1.0, base_dir=base)
    if own <= 0:
        raise SetupFailed(f"workloads.{name}: offers no rate to scale to a probe's")
    return exp.rate_of(name, own) / own


def build_traces(spec: CampaignSpec, base: Path, exp: Experiment) -> dict[str, pl.DataFrame]:
    from workloads.build import build_trace

    x = spec.experiment
    out = {}
    for name in exp.active:
        t = spec.tenant(name)
        w = spec.workloads[name]
        out[name] = build_trace(
            w,
            tenant=name,
            kind="embedding" if t.kind == "encoder" else "completion",
            duration_s=x.warmup_s + exp.duration_s(spec),
            seed=exp.tenant_seed(name),
            rate_scale=tenant_scale(spec, base, exp, name),
            base_dir=base,
        )
    return out


class TenantDied(Exception):
    def __init__(self, dead: dict[str, str]) -> None:
        self.dead = dead
        super().__init__("; ".join(dead.values()))


class TenantHung(TenantDied):
    """Alive but not answering (stopped, deadlocked): failed like a dead one, then restarted."""


async def _watch(residents: ResidentSet, stop: asyncio.Event, interval: float = 0.25) -> None:
    while not stop.is_set():
        dead = residents.dead()
        if dead:
            stop.set()
            raise TenantDied(dead)
        await asyncio.sleep(interval)


def run_experiment(
    spec: CampaignSpec,
    base: Path,
    exp: Experiment,
    residents: ResidentSet,
    run_dir: Path,
    manifest: Any,
    progress: Any = None,
) -> ExperimentOutcome:
    """Run one experiment against running residents. The caller owns the manifest's creation."""
    from workloads.clock import ExperimentClock

    exp_dir = run_dir / exp.id
    _start_clean(exp_dir)
    _check(residents)
    manifest.update(idle_gate=idle_gate(spec, residents).to_dict())
    trace, targets = prepare(spec, base, exp, residents, manifest)
    # zero a little ahead: prompts for the first seconds are prepared before it, so the first
    # request is due at zero and scheduled_s equals the trace's arrival_s
    clock = ExperimentClock(delay_s=PREPARE_S)
    manifest.update(anchor_wall_s=clock.anchor_wall_s)
    sampler, scraper = _instruments(spec, exp, residents, clock)
    end = Ending()
    if sampler:
        sampler.start()
    if scraper:
        scraper.start()
    try:
        measure(spec, exp, residents, trace, targets, clock, exp_dir / "requests.jsonl",
                manifest, progress, judge=hopeless_probe(spec, exp))
    except TenantDied as e:
        end.status, end.reason = "failed", str(e)
        end.log_tail = residents.log_tails(list(e.dead))
    except KeyboardInterrupt:
        end.status, end.reason = "interrupted", "interrupted by the user (SIGINT/SIGTERM)"
        raise
    except Exception as e:  # a broken experiment fails alone; the campaign goes on
        end.status, end.reason = "failed", f"{type(e).__name__}: {e}"
        if disk_full(e):
            end.fatal = end.reason = f"disk full: {e}"
        with contextlib.suppress(OSError):
            atomic_write_text(exp_dir / "error.txt", traceback.format_exc())
    finally:
        outcome = record(exp, exp_dir, manifest, sampler, scraper, end)
    return outcome


def _start_clean(exp_dir: Path) -> None:
    exp_dir.mkdir(parents=True, exist_ok=True)
    # a rerun (resume of a failed/interrupted one) starts clean: no row or sample of the
    # earlier attempt may pass for this one's (a write this attempt skips would leave it)
    for name in ("requests.jsonl", "requests.parquet", "telemetry.parquet",
                 "server_metrics.parquet", "error.txt"):
        with contextlib.suppress(FileNotFoundError):
            (exp_dir / name).unlink()


def _check(residents: ResidentSet) -> None:
    """Raise TenantDied for a tenant that is gone, TenantHung for one that does not answer."""
    dead = residents.dead()
    if dead:
        raise TenantDied(dead)
    hung = residents.unresponsive(HEALTH_TIMEOUT_S)
    if hung:
        raise TenantHung(hung)


def prepare(spec: CampaignSpec, base: Path, exp: Experiment, residents: ResidentSet,
            manifest: Any) -> tuple[pl.DataFrame, list[Target]]:
    """The merged trace of the active tenants and their targets; the manifest gets the
    workloads (with requests scheduled and offered rate) and the tenants. Raises SetupFailed
    when a workload cannot be built (nothing is sent then)."""
    from workloads.build import offered_rate

    try:
        traces = build_traces(spec, base, exp)
        offered = {
            n: offered_rate(spec.workloads[n], tenant_scale(spec, base, exp, n), base_dir=base)
            for n in exp.active
        }
    except Exception as e:  # a trace file gone or broken: nothing sent, the servers are fine
        raise SetupFailed(f"cannot build the workload: {type(e).__name__}: {e}") from e
    trace = pl.concat(list(traces.values()), how="diagonal_relaxed").sort("arrival_s")
    targets = [target_for(spec, residents, name, judged=exp.probe is not None)
               for name in exp.active]
    manifest.update(
        workloads={
            n: {
                **spec.workloads[n].model_dump(mode="json"),
                "requests_scheduled": int(traces[n].height),
                "offered_rate": offered[n],
            }
            for n in exp.active
        },
        tenants={
            n: {**d, "active": n in exp.active} for n, d in residents.describe().items()
        },
    )
    return trace, targets


def target_for(spec: CampaignSpec, residents: ResidentSet, name: str,
               judged: bool = False) -> Target:
    """The replayer's target for running tenant ``name`` with its workload's API settings;
    ``judged`` (a capacity probe): with its SLO bounds, so the replay counts certain misses."""
    from workloads.replayer import SloBounds, Target

    t = spec.tenant(name)
    r = residents.running[name]
    w = spec.workloads[name]
    slo = spec.slo.get(name)
    bounds = None
    if judged and slo is not None:
        bounds = SloBounds(*(None if v is None else v / 1e3
                             for v in (slo.ttft_ms, slo.tpot_ms, slo.e2e_ms)))
    return Target(
        tenant=name,
        base_url=r.base_url,
        api=w.api or default_api(t.kind),
        model=r.served_name,
        tokenizer_path=r.resolved.tokenizer_path,
        api_key=r.api_key,
        timeout_s=w.timeout_s,
        prefix=w.prefix,
        slo=bounds,
    )


def hopeless_probe(spec: CampaignSpec, exp: Experiment) -> Callable[[Any], str | None] | None:
    """For a capacity probe (with ``capacity.early_stop``): a judge of the replay's progress
    snapshots that says why the probe can no longer pass (a tenant's certain misses exceed
    what its attainment target allows of its window's requests), else None. The probe then
    stops at once: what was not sent is dropped, which counts as missed, so the attainment
    the rows give is below the target too."""
    if exp.probe is None or not spec.capacity.early_stop:
        return None
    targets = {n: s.attainment for n, s in spec.slo.items() if n in exp.active}

    def judge(snap: Any) -> str | None:
        for t in snap.tenants:
            target = targets.get(t.tenant)
            if target is None or t.window <= 0:
                continue
            if t.missed > (1.0 - target) * t.window:
                best = (t.window - t.missed) / t.window
                return (f"{t.tenant}: {t.missed} of its {t.window} window requests already "
                        f"missed the SLO, so its attainment is at most {best:.3f} < {target:g}")
        return None

    return judge


def _instruments(spec: CampaignSpec, exp: Experiment, residents: ResidentSet,
                 clock: Any) -> tuple[Sampler | None, MetricsScraper | None]:
    """The sampler (telemetry.parquet) and the /metrics scraper (server_metrics.parquet), or
    None, None when the spec turns telemetry off."""
    from orchestrator.telemetry.sampler import Sampler
    from orchestrator.telemetry.scrape import MetricsScraper

    if not spec.telemetry.enabled:
        return None, None
    pids = {n: r.process.pid for n, r in residents.running.items()}
    sampler = Sampler(
        clock,
        pids,
        interval_s=spec.telemetry.interval_s,
        process_interval_s=spec.telemetry.process_interval_s,
        gpu_index=spec.gpu.index,
        gpm=spec.telemetry.gpm,
        experiment_id=exp.id,
    )
    scraper = MetricsScraper(
        clock,
        {n: r.base_url for n, r in residents.running.items()},
        interval_s=spec.telemetry.scrape_interval_s,
        experiment_id=exp.id,
    )
    return sampler, scraper


class _Judged:
    """The replay's progress, passed on, and judged: the first snapshot the judge finds
    hopeless stops the replay (``stop``) and keeps the judge's reason."""

    def __init__(self, inner: Any, judge: Callable[[Any], str | None], stop: asyncio.Event
                 ) -> None:
        self.inner, self.judge, self.stop_event = inner, judge, stop
        self.reason: str | None = None

    def start(self, total: int) -> None:
        if self.inner is not None:
            self.inner.start(total)

    def update(self, snap: Any) -> None:
        if self.inner is not None:
            self.inner.update(snap)
        if self.reason is None and not self.stop_event.is_set():
            self.reason = self.judge(snap)
            if self.reason is not None:
                self.stop_event.set()

    def stop(self) -> None:
        if self.inner is not None:
            self.inner.stop()


def measure(spec: CampaignSpec, exp: Experiment, residents: ResidentSet, trace: pl.DataFrame,
            targets: list[Target], clock: Any, jsonl: Path, manifest: Any,
            progress: Any = None, judge: Callable[[Any], str | None] | None = None) -> None:
    """Replay the trace (warm-up, window, drain) while watching the tenants, appending rows to
    ``jsonl``; the manifest gets the replay's summary (and ``early_stop``: why ``judge``
    stopped it, or null). Raises TenantDied for a tenant that died meanwhile, TenantHung for
    one that no longer answers (its requests timed out)."""
    from workloads.replayer import replay, run_loop

    x = spec.experiment
    judged: _Judged | None = None

    async def _run() -> Any:
        nonlocal judged, progress
        stop = asyncio.Event()
        if judge is not None:
            judged = _Judged(progress, judge, stop)
            progress = judged
        watch = asyncio.create_task(_watch(residents, stop))
        try:
            summary = await replay(
                trace,
                targets,
                clock=clock,
                experiment_id=exp.id,
                out_jsonl=jsonl,
                warmup_s=x.warmup_s,
                window_s=exp.duration_s(spec),
                drain_s=x.drain_s,
                prompt_seed=exp.prompt_seed,
                max_concurrency={
                    n: c for n in exp.active if (c := spec.workloads[n].max_concurrency)
                }
                or None,
                progress=progress,
                stop=stop,
            )
        finally:
            stop.set()
            if watch.done():
                watch.result()  # raises TenantDied when a tenant died
            else:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
        return summary

    summary = run_loop(_run())  # the event loop `cotenant replay` uses too
    manifest.update(trace_start_s=summary.start_s, replay={
        "dispatch_lag_p50_s": summary.dispatch_lag_p50_s,
        "dispatch_lag_p99_s": summary.dispatch_lag_p99_s,
        "dispatch_lag_max_s": summary.dispatch_lag_max_s,
        "sent": summary.sent, "ok": summary.ok, "errors": summary.errors,
        "timeouts": summary.timeouts, "dropped": summary.dropped,
    })
    if judge is not None:
        manifest.update(early_stop=judged.reason if judged is not None else None)
    # a tenant that hung: its requests timed out (rows with status timeout); restart it
    _check(residents)


@dataclass
class Ending:
    """How the experiment ended, as the manifest's finish will say."""

    status: str = "completed"
    reason: str | None = None
    fatal: str | None = None  # a full disk: the campaign cannot go on
    log_tail: dict[str, str] | None = None

    def not_written(self, name: str, e: BaseException) -> None:
        """Result file ``name`` could not be written (``e``): the experiment did not complete,
        and the reason says so; a full disk is fatal."""
        detail = str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
        why = f"{name} not written: {detail}"
        if disk_full(e):
            self.fatal = self.fatal or f"disk full: {e}"
        self.reason = f"{self.reason}; {why}" if self.reason else why
        if self.status == "completed":
            self.status = "failed"


def record(exp: Experiment, exp_dir: Path, manifest: Any, sampler: Sampler | None,
           scraper: MetricsScraper | None, end: Ending) -> ExperimentOutcome:
    """Stop the instruments, write their files and requests.parquet, finish the manifest.
    A file that cannot be written leaves the reason in the manifest (``Ending.not_written``)."""
    for name, instrument in (("server_metrics.parquet", scraper), ("telemetry.parquet", sampler)):
        if instrument is None:
            continue
        try:
            instrument.stop()
            instrument.write(exp_dir / name)
        except Exception as e:  # measured without it; the manifest says why it is missing
            end.not_written(name, e)
    df, not_written = salvage_requests(exp_dir)
    if not_written is not None:  # written whole or not at all: nothing half-written is left
        end.not_written("requests.parquet", not_written)
    counts = (
        df.group_by("tenant").agg(pl.len().alias("n")).to_dicts() if df.height else []
    )
    extra = {"log_tail": end.log_tail} if end.log_tail is not None else {}
    manifest.finish(end.status, end.reason, counts={c["tenant"]: c["n"] for c in counts}, **extra)
    errors = int(df.filter(pl.col("status") != "ok").height) if df.height else 0
    return ExperimentOutcome(exp, end.status, end.reason, df.height, errors, fatal=end.fatal)

