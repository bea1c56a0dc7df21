"""Server warm-up: after every start and restart of a resident set, discarded requests with the
campaign's own shapes, round after round, until the servers' latency has settled.

The first requests after a server starts are slow (CUDA graphs, kernels autotuned, allocator
growth, the encoder's first batch shapes). Each resident tenant in turn gets rounds of
requests of the largest shapes its workload asks for (``round_shapes``):

* a decoder: a burst of ``max_num_seqs`` requests with the longest prompt and the longest
  output its workload asks (a fixed length, the high end of a uniform, the 99th percentile of
  a normal or lognormal, the largest of an empirical column or of a trace file's transformed
  lengths), within ``max_model_len``;
* the encoder: one request for each batch size and length bucket (powers of two up to the
  largest batch size, capped by the tenant's ``max_batch``, and up to the longest input the
  workload asks), sent one at a time so each is a batch of its own shape.

A round is sent with the real replayer into ``logs/<label>/warmup.<tenant>.<n>.jsonl`` (n:
the server start, as in the server's log name; kept as evidence). The warm-up has settled
when two consecutive rounds agree on p50 E2E latency within ``tolerance`` (``settled``); it
stops unsettled at ``deadline_s`` or ``max_rounds``, and the campaign goes on: the record
(``WarmupRecord``, in every manifest of the experiments run on that server start) says so.
``warm_up`` is a function of its own so that capacity searches can warm up the same way.
"""

from __future__ import annotations

import math
import statistics
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workloads.shapes import longest

if TYPE_CHECKING:

    from orchestrator.residents import ResidentSet
    from orchestrator.spec import CampaignSpec, WarmupSettings

MIN_ENCODER_LEN = 8  # the shortest encoder length bucket
CHAT_MARGIN = 64  # tokens a chat template may add to a prompt


def powers_up_to(top: int, start: int = 1) -> list[int]:
    """start, 2 start, 4 start, ... below ``top``, then ``top`` itself."""
    out, v = [], start
    while v < top:
        out.append(v)
        v *= 2
    return [*out, top]


@dataclass(frozen=True)
class Round:
    """One warm-up round of one tenant: its requests' shapes, and how many at once."""

    kind: str  # completion | embedding
    input_tokens: list[int]
    output_tokens: list[int]
    batch_size: list[int | None]
    max_concurrency: int | None  # None: all at once (a burst)

    @property
    def requests(self) -> int:
        return len(self.input_tokens)


def round_shapes(spec: CampaignSpec, base: Path, tenant: str) -> Round | None:
    """The requests of one warm-up round of ``tenant`` (the module doc says which), or None
    when it has no workload in the spec (it is never active: nothing to warm up for)."""
    w = spec.workloads.get(tenant)
    if w is None:
        return None
    t = spec.tenant(tenant)
    big = longest(w, base, tenant)
    if t.kind == "encoder":
        batches = powers_up_to(max(1, min(big.batch_size, t.max_batch)))
        lengths = powers_up_to(big.input_tokens, MIN_ENCODER_LEN) if big.input_tokens > \
            MIN_ENCODER_LEN else [big.input_tokens]
        cells = [(n, b) for b in batches for n in lengths]
        return Round("embedding", [n for n, _ in cells], [0] * len(cells),
                     [b for _, b in cells], 1)
    out = max(1, min(big.output_tokens, t.max_model_len - 1))
    room = t.max_model_len - out - (CHAT_MARGIN if w.api == "chat" else 0)
    inp = max(1, min(big.input_tokens, room))
    n = t.max_num_seqs
    return Round("completion", [inp] * n, [out] * n, [None] * n, None)


# ---- the settling rule ------------------------------------------------------------------------


def round_p50(latencies_s: list[float | None]) -> float | None:
    """p50 E2E of one round; a request that is not ok counts as infinitely slow, so a round
    where half or more failed has no finite p50 (None)."""
    if not latencies_s:
        return None
    xs = sorted(math.inf if v is None else v for v in latencies_s)
    m = statistics.median(xs)
    return m if math.isfinite(m) else None


def settled(p50s: list[float | None], tolerance: float) -> bool:
    """Whether the last two rounds agree: both finite and larger / smaller - 1 <= tolerance."""
    if len(p50s) < 2:
        return False
    a, b = p50s[-2], p50s[-1]
    if a is None or b is None or a <= 0 or b <= 0:
        return False
    return max(a, b) / min(a, b) - 1 <= tolerance + 1e-12


@dataclass
class WarmupRecord:
    """What one tenant's warm-up did (the manifest's ``warmup.<tenant>``)."""

    requests: int = 0
    errors: int = 0  # requests that were not ok
    seconds: float = 0.0
    rounds: int = 0
    p50_s: list[float | None] = field(default_factory=list)  # per round; null: half failed
    settled: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- sending rounds -------------------------------------------------------------------------


def warm_up(spec: CampaignSpec, base: Path, residents: ResidentSet, log_dir: Path,
            lifetime: int, *, log: Callable[[str], None] | None = None,
            tenants: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Warm every running tenant of ``residents`` (or ``tenants``) up, one after the other;
    {tenant: WarmupRecord as a dict}. Never raises for a tenant that fails its requests: the
    record says so (a dead tenant is the experiment's business)."""
    log = log or (lambda m: None)
    ws = spec.experiment.warmup
    out: dict[str, dict[str, Any]] = {}
    for name in tenants or list(residents.running):
        if not ws.enabled:
            out[name] = WarmupRecord(reason="disabled (experiment.warmup.enabled: false)").to_dict()
            continue
        try:
            shapes = round_shapes(spec, base, name)
            if shapes is None:
                out[name] = WarmupRecord(reason="no workload: never active").to_dict()
                continue
            jsonl = log_dir / f"warmup.{name}.{lifetime}.jsonl"
            rec = warm_up_tenant(spec, residents, name, shapes, ws, jsonl, lifetime)
        except Exception as e:  # a workload file gone, a replay error: the experiments say more
            rec = WarmupRecord(reason=f"not settled: {type(e).__name__}: {e}")
        log(f"warm-up {name}: {rec.rounds} rounds, {rec.requests} requests in {rec.seconds:.1f} s, "
            f"p50 {' '.join(_ms(p) for p in rec.p50_s)}: {rec.reason}")
        out[name] = rec.to_dict()
    return out


def _ms(p: float | None) -> str:
    return "-" if p is None else f"{p * 1e3:.0f}ms"


def warm_up_tenant(spec: CampaignSpec, residents: ResidentSet, name: str, shapes: Round,
                   ws: WarmupSettings, jsonl: Path, lifetime: int,
                   clock: Callable[[], float] = time.monotonic) -> WarmupRecord:
    """Rounds of ``shapes`` against tenant ``name`` until they settle, the deadline or
    ``max_rounds``."""
    from orchestrator.experiment import target_for

    target = target_for(spec, residents, name)
    rec = WarmupRecord()
    t0 = clock()
    while True:
        left = ws.deadline_s - (clock() - t0)
        if left <= 0:
            rec.reason = f"not settled: deadline {ws.deadline_s:g} s reached"
            break
        lat = send_round(target, shapes, jsonl, f"warmup-{lifetime}-{name}-r{rec.rounds}",
                         prompt_seed=zlib.crc32(f"{name}|{lifetime}|{rec.rounds}".encode()),
                         drain_s=left)
        rec.rounds += 1
        rec.requests += len(lat)
        rec.errors += sum(v is None for v in lat)
        rec.p50_s.append(round_p50(lat))
        if settled(rec.p50_s, ws.tolerance):
            rec.settled = True
            rec.reason = (f"settled: rounds {rec.rounds - 1} and {rec.rounds} agree within "
                          f"{ws.tolerance:.0%}")
            break
        if name in residents.dead():
            rec.reason = "not settled: the tenant died"
            break
        if rec.rounds >= ws.max_rounds:
            rec.reason = f"not settled: max_rounds {ws.max_rounds} reached"
            break
    rec.seconds = round(clock() - t0, 3)
    return rec


def send_round(target: Any, shapes: Round, jsonl: Path, round_id: str, *, prompt_seed: int,
               drain_s: float) -> list[float | None]:
    """Send one round with the real replayer, appending its rows to ``jsonl``; the E2E latency
    (done - sent) of each request, None for one that was not ok."""
    from rundir.io import read_jsonl_rows
    from workloads.clock import ExperimentClock
    from workloads.replayer import replay, run_loop
    from workloads.trace import make_trace

    n = shapes.requests
    trace = make_trace([0.0] * n, input_tokens=shapes.input_tokens,
                       output_tokens=shapes.output_tokens, tenant=target.tenant,
                       kind=shapes.kind,
                       batch_size=shapes.batch_size if shapes.kind == "embedding" else None)
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    cap = {target.tenant: shapes.max_concurrency} if shapes.max_concurrency else None
    run_loop(replay(trace, [target], clock=ExperimentClock(), experiment_id=round_id,
                    out_jsonl=jsonl, drain_s=drain_s, prompt_seed=prompt_seed,
                    max_concurrency=cap))
    out: list[float | None] = []
    for r in read_jsonl_rows(jsonl):
        if r.get("experiment_id") != round_id:
            continue
        ok = r.get("status") == "ok" and r.get("done_s") is not None and r.get("sent_s") is not None
        out.append(float(r["done_s"]) - float(r["sent_s"]) if ok else None)
    return out
