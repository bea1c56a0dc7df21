"""The replayer against a streaming stub on a free port (its own event loop, in a thread).

No test asserts a timing window: timings are checked against causality on the host's one
monotonic clock (the client cannot see a token before the stub wrote it, a deadline does
not end a request before it is due), and stops come on events, not timers. How close the
replayer's timings come to the truth is measured by ``benchmarks/replay_fidelity.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from rundir.io import read_jsonl_rows
from rundir.schema import REQUEST_SCHEMA, rows_to_frame
from tests.stubs.timing import StubConfig, StubServer
from workloads.clock import ExperimentClock
from workloads.errors import ReplayError, TraceFormatError
from workloads.replayer import ReplaySummary, Target, replay, replay_to_dir, run_loop
from workloads.summary import summarize_requests
from workloads.tokenizer import build_tiny_tokenizer
from workloads.trace import make_trace

TTFT, ITL = 0.03, 0.005


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def stub() -> Iterator[StubServer]:
    cfg = StubConfig(ttft_s=TTFT, itl_s=ITL, fail={13: 500}, hang=frozenset({17}), embed_s=0.002)
    with StubServer(cfg) as s:
        yield s


def _run(
    trace: pl.DataFrame, targets: Any, out: Path, **kw: Any
) -> tuple[ReplaySummary, pl.DataFrame]:
    kw.setdefault("clock", ExperimentClock(delay_s=0.3))
    kw.setdefault("experiment_id", "t")
    summary = run_loop(replay(trace, targets, out_jsonl=out / "requests.jsonl", **kw))
    rows = rows_to_frame(read_jsonl_rows(out / "requests.jsonl")).sort("request_id")
    return summary, rows


def _target(stub: StubServer, tok: Path | None = None, **kw: Any) -> Target:
    return Target("a", stub.base_url, kw.pop("api", "completions"), "stub", tok, **kw)


def test_schedule_timings_and_tokens(stub: StubServer, tok: Path, tmp_path: Path) -> None:
    n = 30
    arrivals = np.arange(n) * 0.02  # 50 req/s for 0.6 s
    outputs = [4 + i % 5 for i in range(n)]
    trace = make_trace(arrivals, input_tokens=[32] * n, output_tokens=outputs, tenant="a")
    clock = ExperimentClock(delay_s=0.3)
    s, rows = _run(trace, [_target(stub, tok)], tmp_path, warmup_s=0.1, window_s=0.4, clock=clock)
    assert (s.scheduled, s.sent, s.ok) == (n, n, n)
    assert rows["scheduled_s"].to_list() == pytest.approx((s.start_s + arrivals).tolist())
    lag = (rows["sent_s"] - rows["scheduled_s"]).to_numpy()
    assert lag.min() >= 0  # never early
    assert rows["output_tokens"].to_list() == outputs == rows["expected_output_tokens"].to_list()
    assert rows["status"].unique().to_list() == ["ok"]
    assert rows["warmup"].sum() == 5 and rows["in_window"].sum() == 20
    # timings against what the stub did, on the same monotonic clock: each event the
    # client stamped comes after the stub's own stamp of its cause
    eps = 1e-6  # float seconds
    stamps = stub.stamps()
    for r in rows.iter_rows(named=True):
        recv, writes = stamps[f"t-{r['request_id']}"]
        assert r["sent_s"] <= clock.to_s(recv) + eps
        assert len(writes) == r["output_tokens"] and len(r["itl_s"]) == r["output_tokens"] - 1
        seen = r["first_token_s"] + np.concatenate([[0.0], np.cumsum(r["itl_s"])])
        written = np.array([clock.to_s(w) for w in writes])
        assert (seen >= written - eps).all()
        assert r["done_s"] >= seen[-1] - eps
    frame = rows_to_frame(rows.to_dicts())
    assert frame.schema == pl.Schema(REQUEST_SCHEMA)


def test_error_and_hanging_requests_become_rows(
    stub: StubServer, tok: Path, tmp_path: Path
) -> None:
    trace = make_trace(
        [0.0, 0.01, 0.02], input_tokens=[8] * 3, output_tokens=[8, 13, 17], tenant="a"
    )
    s, rows = _run(trace, [_target(stub, tok, timeout_s=0.4)], tmp_path)
    by = {r["expected_output_tokens"]: r for r in rows.iter_rows(named=True)}
    assert by[8]["status"] == "ok"
    assert by[13]["status"] == "error" and by[13]["http_status"] == 500
    assert "HTTP 500" in by[13]["error"] and by[13]["output_tokens"] is None
    assert by[17]["status"] == "timeout" and "0.4 s" in by[17]["error"]  # not the drain's
    # not before its deadline (uvloop's timers count from the start of a loop iteration)
    assert by[17]["done_s"] - by[17]["sent_s"] > 0.3
    assert (s.ok, s.errors, s.timeouts, s.dropped) == (1, 1, 1, 0)


def test_drain_deadline_cancels_what_is_left(stub: StubServer, tok: Path, tmp_path: Path) -> None:
    trace = make_trace([0.0, 0.05], input_tokens=[8, 8], output_tokens=[17, 4], tenant="a")
    s, rows = _run(trace, [_target(stub, tok, timeout_s=60)], tmp_path, drain_s=0.3)
    hung = rows.filter(pl.col("expected_output_tokens") == 17).row(0, named=True)
    assert hung["status"] == "timeout" and "drain deadline" in hung["error"]  # not the 60 s'
    assert hung["done_s"] > s.start_s + 0.05 + 0.3 - 0.1  # the last arrival, then the drain
    assert (s.ok, s.timeouts) == (1, 1)


def test_stop_drops_what_was_not_sent(tok: Path, tmp_path: Path) -> None:
    """The stop comes when the stub has the k-th request, which it never answers. One
    request at a time (a concurrency cap of 1): the k - 1 before it are done, none after it
    was sent."""
    n, k = 40, 12
    outputs = [4] * n
    outputs[k - 1] = 17  # hangs
    trace = make_trace(np.arange(n) * 0.01, input_tokens=[8] * n, output_tokens=outputs,
                       tenant="a")  # fmt: skip
    when_in: list[Callable[[], object]] = []

    def on_request(rid: str) -> None:
        if rid == f"t-{k - 1}":
            when_in[0]()

    async def main(base_url: str) -> ReplaySummary:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        when_in.append(lambda: loop.call_soon_threadsafe(stop.set))
        return await replay(
            trace, [Target("a", base_url, "completions", "stub", tok)],
            clock=ExperimentClock(delay_s=0.3), experiment_id="t",
            out_jsonl=tmp_path / "r.jsonl", stop=stop, max_concurrency={"a": 1},
        )  # fmt: skip

    cfg = StubConfig(ttft_s=TTFT, itl_s=ITL, hang=frozenset({17}), on_request=on_request)
    with StubServer(cfg) as own:
        s = run_loop(main(own.base_url))
    rows = rows_to_frame(read_jsonl_rows(tmp_path / "r.jsonl")).sort("request_id")
    assert rows.height == n and s.stopped
    assert (s.sent, s.ok, s.timeouts, s.dropped) == (k, k - 1, 1, n - k)
    assert rows["status"].to_list() == ["ok"] * (k - 1) + ["timeout"] + ["dropped"] * (n - k)
    assert rows["error"][k - 1] == "cancelled: replay stopped"
    dropped = rows.filter(pl.col("status") == "dropped")
    assert dropped["sent_s"].null_count() == dropped.height
    assert set(dropped["error"]) == {"not sent: replay stopped"}


def test_concurrency_cap_is_client_queueing(stub: StubServer, tok: Path, tmp_path: Path) -> None:
    n = 8
    trace = make_trace([0.0] * n, input_tokens=[8] * n, output_tokens=[4] * n, tenant="a")
    s, rows = _run(trace, [_target(stub, tok)], tmp_path, max_concurrency={"a": 2})
    assert s.ok == n
    spans = sorted(zip(rows["sent_s"], rows["done_s"], strict=True))
    for i, (start, _) in enumerate(spans):
        in_flight = sum(1 for a, b in spans[:i] if b > start + 1e-4)
        assert in_flight <= 1  # with this one: at most 2
    lag = (rows["sent_s"] - rows["scheduled_s"]).sort()
    assert lag[-1] > 3 * (TTFT + 3 * ITL)  # the last waited for three pairs before it


def test_chat_and_embeddings(stub: StubServer, tok: Path, tmp_path: Path) -> None:
    chat = make_trace([0.0, 0.01], input_tokens=[16, 16], output_tokens=[5, 6], tenant="c")
    emb = make_trace([0.0, 0.01], input_tokens=[16, 16], output_tokens=[0, 0], tenant="e", kind="embedding",
                     batch_size=[3, 1])  # fmt: skip
    targets = {  # a mapping, as the campaign runner passes them
        "c": Target("c", stub.base_url + "/v1", "chat", "stub", tok),
        "e": Target("e", stub.base_url, "embeddings", "stub", None),
    }
    s, rows = _run(pl.concat([chat, emb]).sort("arrival_s"), targets, tmp_path)
    assert s.ok == 4
    c = rows.filter(pl.col("tenant") == "c")
    assert c["kind"].unique().to_list() == ["chat"] and c["output_tokens"].to_list() == [5, 6]
    e = rows.filter(pl.col("tenant") == "e")
    assert e["kind"].unique().to_list() == ["embedding"]
    assert e["first_token_s"].null_count() == 2 and e["batch_size"].sort().to_list() == [1, 3]


def test_without_tokenizer_text_prompts(stub: StubServer, tmp_path: Path) -> None:
    trace = make_trace([0.0], input_tokens=[20], output_tokens=[3])
    s, rows = _run(trace, [_target(stub)], tmp_path)
    assert s.ok == 1 and rows["tenant"][0] == "a"  # rows without a tenant go to the only target


def test_targets_must_match_the_trace(stub: StubServer, tmp_path: Path) -> None:
    trace = make_trace([0.0, 0.1], input_tokens=[8, 8], output_tokens=[4, 4], tenant=["a", "b"])
    with pytest.raises(ReplayError, match="no target for tenant"):
        _run(trace, [_target(stub)], tmp_path)
    emb = make_trace([0.0], input_tokens=[8], output_tokens=[0], tenant="a", kind="embedding")
    with pytest.raises(ReplayError, match="embedding"):
        _run(emb, [_target(stub)], tmp_path)
    with pytest.raises(ReplayError, match="max_concurrency"):
        _run(
            trace.filter(pl.col("tenant") == "a"),
            [_target(stub)],
            tmp_path,
            max_concurrency={"zz": 1},
        )


def test_replay_to_dir_writes_both_files(stub: StubServer, tok: Path, tmp_path: Path) -> None:
    n = 10
    trace = make_trace(np.arange(n) * 0.01, input_tokens=[8] * n, output_tokens=[4] * n, tenant="a")
    clock = ExperimentClock(delay_s=0.2)
    summary = replay_to_dir(
        trace, [_target(stub, tok)], tmp_path / "out", experiment_id="dir", clock=clock
    )
    assert (tmp_path / "out" / "requests.parquet").exists()
    assert len((tmp_path / "out" / "requests.jsonl").read_text().splitlines()) == n
    row = summary.row(0, named=True)
    assert row["tenant"] == "a" and row["ok"] == n and row["requests"] == n
    assert summary.equals(summarize_requests(pl.read_parquet(tmp_path / "out/requests.parquet")))
    assert row["ttft_p50_ms"] >= TTFT * 1e3 - 1e-3  # the stub waits that long
    assert row["tpot_p50_ms"] > 0 and row["achieved_rate"] > 0
    with pytest.raises(ReplayError, match="exists"):
        replay_to_dir(trace, [_target(stub, tok)], tmp_path / "out")
    replay_to_dir(
        trace, [_target(stub, tok)], tmp_path / "out", overwrite=True, clock=ExperimentClock(0.2)
    )
    rows = [json.loads(x) for x in (tmp_path / "out" / "requests.jsonl").read_text().splitlines()]
    assert len(rows) == n


def test_clock_zero_ahead_means_scheduled_equals_arrival(
    stub: StubServer, tok: Path, tmp_path: Path
) -> None:
    trace = make_trace([0.0, 0.01], input_tokens=[8, 8], output_tokens=[3, 3], tenant="a")
    s, rows = _run(trace, [_target(stub, tok)], tmp_path, clock=ExperimentClock(delay_s=5.0))
    assert s.start_s == 0.0
    assert rows["scheduled_s"].to_list() == [0.0, 0.01]


def test_late_clock_shifts_the_start(stub: StubServer, tok: Path, tmp_path: Path) -> None:
    trace = make_trace([0.0, 0.01], input_tokens=[8, 8], output_tokens=[3, 3], tenant="a")
    clock = ExperimentClock()  # zero is now: too late to send at arrival 0
    s, rows = _run(trace, [_target(stub, tok)], tmp_path, clock=clock)
    assert s.start_s > 0
    assert rows["scheduled_s"].to_list() == pytest.approx([s.start_s, s.start_s + 0.01])
    assert (rows["sent_s"] - rows["scheduled_s"]).min() >= 0


def test_an_unsorted_frame_is_checked_and_sorted(
    stub: StubServer, tok: Path, tmp_path: Path
) -> None:
    frame = pl.DataFrame(
        {"arrival_s": [0.2, 0.0, 0.1], "input_tokens": [8, 8, 8], "output_tokens": [2, 3, 4]}
    )
    s, rows = _run(frame, [_target(stub, tok)], tmp_path)
    assert s.ok == 3
    assert rows.sort("request_id")["expected_output_tokens"].to_list() == [3, 4, 2]
    with pytest.raises(TraceFormatError):
        _run(frame.with_columns(pl.lit(-1).alias("output_tokens")), [_target(stub, tok)], tmp_path)


class _Collect:
    def __init__(self) -> None:
        self.snaps: list[Any] = []

    def start(self, total: int) -> None:
        pass

    def update(self, snap: Any) -> None:
        self.snaps.append(snap)

    def stop(self) -> None:
        pass


def test_progress_has_live_figures_per_tenant(stub: StubServer, tok: Path, tmp_path: Path) -> None:
    n = 40
    comp = make_trace(np.arange(n) * 0.025, input_tokens=[16] * n, output_tokens=[3] * n,
                      tenant="c")
    emb = make_trace(np.arange(n) * 0.025, input_tokens=[16] * n, output_tokens=[0] * n,
                     tenant="e", kind="embedding", batch_size=[2] * n)
    targets = {"c": Target("c", stub.base_url, "completions", "stub", tok),
               "e": Target("e", stub.base_url, "embeddings", "stub", None)}
    got = _Collect()
    s, rows = _run(pl.concat([comp, emb]).sort("arrival_s"), targets, tmp_path, progress=got)
    last = got.snaps[-1]
    by = {t.tenant: t for t in last.tenants}
    assert set(by) == {"c", "e"} and by["c"].kind == "completion" and by["e"].kind == "embedding"
    # the final snapshot's counts are the rows'
    for name in ("c", "e"):
        r = rows.filter(pl.col("tenant") == name)
        assert by[name].sent == r.height == by[name].done
        assert by[name].errors == r.filter(pl.col("status") != "ok").height
    # p50: the rows' TTFT for completions (at least the stub's), latency for embeddings
    c, e = (rows.filter(pl.col("tenant") == name) for name in ("c", "e"))
    assert by["c"].p50_s == pytest.approx((c["first_token_s"] - c["sent_s"]).median(), abs=1e-6)
    assert by["e"].p50_s == pytest.approx((e["done_s"] - e["sent_s"]).median(), abs=1e-6)
    assert by["c"].p50_s >= TTFT - 1e-6
    # the rate is completions a second over the last seconds, with a 1 s floor
    assert 0 < by["c"].rate_rps <= n
    from workloads.progress import tenant_line

    assert "TTFT p50" in tenant_line(by["c"]) and "latency p50" in tenant_line(by["e"])


def test_run_loop_turns_a_signal_into_an_interrupt_after_cleanup() -> None:
    """SIGTERM while the loop runs: the coroutine is cancelled (its finally runs), then
    KeyboardInterrupt comes out of run_loop, and the handler installed before is back."""
    import os
    import signal as sig

    before: list[int] = []
    old = sig.signal(sig.SIGTERM, lambda s, f: before.append(s))
    cleaned: list[bool] = []

    async def main() -> None:
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), sig.SIGTERM)
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.append(True)

    try:
        with pytest.raises(KeyboardInterrupt, match="signal 15"):
            run_loop(main())
        assert cleaned == [True] and before == []
        os.kill(os.getpid(), sig.SIGTERM)  # the earlier handler is back
        assert before == [sig.SIGTERM]
    finally:
        sig.signal(sig.SIGTERM, old)
