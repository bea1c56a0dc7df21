"""Running capacity searches: each probe an experiment against the resident set, on the
same path as every other experiment (warm-up after each start, idle gate, telemetry,
manifest), decided as ``search`` says, recorded in ``probes.parquet`` and ``capacity.json``.

Order: every tenant alone first (``capacity.tenants``, and every member of a searched set),
then each set along each mix, whose rates come from those solo capacities. With
``residency: shared`` one resident set (every tenant) serves every search; with ``exact``
each search has its own.

Resume: a search is a function of its probes' results, so a resumed campaign replays each
search from the start and, where a probe's experiment is already on disk (completed or
failed), reads its result instead of running it again: finished probes are kept byte for
byte. A tenant that dies during a probe fails that attempt (a failed experiment, with the
reason); the resident set restarts and the probe is attempted again; two failed attempts
at one scale end that search (with the reason), not the campaign.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.campaign import Experiment, derived_seed
from orchestrator.capacity.search import (
    FAILED,
    PASS,
    REPEAT,
    Attempt,
    Bracket,
    TenantCount,
    TenantVerdict,
    failed_order,
    jsonable,
    judge_probe,
    knee_limits,
    mix_rates,
    ray_fractions,
    w_bracket,
)
from orchestrator.errors import CampaignError
from orchestrator.experiment import ExperimentOutcome
from orchestrator.group import (
    GroupContext,
    ServerStart,
    fail_unstarted,
    run_one,
    sharing,
    start_and_warm,
)
from orchestrator.residents import ResidentSet
from orchestrator.spec import CampaignSpec, searched_alone
from rundir.envelope import experiment_status, load_manifest
from rundir.ids import ExperimentId
from rundir.io import atomic_write_json, atomic_write_parquet
from rundir.schema import PROBE_SCHEMA, rows_to_frame
from servers.errors import ServerError

SET_START = 0.5  # a set's first probe: half the time-division line
SET_MIN = 1 / 32
MAX_FAILED_ATTEMPTS = 2  # failed attempts at one scale that end a search


@dataclass(frozen=True)
class SearchPlan:
    """One search: a tenant alone, or a set along mix ``mix_index``."""

    key: str  # "a", "a+b", "a+b#1"
    kind: str  # solo | set
    tenants: tuple[str, ...]
    resident: tuple[str, ...]
    mix_index: int = 0
    fractions: tuple[float, ...] | None = None  # shares of the time-division line
    relative: tuple[tuple[str, float], ...] | None = None  # relative req/s (an explicit mix)


def plan_searches(spec: CampaignSpec) -> list[SearchPlan]:
    """The searches ``capacity`` asks for, alone ones first."""
    c = spec.capacity
    everyone = tuple(spec.tenant_names)
    exact = spec.experiment.residency == "exact"
    out = [SearchPlan(t, "solo", (t,), (t,) if exact else everyone)
           for t in searched_alone(spec)]
    for members in c.sets:
        tenants = tuple(sorted(members, key=spec.tenant_names.index))
        resident = tenants if exact else everyone
        rays = c.rays if len(tenants) == 2 or c.rays == 0 else 1
        mixes: list[tuple[tuple[float, ...] | None, tuple[tuple[str, float], ...] | None]] = [
            (tuple(ray_fractions(len(tenants), k, rays)), None) for k in range(rays)]
        mixes += [(None, tuple((t, float(m[t])) for t in tenants)) for m in c.mixes]
        for k, (fr, rel) in enumerate(mixes):
            key = "+".join(tenants) + (f"#{k}" if k else "")
            out.append(SearchPlan(key, "set", tenants, resident, k, fr, rel))
    return out


class CapacityRun:
    """Every search of ``spec.capacity`` in one run directory, one probe after another.
    ``on_probe(experiment_id)`` is called before each probe runs (campaign.json lists it);
    ``on_done(outcome)`` after each probe that ran; ``display``, if given, gets ``goal`` (the
    bracket as it narrows)."""

    def __init__(self, ctx: GroupContext, order_seed: int, *, log: Callable[[str], None],
                 on_probe: Callable[[str], None], on_done: Callable[[ExperimentOutcome], None],
                 display: Any = None, progress: Any = None) -> None:
        ctx = replace(ctx, label="capacity")  # its logs under logs/capacity/
        self.ctx, self.spec, self.order_seed = ctx, ctx.spec, order_seed
        self.log, self.on_probe, self.on_done = log, on_probe, on_done
        self.display, self.progress = display, progress
        self.rows: list[dict[str, Any]] = []
        self.result: dict[str, Any] = {
            "target_attainment": {t: s.attainment for t, s in self.spec.slo.items()},
            "tenants": {}, "sets": {}}
        self.base_rps: dict[str, float] = {}
        self.residents: ResidentSet | None = None
        self.resident: tuple[str, ...] | None = None
        self.server: ServerStart | None = None
        self.stack = ExitStack()  # the resident set's servers (and MPS daemon) while it runs
        self.spec_json = self.spec.model_dump(mode="json")  # what _read's one-probe RunDir needs

    def adopt(self, resident: tuple[str, ...], residents: ResidentSet, server: ServerStart,
              stack: ExitStack) -> None:
        """Take over a running, warm resident set (the campaign's last block's) and the stack
        that stops it: searches on that set start nothing."""
        self.stack.enter_context(stack)
        self.residents, self.resident, self.server = residents, tuple(resident), server

    # ---- the whole run ----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from workloads.build import offered_rate

        for t in searched_alone(self.spec):
            self.base_rps[t] = offered_rate(self.spec.workloads[t], 1.0, base_dir=self.ctx.base)
        with self.stack:
            for s in plan_searches(self.spec):
                self._one_search(s)
        return self.result

    def _ensure(self, resident: tuple[str, ...]) -> str | None:
        """The resident set ``resident`` running and warm (started on the first probe that
        needs it, so a resume whose probes are all on disk starts nothing); the reason it is
        not, else None."""
        if self.residents is not None and self.resident == resident:
            if self.server is not None:
                return None
            try:  # after a failure that may have left it unwell
                self.server = start_and_warm(self.ctx, self.residents, self.log, restart=True)
                return None
            except ServerError as e:
                return f"resident set could not be restarted: {e}"
        self.stack.close()
        self.residents, self.server, self.resident = None, None, resident
        spec = self.spec
        env_for = self.stack.enter_context(sharing(spec, self.ctx.run_dir, self.ctx.label))
        self.residents = ResidentSet([spec.tenant(n) for n in resident], self.ctx.mem,
                                     self.ctx.run_dir / "logs" / self.ctx.label,
                                     self.ctx.run_dir / ".cache", env_for=env_for,
                                     on_event=self.log)
        self.stack.callback(self.residents.stop)
        try:
            self.server = start_and_warm(self.ctx, self.residents, self.log)
        except Exception as e:  # ServerError quotes the log
            why = str(e) if isinstance(e, ServerError) else f"{type(e).__name__}: {e}"
            return f"resident set did not start: {why}"
        return None

    # ---- one search ---------------------------------------------------------------------------

    def _one_search(self, s: SearchPlan) -> None:
        c = self.spec.capacity
        mix = None
        if s.kind == "solo":
            t = s.tenants[0]
            base = self.base_rps[t]
            start = c.start_rps.get(t, base) / base
            lo_limit = c.min_rps[t] / base if t in c.min_rps else start / 16
            hi_limit = c.max_rps[t] / base if t in c.max_rps else start * 64
        else:
            mix, why = self._mix(s)
            if mix is None:
                self.result["sets"][s.key] = {"tenants": list(s.tenants), "mix_index": s.mix_index,
                                              "capacity_rps": None, "scale": None,
                                              "censored": "failed", "reason": why, "probes": 0}
                self.log(f"capacity {s.key}: not searched: {why}")
                self._write()
                return
            start, lo_limit, hi_limit = SET_START, SET_MIN, float(len(s.tenants))
        br = Bracket(start, c.step, c.tolerance, lo_limit, hi_limit, c.max_probes)
        knee: list[Attempt] = []
        knee_verdicts: dict[str, TenantVerdict] = {}
        ended: str | None = None
        while (scale := br.next()) is not None:
            self._say(s, br, scale)
            decision, attempts, verdicts = self._probe(s, scale, br.probes, mix)
            if decision == FAILED:
                ended = attempts[-1].reason if attempts else "the probe failed"
                break
            br.record(scale, decision == PASS)
            if decision != PASS and br.hi == scale:
                knee, knee_verdicts = attempts, verdicts
        self._finish(s, br, mix, knee, knee_verdicts, ended)

    def _mix(self, s: SearchPlan) -> tuple[dict[str, float] | None, str]:
        caps: dict[str, float] = {}
        for t in s.tenants:
            r = self.result["tenants"].get(t) or {}
            cap = r.get("capacity_rps")
            if not cap:
                return None, f"{t} has no capacity alone ({r.get('reason') or 'not measured'})"
            caps[t] = float(cap)
        rel = dict(s.relative) if s.relative is not None else None
        return mix_rates(s.tenants, caps, fractions=s.fractions, relative=rel), ""

    def _say(self, s: SearchPlan, br: Bracket, scale: float) -> None:
        unit = (lambda v: f"{v * self.base_rps[s.tenants[0]]:.3g} req/s") if s.kind == "solo" \
            else (lambda v: f"x{v:.3g}")
        lo = "?" if br.lo is None else unit(br.lo)
        hi = "?" if br.hi is None else unit(br.hi)
        line = (f"capacity {s.key}: bracket {lo} .. {hi}, probe {br.probes + 1} at "
                f"{unit(scale)}")
        if self.display is not None:
            self.display.goal = line
        self.log(line)

    # ---- one probe ------------------------------------------------------------------------------

    def _probe(self, s: SearchPlan, scale: float, index: int, mix: dict[str, float] | None
               ) -> tuple[str, list[Attempt], dict[str, TenantVerdict]]:
        c = self.spec.capacity
        targets = {t: self.spec.slo[t].attainment for t in s.tenants}
        rates = ({t: scale * self.base_rps[t] for t in s.tenants} if mix is None
                 else {t: scale * mix[t] for t in s.tenants})
        attempts: list[Attempt] = []
        decision = REPEAT
        verdicts: dict[str, TenantVerdict] = {}
        for attempt in range(c.max_attempts + MAX_FAILED_ATTEMPTS):
            exp = self._experiment(s, scale, attempt, index, rates)
            a = self._attempt(exp)
            attempts.append(a)
            failed = sum(x.status != "completed" for x in attempts)
            if a.status != "completed":
                self._rows(s, index, a, scale, rates, {}, FAILED, targets)
                if failed >= MAX_FAILED_ATTEMPTS:
                    return FAILED, attempts, {}
                continue
            decision, verdicts = judge_probe(attempts, s.tenants, targets, c.level, c.max_attempts,
                                             confirm=c.confirm_failures)
            self._rows(s, index, a, scale, rates, verdicts, decision, targets)
            if decision != REPEAT:
                break
        return decision, attempts, verdicts

    def _experiment(self, s: SearchPlan, scale: float, attempt: int, index: int,
                    rates: dict[str, float]) -> Experiment:
        eid = ExperimentId.of(s.tenants, s.resident, self.spec.tenant_names, scale, attempt,
                              ray=s.mix_index).format()
        c = self.spec.capacity
        x = self.spec.experiment
        longest = c.max_window_s or 8 * x.duration_s
        need = c.min_requests / max(min(rates.values()), 1e-9)
        window = min(max(x.duration_s, need), max(longest, x.duration_s))
        return Experiment(
            window_s=None if window == x.duration_s else float(f"{window:.4g}"),
            id=eid, resident=s.resident, active=s.tenants, repetition=attempt, rate_scale=scale,
            seed=derived_seed(self.order_seed, "probe", eid),
            prompt_seed=derived_seed(self.order_seed, "prompt", eid),
            order_seed=self.order_seed, rates=tuple(rates.items()),
            probe={"search": s.key, "kind": s.kind, "mix_index": s.mix_index, "scale": scale,
                   "rates": rates, "attempt": attempt, "index": index})

    def _attempt(self, exp: Experiment) -> Attempt:
        """The probe's result: read back where the experiment already finished (a resume),
        else run it (restarting the resident set after a failure that may have left it
        unwell)."""
        self.on_probe(exp.id)
        if experiment_status(self.ctx.run_dir / exp.id) in ("completed", "failed"):
            return self._read(exp)
        why = self._ensure(exp.resident)
        if why is not None:
            self.log(f"[red]capacity:[/] {why}")
            self.on_done(fail_unstarted(self.ctx, exp, why))
            return self._read(exp)
        assert self.residents is not None
        out = run_one(self.ctx, exp, self.residents, self.progress, self.server)
        self.on_done(out)
        if out.fatal:
            raise CampaignError(f"campaign stopped after {exp.id}: {out.fatal}. Probes completed "
                                "so far are kept; make room, then run again with --resume")
        if out.status == "failed" and out.restart:
            self.server = None  # restart before the next probe
        return self._read(exp)

    def _read(self, exp: Experiment) -> Attempt:
        """A finished probe's counts per tenant (the report's own definition of a request
        that met the SLO) and what binds in it."""
        from reports.aggregate import experiment_table
        from reports.limits import binding_limits
        from rundir.reader import ExperimentRecord, RunDir

        exp_dir = self.ctx.run_dir / exp.id
        m = load_manifest(exp_dir / "manifest.json")
        status = str(m.get("status"))
        if status != "completed" or not (exp_dir / "requests.parquet").is_file():
            return Attempt(exp.id, status if status != "completed" else "failed", {},
                           reason=m.get("reason") or "requests.parquet is missing")
        rec = ExperimentRecord(exp.id, exp_dir, m, "completed", None)
        run = RunDir(self.ctx.run_dir, {"spec": self.spec_json}, [rec])
        table, dev = experiment_table(run)
        device = dev.row(0, named=True) if dev.height else {}
        counts = {}
        for row in table.iter_rows(named=True):
            t = self.spec.tenant(row["tenant"])
            lim = binding_limits({**device, **row}, kind=t.kind,
                                 max_num_seqs=getattr(t, "max_num_seqs", None))
            counts[row["tenant"]] = TenantCount(int(row["requests"]), int(row["met"]), tuple(lim))
        return Attempt(exp.id, "completed", counts, early_stop=m.get("early_stop"))

    # ---- records ---------------------------------------------------------------------------------

    def _rows(self, s: SearchPlan, index: int, a: Attempt, scale: float, rates: dict[str, float],
              verdicts: dict[str, TenantVerdict], decision: str, targets: dict[str, float]) -> None:
        attempt = ExperimentId.parse(a.experiment_id).repetition
        for t in s.tenants:
            v = verdicts.get(t)
            c = a.counts.get(t)
            self.rows.append({
                "search": s.key, "kind": s.kind, "index": index, "attempt": attempt,
                "experiment_id": a.experiment_id, "status": a.status, "tenant": t,
                "scale": scale, "offered_rps": rates[t],
                "requests": v.requests if v else None, "met": v.met if v else None,
                "attainment": v.attainment if v else None,
                "ci_lo": v.ci[0] if v else None, "ci_hi": v.ci[1] if v else None,
                "target": targets[t], "decision": decision,
                "decided_by": v.decided_by if v and decision != REPEAT else "",
                "early_stop": bool(a.early_stop), "reason": a.early_stop or a.reason,
                "limits": ", ".join(c.limits) if c else "",
            })
        self._write()

    def _finish(self, s: SearchPlan, br: Bracket, mix: dict[str, float] | None,
                knee: list[Attempt], verdicts: dict[str, TenantVerdict], ended: str | None) -> None:
        scale, (lo, hi), censored, reason = br.outcome()
        if ended is not None:
            censored, reason = "failed", f"the search ended: {ended}"
        knee_id = knee[-1].experiment_id if knee else None
        if s.kind == "solo":
            t = s.tenants[0]
            base = self.base_rps[t]
            self.result["tenants"][t] = {
                "capacity_rps": scale * base, "bracket": [lo * base, None if hi is None else hi * base],
                "censored": censored, "reason": reason, "probes": br.probes,
                "binding": knee_limits(knee, t), "knee_experiment": knee_id,
                "workload_rps": base,
            }
            self.log(f"capacity {t}: {scale * base:.4g} req/s (bracket {lo * base:.4g} .. "
                     f"{'open' if hi is None else f'{hi * base:.4g}'})"
                     + (f"; {reason}" if reason else ""))
        else:
            assert mix is not None
            solo = {t: tuple(self.result["tenants"][t]["bracket"]) for t in s.tenants}
            w_lo, w_hi = w_bracket(mix, (lo, hi), solo)
            failing = failed_order(verdicts)
            self.result["sets"][s.key] = {
                "tenants": list(s.tenants), "mix_index": s.mix_index, "mix": mix,
                "scale": scale, "bracket": [lo, hi], "W": scale, "W_bracket": [w_lo, w_hi],
                "rates": {t: scale * r for t, r in mix.items()},
                "failed_first": failing[0] if failing else None, "failed": failing,
                "binding": {t: knee_limits(knee, t) for t in s.tenants},
                "probes": br.probes, "censored": censored, "reason": reason,
                "knee_experiment": knee_id,
            }
            self.log(f"capacity {s.key}: scale {scale:.3g}, W {scale:.3g} ({w_lo:.3g} .. "
                     f"{'open' if w_hi is None else f'{w_hi:.3g}'})"
                     + (f"; {reason}" if reason else ""))
        self._write()

    def _write(self) -> None:
        run_dir = self.ctx.run_dir
        atomic_write_parquet(run_dir / "probes.parquet", rows_to_frame(self.rows, PROBE_SCHEMA))
        atomic_write_json(run_dir / "capacity.json", jsonable(self.result))
