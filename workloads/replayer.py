"""The replayer: sends a trace's requests at their times and records one row each.

One process, one event loop, one ``httpx.AsyncClient`` a target (over
`workloads.transport.LeanTransport` for ``http://``). The schedule is absolute: request
``i`` is due at ``start_s + arrival_s[i]`` on the experiment clock; the dispatcher sleeps
until 0.2 ms before that, then yields to the loop until it is due (the loop's timers
have a resolution of about a millisecond; a longer busy wait cost more CPU and, on a
busy host, a worse tail, since the scheduler then treats the replayer as CPU-bound). Prompts and request bodies are prepared before
the start for the first seconds and then ahead of time while the dispatcher waits.

``sent_s - scheduled_s`` is the dispatch lag: client-side queueing (a concurrency cap,
a late loop) is kept apart from server latency. Every request becomes a row of
`rundir.schema.REQUEST_SCHEMA`, appended to ``requests.jsonl`` when it finishes:

- ``ok``: a complete answer; ``output_tokens`` from the server's usage;
- ``error``: an HTTP error status, a connection error, an error event in the stream;
- ``timeout``: past the target's per-request deadline, still in flight at the drain
  deadline, or in flight when a stop was asked (``error`` says which);
- ``dropped``: never sent, because a stop was asked.

While it runs, Python's cyclic garbage collector is frozen and paused (as vLLM's bench
does), because a full collection stops the loop for tens of milliseconds; it is
restored afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import signal
import statistics
import threading
import time
from collections import deque
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import numpy as np
import polars as pl

from rundir.io import JsonlAppender
from workloads.clock import ExperimentClock
from workloads.errors import ReplayError
from workloads.progress import Progress, ProgressSnapshot, QuietProgress, TenantSnapshot
from workloads.prompts import PromptSource
from workloads.spec import PrefixSpec
from workloads.sse import OpenAIStream
from workloads.trace import normalize_trace
from workloads.transport import LeanTransport, TimedStream

_T = TypeVar("_T")
Api = Literal["completions", "chat", "embeddings"]
_PATHS = {"completions": "/completions", "chat": "/chat/completions", "embeddings": "/embeddings"}
_ROW_KIND = {"completions": "completion", "chat": "chat", "embeddings": "embedding"}
SPIN_NS = 200_000  # the last 0.2 ms before a request is due: yield to the loop instead of sleeping
LOOKAHEAD_NS = 2_000_000_000  # prepare bodies this far ahead
PREP_SLACK_NS = 3_000_000  # prepare only when the next request is further away than this
MAX_SLEEP_S = 0.05  # how often a sleeping dispatcher looks at the stop event
PREWARM_MAX = 256  # connections opened ahead, a target


@dataclass(frozen=True)
class SloBounds:
    """A tenant's SLO bounds in seconds (None: not bounded), for the live count of certain
    misses (``TenantSnapshot.missed``): a window request that failed or missed a bound, or
    that is still out past its E2E bound (or past its TTFT bound without a first token).
    The report's attainment is computed from the rows (``reports.request_figures``) with the
    same definition."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    def met(self, ttft_s: float | None, tpot_s: float | None, e2e_s: float | None) -> bool:
        return all(v is None or b is None or v <= b for v, b in
                   ((ttft_s, self.ttft_s), (tpot_s, self.tpot_s), (e2e_s, self.e2e_s)))

    def overdue(self, age_s: float, first_token: bool) -> bool:
        if self.e2e_s is not None and age_s > self.e2e_s:
            return True
        return not first_token and self.ttft_s is not None and age_s > self.ttft_s


@dataclass(frozen=True)
class Target:
    """Where one tenant's requests go. ``base_url`` like ``http://127.0.0.1:8001`` (a
    trailing ``/v1`` is fine); ``model`` is the served model name."""

    tenant: str
    base_url: str
    api: Api
    model: str
    tokenizer_path: str | Path | None = None
    api_key: str | None = None
    timeout_s: float = 120.0
    prefix: PrefixSpec = PrefixSpec()
    slo: SloBounds | None = None  # counts certain misses live (the capacity search's early stop)

    def url(self) -> str:
        base = self.base_url.rstrip("/")
        if base.endswith("/v1"):
            base = base[:-3]
        return base + "/v1" + _PATHS[self.api]


@dataclass(frozen=True)
class ReplaySummary:
    experiment_id: str
    start_s: float  # experiment-clock time of the trace's zero
    scheduled: int
    sent: int
    ok: int
    errors: int
    timeouts: int
    dropped: int
    dispatch_lag_p50_s: float | None
    dispatch_lag_p99_s: float | None
    dispatch_lag_max_s: float | None
    wall_s: float
    stopped: bool
    out_jsonl: Path
    per_tenant: dict[str, dict[str, int]] = field(default_factory=dict)


# ---- plan ----------------------------------------------------------------------------------


class _TargetState:
    def __init__(self, target: Target, prompt_seed: int, cap: int | None, n: int) -> None:
        self.target = target
        self.url = target.url()
        self.prompts = PromptSource(
            target.tokenizer_path,
            prompt_seed=prompt_seed,
            tenant=target.tenant,
            prefix=target.prefix,
        )
        self.sem = asyncio.Semaphore(cap) if cap else None
        # identity: the stream is parsed as it comes, so no compressed bodies
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        if target.api_key:
            headers["authorization"] = f"Bearer {target.api_key}"
        self.cap = cap
        self.transport = (
            LeanTransport(max_keepalive=cap or max(64, min(n, 4096)))
            if self.url.startswith("http://")
            else None
        )
        limits = httpx.Limits(max_connections=cap, max_keepalive_connections=cap or 256)
        self.client = httpx.AsyncClient(
            transport=self.transport,
            limits=limits,
            headers=headers,
            timeout=httpx.Timeout(
                connect=min(30.0, target.timeout_s), read=None, write=None, pool=None
            ),
            follow_redirects=False,
        )
        self.kind = _ROW_KIND[target.api]
        self.chat = target.api == "chat"
        self.stream = target.api != "embeddings"
        # live figures for the progress display (cheap: appends; read twice a second)
        self.sent = self.done = self.errors = 0
        self.recent_done_ns: deque[int] = deque(maxlen=4096)
        self.recent_latency_ns: deque[int] = deque(maxlen=256)
        # with an SLO: window requests planned, finished ones that missed, and those out
        self.window = self.missed = 0
        self.live: dict[int, _Req] = {}

    def certain_misses(self, now_ns: int) -> int:
        """Window requests that cannot meet the SLO any more: finished misses, and those
        still out past their bound."""
        slo = self.target.slo
        if slo is None:
            return 0
        late = sum(1 for r in self.live.values()
                   if slo.overdue((now_ns - r.sent_ns) / 1e9, r.tok is not None and r.tok.first > 0))
        return self.missed + late

    def snapshot(self, now_ns: int, horizon_ns: int = 5_000_000_000) -> TenantSnapshot:
        recent = self.recent_done_ns
        while recent and now_ns - recent[0] > horizon_ns:
            recent.popleft()
        span = min(horizon_ns, now_ns - recent[0]) if recent else horizon_ns
        lat = self.recent_latency_ns
        return TenantSnapshot(
            tenant=self.target.tenant,
            kind=self.kind,
            sent=self.sent,
            done=self.done,
            errors=self.errors,
            rate_rps=len(recent) / max(span / 1e9, 1.0),
            p50_s=statistics.median(lat) / 1e9 if lat else None,
            window=self.window,
            missed=self.certain_misses(now_ns),
        )


class _Req:
    """One planned request (slots: there are many)."""

    __slots__ = (
        "rid", "arrival_s", "due_ns", "input_tokens", "output_tokens", "batch_size",
        "prompt", "request", "warmup", "in_window", "target", "sent_ns", "tok",
    )  # fmt: skip

    def __init__(self, rid: int, arrival_s: float, target: _TargetState) -> None:
        self.rid = rid
        self.arrival_s = arrival_s
        self.target = target
        self.due_ns = 0
        self.input_tokens = 0
        self.output_tokens: int | None = None
        self.batch_size: int | None = None
        self.prompt: str | None = None
        self.request: httpx.Request | None = None
        self.warmup = False
        self.in_window = False
        self.sent_ns = 0
        self.tok: _Tokens | None = None


def _latencies(sent: int, first: int, done: int, output_tokens: int | None,
               ) -> tuple[float | None, float | None, float | None]:
    """TTFT, TPOT and E2E of an ok request in seconds (``reports.request_figures``'s)."""
    ttft = (first - sent) / 1e9 if first else None
    tpot = ((done - first) / 1e9 / (output_tokens - 1)
            if first and output_tokens is not None and output_tokens > 1 else None)
    return ttft, tpot, (done - sent) / 1e9


def _body(r: _Req) -> bytes:
    ts = r.target
    t, p = ts.target, ts.prompts
    if t.api == "embeddings":
        # token-id lists when the tokenizer is known: exact lengths and no per-item text
        # calibration (at 100 requests/s of 16 items that calibration alone saturated the
        # client on the H100); base64 answers: a quarter of the bytes and nothing to parse
        items = r.batch_size or 1
        inputs: list[Any]
        if r.prompt is not None:
            inputs = [r.prompt] * items
        elif p.exact:
            inputs = [p.token_ids(r.input_tokens) for _ in range(items)]
        else:
            inputs = [p.text(r.input_tokens) for _ in range(items)]
        return json.dumps(
            {"model": t.model, "input": inputs, "encoding_format": "base64"},
            separators=(",", ":"),
        ).encode()
    body: dict[str, Any] = {"model": t.model}
    if t.api == "chat":
        content = r.prompt if r.prompt is not None else p.text(r.input_tokens)
        body["messages"] = [{"role": "user", "content": content}]
    elif r.prompt is not None:
        body["prompt"] = r.prompt
    elif p.exact:
        body["prompt"] = p.token_ids(r.input_tokens)
    else:
        body["prompt"] = p.text(r.input_tokens)
    out = r.output_tokens
    body.update(
        max_tokens=out,
        min_tokens=out,
        ignore_eos=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    return json.dumps(body, separators=(",", ":")).encode()


def _match_targets(
    trace: pl.DataFrame, targets: Sequence[Target] | Mapping[str, Target]
) -> dict[str, Target]:
    by_name: dict[str, Target] = {}
    for t in targets.values() if isinstance(targets, Mapping) else targets:
        if t.tenant in by_name:
            raise ReplayError(f"two targets for tenant {t.tenant!r}")
        if t.api not in _PATHS:
            raise ReplayError(f"target {t.tenant}: unknown api {t.api!r}")
        by_name[t.tenant] = t
    if not by_name:
        raise ReplayError("no targets")
    tenants = set(trace["tenant"].unique().to_list())
    if None in tenants and len(by_name) != 1:
        raise ReplayError(
            "the trace has requests without a tenant and there are several targets: "
            "assign tenants first (cotenant trace import --assign ...)"
        )
    missing = sorted(t for t in tenants if t is not None and t not in by_name)
    if missing:
        raise ReplayError(f"no target for tenant(s) {', '.join(missing)} of the trace")
    for name, t in by_name.items():
        rows = trace.filter(pl.col("tenant") == name) if len(by_name) > 1 else trace
        kinds = set(rows["kind"].unique().to_list())
        if t.api == "embeddings" and kinds - {"embedding"}:
            raise ReplayError(f"target {name} takes embeddings but the trace sends it completions")
        if t.api != "embeddings" and "embedding" in kinds:
            raise ReplayError(f"target {name} ({t.api}) cannot take the trace's embedding requests")
    return by_name


class _Tokens:
    """The token chunks of one streamed answer, and when each arrived (perf_counter_ns)."""

    __slots__ = ("stream", "first", "last", "gaps")

    def __init__(self, chat: bool) -> None:
        self.stream = OpenAIStream(chat=chat)
        self.first = 0
        self.last = 0
        self.gaps: list[int] = []

    def piece(self, data: bytes, ns: int) -> None:
        k = self.stream.feed(data)
        if k:
            self._arrived(k, ns)

    def end(self) -> None:
        k = self.stream.finish()
        if k:
            self._arrived(k, self.last or time.perf_counter_ns())

    def _arrived(self, k: int, ns: int) -> None:
        """``k`` token chunks in one read: one gap since the last read, then zeros."""
        if self.first:
            self.gaps.append(ns - self.last)
        else:
            self.first = ns
        if k > 1:
            self.gaps.extend([0] * (k - 1))
        self.last = ns


class _Replay:
    def __init__(
        self,
        trace: pl.DataFrame,
        targets: Sequence[Target] | Mapping[str, Target],
        *,
        clock: ExperimentClock,
        experiment_id: str,
        out: JsonlAppender,
        warmup_s: float,
        window_s: float,
        prompt_seed: int,
        max_concurrency: Mapping[str, int] | None,
    ) -> None:
        self.clock = clock
        self.eid = experiment_id
        self.out = out
        by_name = _match_targets(trace, targets)
        caps = dict(max_concurrency or {})
        unknown = sorted(set(caps) - set(by_name))
        if unknown:
            raise ReplayError(f"max_concurrency names no target: {', '.join(unknown)}")
        sizes = trace["tenant"].value_counts()
        n_of = dict(sizes.iter_rows())
        self.targets = {
            name: _TargetState(
                t, prompt_seed, caps.get(name), int(n_of.get(name, 0) or trace.height)
            )
            for name, t in by_name.items()
        }
        only = next(iter(self.targets.values())) if len(self.targets) == 1 else None
        cols = trace.select(
            "arrival_s", "tenant", "input_tokens", "output_tokens", "prompt", "batch_size"
        )
        self.reqs: list[_Req] = []
        end_window = warmup_s + window_s
        for rid, (a, tenant, inp, n_out, prompt, batch) in enumerate(cols.iter_rows()):
            ts = self.targets[tenant] if tenant is not None and only is None else only
            assert ts is not None
            r = _Req(rid, a, ts)
            r.input_tokens = inp
            if ts.stream:
                r.output_tokens = n_out
            else:
                r.batch_size = batch or 1
            r.prompt = prompt
            r.warmup = a < warmup_s
            r.in_window = warmup_s <= a < end_window
            ts.window += r.in_window
            self.reqs.append(r)
        self.lag_ns = np.full(len(self.reqs), -1, dtype=np.int64)
        self.prepared = 0
        self.launched = 0
        self.sent = self.finished = self.failed = 0
        self.counts = {
            n: dict.fromkeys(("ok", "error", "timeout", "dropped"), 0) for n in self.targets
        }
        self.in_flight: set[asyncio.Task[None]] = set()
        self.idle = asyncio.Event()  # set whenever nothing is in flight
        self.idle.set()
        self.max_lag_ns = 0
        self.start_s = 0.0

    # ---- preparation ---------------------------------------------------------------------------

    def prepare(self, r: _Req) -> None:
        ts = r.target
        r.request = ts.client.build_request(
            "POST", ts.url, content=_body(r), headers={"x-request-id": f"{self.eid}-{r.rid}"}
        )

    def prepare_until(self, horizon_ns: int) -> None:
        reqs = self.reqs
        while self.prepared < len(reqs) and reqs[self.prepared].due_ns <= horizon_ns:
            if reqs[self.prepared].request is None:
                self.prepare(reqs[self.prepared])
            self.prepared += 1

    def anchor(self, start_s: float) -> None:
        self.start_s = start_s
        base = self.clock.to_ns(start_s)
        for r in self.reqs:
            r.due_ns = base + round(r.arrival_s * 1e9)

    async def prewarm(self) -> None:
        """Open each target's connections for its first second of requests (at most
        ``PREWARM_MAX``) before the start: the first requests should not time handshakes."""
        first_second: dict[str, int] = {}
        t0 = self.reqs[0].arrival_s if self.reqs else 0.0
        for r in self.reqs:
            if r.arrival_s - t0 >= 1.0:
                break
            first_second[r.target.target.tenant] = first_second.get(r.target.target.tenant, 0) + 1
        jobs = []
        for name, ts in self.targets.items():
            if ts.transport is not None and first_second.get(name):
                n = min(first_second[name], PREWARM_MAX, ts.cap or PREWARM_MAX)
                jobs.append(ts.transport.prewarm(ts.url, n))
        if jobs:
            await asyncio.gather(*jobs)

    # ---- dispatch ------------------------------------------------------------------------------

    async def dispatch(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        now = time.perf_counter_ns
        reqs = self.reqs
        n = len(reqs)
        while self.launched < n and not stop.is_set():
            r = reqs[self.launched]
            due = r.due_ns
            while True:
                wait = due - now()
                if wait <= 0:
                    break
                if wait > PREP_SLACK_NS and self.prepared < n:
                    nxt = reqs[self.prepared]
                    if nxt.due_ns - now() < LOOKAHEAD_NS:
                        if nxt.request is None:
                            self.prepare(nxt)
                        self.prepared += 1
                        await asyncio.sleep(0)  # one body at a time: let the streams' bytes in
                        continue
                if wait > SPIN_NS:
                    await asyncio.sleep(min((wait - SPIN_NS) / 1e9, MAX_SLEEP_S))
                else:
                    await asyncio.sleep(0)
                if stop.is_set():
                    return
            if r.request is None:
                self.prepare(r)
            if self.prepared <= self.launched:
                self.prepared = self.launched + 1
            task = loop.create_task(self.run(r))
            self.in_flight.add(task)
            self.idle.clear()
            task.add_done_callback(self._finished)
            self.launched += 1

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        if not self.in_flight:
            self.idle.set()

    async def run(self, r: _Req) -> None:
        ts = r.target
        sem = ts.sem
        if sem is not None:
            try:
                await sem.acquire()
            except asyncio.CancelledError:
                self.record(r, "dropped", error="not sent: replay stopped")
                return
        try:
            await self._exchange(r)
        finally:
            if sem is not None:
                sem.release()

    async def _exchange(self, r: _Req) -> None:
        ts = r.target
        request = r.request
        assert request is not None
        r.request = None  # one use; free the body
        sent = time.perf_counter_ns()
        lag = sent - r.due_ns
        self.lag_ns[r.rid] = lag
        if lag > self.max_lag_ns:
            self.max_lag_ns = lag
        self.sent += 1
        ts.sent += 1
        status = 0
        tok = _Tokens(ts.chat) if ts.stream else None
        if r.in_window and ts.target.slo is not None:
            r.sent_ns, r.tok = sent, tok
            ts.live[r.rid] = r
        try:
            async with asyncio.timeout(ts.target.timeout_s):
                resp = await ts.client.send(request, stream=True)
                try:
                    status = resp.status_code
                    if status != 200:
                        body = await resp.aread()
                        text = body[:300].decode("utf-8", "replace")
                        return self.record(
                            r, "error", sent, http_status=status, error=f"HTTP {status}: {text}"
                        )
                    if tok is None:
                        return await self._embeddings(r, resp, sent)
                    timed: TimedStream | None = resp.extensions.get("cotenant.timed")
                    if timed is not None:
                        await timed.consume(tok.piece)  # parsed as the bytes arrive
                    else:
                        async for data in resp.aiter_raw():
                            tok.piece(data, time.perf_counter_ns())
                    tok.end()
                finally:
                    await resp.aclose()
        except TimeoutError:
            error = f"no complete answer within {ts.target.timeout_s} s"
            return self.record(r, "timeout", sent, tok, status or None, error=error)
        except asyncio.CancelledError:
            self.record(r, "timeout", sent, tok, status or None, error=self.cancel_reason)
            return
        except httpx.HTTPError as e:
            return self.record(r, "error", sent, tok, status or None, error=_describe(e))
        done = time.perf_counter_ns()
        assert tok is not None
        if tok.stream.error is not None:
            return self.record(r, "error", sent, tok, status, error=tok.stream.error, done=done)
        if not tok.first:
            return self.record(
                r, "error", sent, tok, status, error="no token in the answer", done=done
            )
        self.record(
            r, "ok", sent, tok, status, output_tokens=tok.stream.completion_tokens, done=done
        )

    async def _embeddings(self, r: _Req, resp: httpx.Response, sent: int) -> None:
        body = await resp.aread()
        done = time.perf_counter_ns()
        try:
            obj = json.loads(body)
            data = obj["data"]
            if not isinstance(data, list) or len(data) != (r.batch_size or 1):
                raise ValueError(f"{len(data) if isinstance(data, list) else 'no'} embeddings")
        except (ValueError, KeyError, TypeError) as e:
            return self.record(
                r, "error", sent, http_status=200, error=f"bad answer: {e}", done=done
            )
        self.record(r, "ok", sent, http_status=200, done=done)

    cancel_reason = "still in flight at the drain deadline"

    def record(
        self,
        r: _Req,
        status: str,
        sent: int = 0,
        tok: _Tokens | None = None,
        http_status: int | None = None,
        *,
        error: str | None = None,
        output_tokens: int | None = None,
        done: int = 0,
    ) -> None:
        to_s = self.clock.to_s
        if sent and not done:
            done = time.perf_counter_ns()
        first = tok.first if tok is not None else 0
        gaps = tok.gaps if tok is not None else None
        row = {
            "experiment_id": self.eid,
            "tenant": r.target.target.tenant,
            "request_id": r.rid,
            "kind": r.target.kind,
            "scheduled_s": self.start_s + r.arrival_s,
            "sent_s": to_s(sent) if sent else None,
            "first_token_s": to_s(first) if first else None,
            "done_s": to_s(done) if done else None,
            "input_tokens": r.input_tokens,
            "output_tokens": output_tokens,
            "expected_output_tokens": r.output_tokens,
            "batch_size": r.batch_size,
            "itl_s": [g / 1e9 for g in gaps] if gaps else ([] if first else None),
            "status": status,
            "http_status": http_status,
            "error": error,
            "warmup": r.warmup,
            "in_window": r.in_window,
        }
        self.out.write(row)
        self.counts[r.target.target.tenant][status] += 1
        slo = r.target.target.slo
        if slo is not None and r.in_window:
            r.target.live.pop(r.rid, None)
            r.tok = None
            if status != "ok" or not slo.met(*_latencies(sent, first, done, output_tokens)):
                r.target.missed += 1
        if status != "dropped":
            self.finished += 1
            ts = r.target
            ts.done += 1
            ts.recent_done_ns.append(done)
            if status != "ok":
                self.failed += 1
                ts.errors += 1
            elif sent:
                ts.recent_latency_ns.append((first or done) - sent)

    def snapshot(self, t0_ns: int) -> ProgressSnapshot:
        lag, self.max_lag_ns = self.max_lag_ns, 0
        now = time.perf_counter_ns()
        return ProgressSnapshot(
            elapsed_s=(time.perf_counter_ns() - t0_ns) / 1e9,
            total=len(self.reqs),
            sent=self.sent,
            done=self.finished,
            errors=self.failed,
            in_flight=len(self.in_flight),
            dispatch_lag_s=max(lag, 0) / 1e9,
            tenants=tuple(ts.snapshot(now) for ts in self.targets.values()),
        )

    async def aclose(self) -> None:
        for ts in self.targets.values():
            await ts.client.aclose()


def _describe(e: httpx.HTTPError) -> str:
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}"[:300]


# ---- entry points ----------------------------------------------------------------------------


async def replay(
    trace: pl.DataFrame,
    targets: Sequence[Target] | Mapping[str, Target],
    *,
    clock: ExperimentClock,
    experiment_id: str,
    out_jsonl: str | Path,
    warmup_s: float = 0.0,
    window_s: float | None = None,
    drain_s: float = 30.0,
    prompt_seed: int = 0,
    max_concurrency: Mapping[str, int] | None = None,
    progress: Progress | None = None,
    stop: asyncio.Event | None = None,
    start_s: float | None = None,
) -> ReplaySummary:
    """Replay ``trace`` against ``targets`` (a list, or a mapping tenant → Target); append
    one row a request to ``out_jsonl``.

    Trace time 0 is ``start_s`` on ``clock``; by default clock zero when that is still
    ahead once the first seconds of prompts are prepared (create the clock with
    ``ExperimentClock(delay_s=...)``), else 50 ms from then; the summary says which.
    ``warmup`` marks requests due before ``warmup_s``; ``in_window`` those due in
    [warmup_s, warmup_s + window_s) (default: to the end of the trace). Sending stops at
    the end of the trace; requests still out ``drain_s`` after the later of that and the
    window's end are cancelled (status timeout). Setting ``stop`` stops sending at once:
    requests not sent become ``dropped`` rows, those in flight ``timeout`` rows.
    ``max_concurrency`` caps requests in flight a tenant (closed loop; the wait counts as
    dispatch lag).
    """
    if warmup_s < 0 or drain_s < 0:
        raise ReplayError("warmup_s and drain_s must be >= 0")
    trace = normalize_trace(trace, source="the trace to replay")  # checked, sorted by arrival
    last_arrival = float(trace["arrival_s"].max()) if trace.height else 0.0  # type: ignore[arg-type]
    if window_s is None:
        window_s = max(math.nextafter(last_arrival, math.inf) - warmup_s, 0.0)
    progress = progress or QuietProgress()
    stop = stop or asyncio.Event()
    out = JsonlAppender(out_jsonl)
    t0_wall = time.perf_counter_ns()
    state: _Replay | None = None
    try:
        state = _Replay(
            trace,
            targets,
            clock=clock,
            experiment_id=experiment_id,
            out=out,
            warmup_s=warmup_s,
            window_s=window_s,
            prompt_seed=prompt_seed,
            max_concurrency=max_concurrency,
        )
        await _get_ready(state, start_s)
        with _gc_paused():
            if start_s is None and clock.now_s() > -0.01:
                state.anchor(clock.now_s() + 0.05)
            until_s = max(warmup_s + window_s, last_arrival) + drain_s
            stopped = await _send_and_drain(state, progress, stop, t0_wall, until_s)
    finally:
        try:
            if state is not None:
                await state.aclose()
        finally:
            out.close()  # raises a row that could not be written (a full disk), naming the file
    return _summary(state, experiment_id, Path(out_jsonl), t0_wall, stopped)


async def _get_ready(state: _Replay, start_s: float | None) -> None:
    """Before the start: the schedule anchored, the first seconds of bodies built, the first
    second's connections open."""
    state.anchor(0.0 if start_s is None else start_s)
    state.prepare_until(state.reqs[0].due_ns + LOOKAHEAD_NS if state.reqs else 0)
    await state.prewarm()


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cyclic collector collected, frozen and paused while the replay runs (a full
    collection stops the loop for tens of milliseconds); restored afterwards."""
    gc_was_enabled = gc.isenabled()
    gc_froze = False
    try:
        gc.collect()  # before the start is fixed: a big heap takes a while
        if gc.get_freeze_count() == 0:  # leave a caller's own freeze alone
            gc.freeze()
            gc_froze = True
        gc.disable()
        yield
    finally:
        if gc_froze:
            gc.unfreeze()
        if gc_was_enabled:
            gc.enable()


async def _send_and_drain(
    state: _Replay, progress: Progress, stop: asyncio.Event, t0_wall: int, until_s: float
) -> bool:
    """Send the trace, then wait for the answers until ``until_s`` after the start or a
    stop; what was never sent becomes ``dropped`` rows. True when a stop was asked."""
    progress.start(len(state.reqs))
    ticker = asyncio.create_task(_tick(state, progress, t0_wall))
    try:
        dispatcher = asyncio.create_task(state.dispatch(stop))
        await dispatcher
        stopped = stop.is_set()
        await _drain(state, stop, state.clock.to_ns(state.start_s + until_s))
        return stopped or stop.is_set()
    finally:
        ticker.cancel()
        for task in list(state.in_flight):
            task.cancel()
        if state.in_flight:
            await asyncio.gather(*state.in_flight, return_exceptions=True)
        for r in state.reqs[state.launched :]:
            state.record(r, "dropped", error="not sent: replay stopped")
        progress.update(state.snapshot(t0_wall))
        progress.stop()


async def _tick(state: _Replay, progress: Progress, t0_ns: int) -> None:
    while True:
        await asyncio.sleep(0.5)
        progress.update(state.snapshot(t0_ns))


async def _drain(state: _Replay, stop: asyncio.Event, deadline_ns: int) -> None:
    """Wait for requests in flight until the deadline or a stop; then cancel the rest."""
    if state.in_flight and not stop.is_set():
        left = (deadline_ns - time.perf_counter_ns()) / 1e9
        waits = {asyncio.ensure_future(state.idle.wait()), asyncio.ensure_future(stop.wait())}
        try:
            await asyncio.wait(waits, timeout=max(left, 0.0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
    if stop.is_set():
        state.cancel_reason = "cancelled: replay stopped"
    for task in list(state.in_flight):
        task.cancel()
    if state.in_flight:
        await asyncio.gather(*state.in_flight, return_exceptions=True)


def _summary(
    state: _Replay | None, eid: str, out: Path, t0_ns: int, stopped: bool
) -> ReplaySummary:
    assert state is not None
    lags = state.lag_ns[state.lag_ns >= 0] / 1e9
    pct = np.percentile(lags, [50, 99]) if lags.size else [None, None]
    totals = {
        k: sum(c[k] for c in state.counts.values()) for k in ("ok", "error", "timeout", "dropped")
    }
    return ReplaySummary(
        experiment_id=eid,
        start_s=state.start_s,
        scheduled=len(state.reqs),
        sent=state.sent,
        ok=totals["ok"],
        errors=totals["error"],
        timeouts=totals["timeout"],
        dropped=totals["dropped"],
        dispatch_lag_p50_s=None if pct[0] is None else float(pct[0]),
        dispatch_lag_p99_s=None if pct[1] is None else float(pct[1]),
        dispatch_lag_max_s=float(lags.max()) if lags.size else None,
        wall_s=(time.perf_counter_ns() - t0_ns) / 1e9,
        stopped=stopped,
        out_jsonl=out,
        per_tenant={n: dict(c) for n, c in state.counts.items()},
    )


def replay_to_dir(
    trace: pl.DataFrame,
    targets: Sequence[Target] | Mapping[str, Target],
    out_dir: str | Path,
    *,
    clock: ExperimentClock | None = None,
    experiment_id: str = "replay",
    warmup_s: float = 0.0,
    window_s: float | None = None,
    drain_s: float = 30.0,
    prompt_seed: int = 0,
    max_concurrency: Mapping[str, int] | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> pl.DataFrame:
    """Run `replay` on a fresh event loop (uvloop when installed): ``out_dir/requests.jsonl``
    as requests finish, then ``out_dir/requests.parquet``. Ctrl-C stops sending (the rest
    become ``dropped`` rows) and still writes both files. Returns the per-tenant summary
    frame (`workloads.summary.summarize_requests`); `workloads.summary.replay_totals` of
    the rows gives the totals."""
    from rundir.io import compact_jsonl
    from workloads.summary import summarize_requests

    out_dir = Path(out_dir)
    jsonl = out_dir / "requests.jsonl"
    if jsonl.exists():
        if not overwrite:
            raise ReplayError(f"{jsonl} exists: choose another folder (or overwrite)")
        jsonl.unlink()

    async def main() -> ReplaySummary:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, stop.set)
        return await replay(
            trace,
            targets,
            clock=clock or ExperimentClock(delay_s=1.0),
            experiment_id=experiment_id,
            out_jsonl=jsonl,
            warmup_s=warmup_s,
            window_s=window_s,
            drain_s=drain_s,
            prompt_seed=prompt_seed,
            max_concurrency=max_concurrency,
            progress=progress,
            stop=stop,
        )

    run_loop(main())
    rows = compact_jsonl(jsonl, out_dir / "requests.parquet")
    return summarize_requests(rows)


_INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


def run_loop(coro: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run`` on uvloop when it is installed (less overhead a callback).

    Ctrl-C and SIGTERM while the loop runs cancel the coroutine (its ``finally`` blocks run,
    so what was measured is written) and come out as ``KeyboardInterrupt`` once the loop has
    closed. A Python signal handler that raises would instead land in whatever callback is
    running, often a transport's ``data_received``, where the loop catches the exception as
    a transport error and the interrupt is lost. The handlers that were installed before
    (the campaign's SIGTERM-as-interrupt) are back afterwards. A coroutine that installs its
    own handler for one of these signals (``replay_to_dir``: Ctrl-C stops gracefully) keeps
    it for that signal."""
    caught: list[int] = []
    main_thread = threading.current_thread() is threading.main_thread()
    saved = {s: signal.getsignal(s) for s in _INTERRUPTS} if main_thread else {}

    async def guarded() -> _T:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()

        def interrupt(signum: int) -> None:
            caught.append(signum)
            if task is not None:
                task.cancel()

        for s in _INTERRUPTS if main_thread else ():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(s, interrupt, s)
        return await coro

    try:
        try:
            import uvloop
        except ImportError:
            result = asyncio.run(guarded())
        else:
            result = uvloop.run(guarded())
    except asyncio.CancelledError:
        if caught:
            raise KeyboardInterrupt(f"signal {caught[0]}") from None
        raise
    finally:
        for s, handler in saved.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(s, handler)
    if caught:  # the coroutine finished in spite of the cancellation: still an interrupt
        raise KeyboardInterrupt(f"signal {caught[0]}")
    return result


def served_model(base_url: str, api_key: str | None = None, timeout_s: float = 10.0) -> str:
    """The first model id a server lists at ``/v1/models`` (for a target given without one)."""
    base = base_url.rstrip("/")
    base = base[:-3] if base.endswith("/v1") else base
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(base + "/v1/models", headers=headers, timeout=timeout_s)
        r.raise_for_status()
        data = r.json()["data"]
        return str(data[0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ReplayError(
            f"{base}/v1/models did not name a model ({type(e).__name__}: {e}); give model=NAME"
        ) from None
