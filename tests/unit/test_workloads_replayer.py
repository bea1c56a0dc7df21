"""The replayer against a streaming stub on a free port (its own event loop, in a thread)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from rundir.io import read_jsonl_rows
from rundir.schema import REQUEST_SCHEMA, rows_to_frame
from workloads.clock import ExperimentClock
from workloads.errors import ReplayError, TraceFormatError
from workloads.replayer import ReplaySummary, Target, replay, replay_to_dir, run_loop
from workloads.stubserver import StubConfig, StubServer
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
    s, rows = _run(trace, [_target(stub, tok)], tmp_path, warmup_s=0.1, window_s=0.4)
    assert (s.scheduled, s.sent, s.ok) == (n, n, n)
    assert rows["scheduled_s"].to_list() == pytest.approx((s.start_s + arrivals).tolist())
    lag = (rows["sent_s"] - rows["scheduled_s"]).to_numpy()
    assert lag.min() >= 0
    assert np.median(lag) < 0.002 and lag.max() < 0.2  # a loaded CI box: the tail is generous
    assert rows["output_tokens"].to_list() == outputs == rows["expected_output_tokens"].to_list()
    assert rows["status"].unique().to_list() == ["ok"]
    assert rows["warmup"].sum() == 5 and rows["in_window"].sum() == 20
    # timings against what the stub did, on the same monotonic clock
    stamps = stub.stamps()
    for r in rows.iter_rows(named=True):
        recv, writes = stamps[f"t-{r['request_id']}"]
        true_ttft = (writes[0] - recv) / 1e9
        assert r["first_token_s"] - r["sent_s"] == pytest.approx(true_ttft, abs=0.02)
        assert len(r["itl_s"]) == r["output_tokens"] - 1
        true_gaps = np.diff(writes) / 1e9
        assert np.allclose(r["itl_s"], true_gaps, atol=0.02)
        assert r["done_s"] >= r["first_token_s"] + sum(r["itl_s"]) - 1e-6
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
    assert by[17]["status"] == "timeout" and "0.4 s" in by[17]["error"]
    assert by[17]["done_s"] - by[17]["sent_s"] == pytest.approx(0.4, abs=0.1)
    assert (s.ok, s.errors, s.timeouts, s.dropped) == (1, 1, 1, 0)


def test_drain_deadline_cancels_what_is_left(stub: StubServer, tok: Path, tmp_path: Path) -> None:
    trace = make_trace([0.0, 0.05], input_tokens=[8, 8], output_tokens=[17, 4], tenant="a")
    s, rows = _run(trace, [_target(stub, tok, timeout_s=60)], tmp_path, drain_s=0.3)
    hung = rows.filter(pl.col("expected_output_tokens") == 17).row(0, named=True)
    assert hung["status"] == "timeout" and "drain deadline" in hung["error"]
    assert s.wall_s < 5


def test_stop_drops_what_was_not_sent(stub: StubServer, tok: Path, tmp_path: Path) -> None:
    n = 40
    trace = make_trace(np.arange(n) * 0.05, input_tokens=[8] * n, output_tokens=[4] * n, tenant="a")

    async def main() -> ReplaySummary:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.6, stop.set)  # the clock's zero is 0.3 s away
        return await replay(
            trace, [_target(stub, tok)], clock=ExperimentClock(delay_s=0.3), experiment_id="t",
            out_jsonl=tmp_path / "r.jsonl", stop=stop,
        )  # fmt: skip

    s = run_loop(main())
    rows = rows_to_frame(read_jsonl_rows(tmp_path / "r.jsonl"))
    assert rows.height == n and s.stopped
    dropped = rows.filter(pl.col("status") == "dropped")
    assert 20 < dropped.height < 40
    assert dropped["sent_s"].null_count() == dropped.height
    assert (
        dropped["scheduled_s"].min()
        > rows.filter(pl.col("status") != "dropped")["scheduled_s"].max()
    )
    assert s.dropped == dropped.height


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
    assert row["ttft_p50_ms"] == pytest.approx(TTFT * 1e3, abs=10)
    assert row["tpot_p50_ms"] == pytest.approx(ITL * 1e3, abs=3)
    assert row["achieved_rate"] == pytest.approx(100, rel=0.2)
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
    s, rows = _run(trace, [_target(stub, tok)], tmp_path, clock=ExperimentClock(delay_s=2.0))
    assert s.start_s == 0.0
    assert rows["scheduled_s"].to_list() == [0.0, 0.01]


def test_late_clock_shifts_the_start(stub: StubServer, tok: Path, tmp_path: Path) -> None:
    trace = make_trace([0.0, 0.01], input_tokens=[8, 8], output_tokens=[3, 3], tenant="a")
    clock = ExperimentClock()  # zero is now: too late to send at arrival 0
    s, rows = _run(trace, [_target(stub, tok)], tmp_path, clock=clock)
    assert s.start_s > 0
    assert rows["scheduled_s"].to_list() == pytest.approx([s.start_s, s.start_s + 0.01])
    assert (rows["sent_s"] - rows["scheduled_s"]).max() < 0.2


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
    # p50 TTFT of the completions is the stub's TTFT (plus transport); embeddings much faster
    assert TTFT <= by["c"].p50_s < TTFT + 0.05
    assert by["e"].p50_s < TTFT
    # the rate is completions a second over the last seconds: 40 requests in ~1 s, a 1 s floor
    assert 20 <= by["c"].rate_rps <= 45
    from workloads.progress import tenant_line

    assert "TTFT p50" in tenant_line(by["c"]) and "latency p50" in tenant_line(by["e"])
