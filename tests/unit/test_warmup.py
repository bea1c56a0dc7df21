"""The server warm-up: the shapes it sends (from the workload spec), the settling rule, the
loop's stopping reasons, and one round through the real replayer against the timing stub."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from orchestrator import warmup as wu
from orchestrator.spec import WarmupSettings, parse_spec
from tests.stubs.timing import StubConfig, StubServer
from workloads import shapes
from workloads.replayer import Target
from workloads.spec import EmpiricalLen, FixedLen, LognormalLen, NormalLen, UniformLen

DATA = Path(__file__).parents[1] / "data"


def _spec(**workloads: Any) -> Any:
    return parse_spec({
        "name": "w",
        "tenants": [
            {"name": "a", "kind": "vllm", "model": "tiny-llama", "max_model_len": 512,
             "max_num_seqs": 6},
            {"name": "e", "kind": "encoder", "model": "all-minilm-l6-v2", "max_batch": 8},
            {"name": "idle", "kind": "vllm", "model": "tiny-llama"},
        ],
        "workloads": workloads,
    })


POISSON = {"process": "poisson", "rate": 2}


# ---- the shapes -----------------------------------------------------------------------------


def test_the_longest_length_of_each_distribution() -> None:
    assert shapes.dist_high(FixedLen(value=40)) == 40
    assert shapes.dist_high(UniformLen(low=8, high=300)) == 300
    # the 99th percentile of a normal, and its bounds
    assert shapes.dist_high(NormalLen(mean=100, std=10)) == math.ceil(100 + 2.3263478740 * 10)
    assert shapes.dist_high(NormalLen(mean=100, std=10, high=110)) == 110
    assert shapes.dist_high(LognormalLen(median=50, sigma=0.5)) == math.ceil(50 * math.exp(2.3263478740 * 0.5))
    assert shapes.dist_high(LognormalLen(median=50, sigma=0.5, high=60)) == 60
    # the largest value of an empirical column, within its bounds
    emp = EmpiricalLen(path="azure_llm_2023_conv_head.csv", column="output_tokens")
    import polars as pl

    col = pl.read_csv(DATA / "azure_llm_2023_conv_head.csv")["GeneratedTokens"]
    assert shapes.dist_high(emp, DATA) == int(col.max())  # type: ignore[arg-type]
    capped = EmpiricalLen(path="azure_llm_2023_conv_head.csv", column="output_tokens", high=5)
    assert shapes.dist_high(capped, DATA) == 5


def test_the_mean_length_of_each_distribution() -> None:
    assert shapes.dist_mean(FixedLen(value=40)) == 40
    assert shapes.dist_mean(UniformLen(low=8, high=32)) == 20
    assert shapes.dist_mean(LognormalLen(median=50, sigma=0.5)) == pytest.approx(50 * math.exp(0.125), abs=1)


def test_a_trace_workload_asks_its_transformed_lengths() -> None:
    spec = _spec(a={"kind": "trace", "path": str(DATA / "azure_llm_2023_conv_head.csv"),
                    "transforms": {"max_input_tokens": 200, "max_output_tokens": 24}})
    big = shapes.longest(spec.workloads["a"], DATA, "a")
    assert big.input_tokens == 200 and big.output_tokens == 24 and big.batch_size == 1


def test_a_decoder_round_is_a_burst_of_max_num_seqs_longest_requests() -> None:
    spec = _spec(a={"kind": "synthetic", "arrival": POISSON,
                    "input_tokens": {"dist": "uniform", "low": 10, "high": 300},
                    "output_tokens": {"dist": "fixed", "value": 40}})
    r = wu.round_shapes(spec, DATA, "a")
    assert r is not None and r.kind == "completion" and r.max_concurrency is None
    assert r.requests == 6 and set(r.input_tokens) == {300} and set(r.output_tokens) == {40}
    # within max_model_len (512): the prompt gives way to the output
    long = _spec(a={"kind": "synthetic", "arrival": POISSON,
                    "input_tokens": {"dist": "fixed", "value": 500},
                    "output_tokens": {"dist": "fixed", "value": 100}})
    r = wu.round_shapes(long, DATA, "a")
    assert r is not None and r.input_tokens[0] + r.output_tokens[0] == 512 and r.output_tokens[0] == 100


def test_an_encoder_round_covers_every_batch_size_and_length_bucket() -> None:
    spec = _spec(e={"kind": "synthetic", "arrival": POISSON,
                    "input_tokens": {"dist": "uniform", "low": 16, "high": 100},
                    "batch_size": {"dist": "fixed", "value": 20}})
    r = wu.round_shapes(spec, DATA, "e")
    assert r is not None and r.kind == "embedding" and r.max_concurrency == 1
    # batch sizes up to max_batch (8), lengths from 8 up to the longest input (100)
    cells = set(zip(r.batch_size, r.input_tokens, strict=True))
    assert cells == {(b, n) for b in (1, 2, 4, 8) for n in (8, 16, 32, 64, 100)}
    assert r.requests == len(cells) and set(r.output_tokens) == {0}
    assert wu.powers_up_to(1) == [1] and wu.powers_up_to(4) == [1, 2, 4]
    assert wu.powers_up_to(5) == [1, 2, 4, 5]


def test_a_tenant_without_a_workload_is_not_warmed_up() -> None:
    assert wu.round_shapes(_spec(), DATA, "idle") is None


# ---- the settling rule ------------------------------------------------------------------------


def test_round_p50_counts_failures_as_infinitely_slow() -> None:
    assert wu.round_p50([0.3, 0.1, 0.2]) == 0.2
    assert wu.round_p50([0.1, None, 0.3]) == 0.3  # the failure sorts last
    assert wu.round_p50([0.1, None]) is None  # half failed: no finite p50
    assert wu.round_p50([]) is None


@pytest.mark.parametrize(("p50s", "ok"), [
    ([1.0], False),  # one round cannot agree with anything
    ([1.0, 1.15], True),  # exactly at the tolerance
    ([1.15, 1.0], True),  # either order
    ([1.0, 1.16], False),
    ([2.0, 1.0, 1.1], True),  # only the last two count
    ([1.0, 1.05, 2.0], False),
    ([1.0, None], False),
    ([None, None], False),
])
def test_two_consecutive_rounds_must_agree_within_the_tolerance(p50s: list[Any], ok: bool) -> None:
    assert wu.settled(p50s, 0.15) is ok


# ---- the loop ----------------------------------------------------------------------------------


class _Residents:
    def __init__(self) -> None:
        self.gone: set[str] = set()

    def dead(self) -> dict[str, str]:
        return {n: "exited" for n in self.gone}


def _loop(monkeypatch: pytest.MonkeyPatch, rounds: list[list[float | None]],
          ws: WarmupSettings, round_s: float = 1.0, die_after: int | None = None,
          ) -> tuple[wu.WarmupRecord, list[str]]:
    now = [0.0]
    sent: list[str] = []
    residents = _Residents()

    def send_round(target: Any, shapes: Any, jsonl: Path, round_id: str, **kw: Any) -> Any:
        sent.append(round_id)
        now[0] += round_s
        if die_after is not None and len(sent) >= die_after:
            residents.gone.add("a")
        return rounds[len(sent) - 1]

    monkeypatch.setattr(wu, "send_round", send_round)
    monkeypatch.setattr("orchestrator.experiment.target_for", lambda *a: None)
    shapes = wu.Round("completion", [8], [4], [None], None)
    rec = wu.warm_up_tenant(None, residents, "a", shapes, ws, Path("x.jsonl"), 3,  # type: ignore[arg-type]
                            clock=lambda: now[0])
    return rec, sent


def test_the_loop_stops_when_two_rounds_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    rec, sent = _loop(monkeypatch, [[2.0, 2.2], [1.0, 1.1, None], [1.0, 1.05, 1.1]],
                      WarmupSettings(tolerance=0.1))
    assert rec.settled and rec.rounds == 3 and rec.requests == 8 and rec.errors == 1
    assert rec.p50_s == pytest.approx([2.1, 1.1, 1.05]) and "rounds 2 and 3 agree" in rec.reason
    assert sent == ["warmup-3-a-r0", "warmup-3-a-r1", "warmup-3-a-r2"]
    assert rec.seconds == 3.0


def test_the_loop_gives_up_at_max_rounds_or_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    drifting = [[float(i + 1)] for i in range(20)]
    rec, _ = _loop(monkeypatch, drifting, WarmupSettings(max_rounds=4, deadline_s=100))
    assert not rec.settled and rec.rounds == 4 and "max_rounds 4" in rec.reason
    rec, _ = _loop(monkeypatch, drifting, WarmupSettings(max_rounds=50, deadline_s=5.5))
    assert not rec.settled and rec.rounds == 6 and "deadline 5.5 s" in rec.reason
    rec, _ = _loop(monkeypatch, [[None]] * 5, WarmupSettings(), die_after=2)
    assert not rec.settled and rec.rounds == 2 and "died" in rec.reason


def test_a_disabled_warm_up_is_recorded_as_such() -> None:
    spec = parse_spec({**_spec().model_dump(mode="json", exclude_unset=True),
                       "experiment": {"warmup": {"enabled": False}}})

    class R:
        running = {"a": None, "e": None}

    out = wu.warm_up(spec, DATA, R(), Path("/nonexistent"), 0)  # type: ignore[arg-type]
    assert set(out) == {"a", "e"}
    assert all(not r["settled"] and r["rounds"] == 0 and "disabled" in r["reason"]
               for r in out.values())


def test_a_warm_up_that_cannot_be_built_says_why_and_does_not_raise(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text((DATA / "azure_llm_2023_conv_head.csv").read_text())
    spec = _spec(a={"kind": "trace", "path": str(trace)})
    trace.unlink()

    class R:
        running = {"a": None}

    out = wu.warm_up(spec, DATA, R(), tmp_path, 0)  # type: ignore[arg-type]
    assert not out["a"]["settled"] and out["a"]["reason"].startswith("not settled: ")


# ---- one round through the real replayer ------------------------------------------------------


def test_send_round_replays_the_shapes_and_reads_back_its_latencies(tmp_path: Path) -> None:
    cfg = StubConfig(ttft_s=0.02, itl_s=0.002, fail={3: 500})
    jsonl = tmp_path / "logs" / "g0" / "warmup.a.0.jsonl"
    with StubServer(cfg) as stub:
        target = Target("a", stub.base_url, "completions", "stub", None)
        shapes = wu.Round("completion", [16] * 4, [5, 5, 5, 3], [None] * 4, None)
        lat = wu.send_round(target, shapes, jsonl, "warmup-0-a-r0", prompt_seed=1, drain_s=10)
        again = wu.send_round(target, wu.Round("completion", [16], [5], [None], None), jsonl,
                              "warmup-0-a-r1", prompt_seed=2, drain_s=10)
    assert len(lat) == 4 and sum(v is None for v in lat) == 1  # the one the stub failed
    assert all(v is None or v >= 0.02 for v in lat)
    assert len(again) == 1 and again[0] is not None
    assert jsonl.is_file() and len(jsonl.read_text().splitlines()) == 5  # both rounds, kept
