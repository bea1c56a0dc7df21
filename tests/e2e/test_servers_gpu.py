"""GPU tenants: shape-only presets on vLLM (``--load-format dummy``) and the encoder on CUDA.

Skipped without an NVIDIA GPU. Verified on an H100 with vLLM 0.26 (2026-11-24): the encoder
(bge-base-shape, fp16, memory fraction 0.05) healthy in 19 s; llama-3.2-1b and qwen2.5-0.5b
shapes (share 0.3 each, eager) in 85 s and 76 s, one after the other; KV caches of 678,640
and 1,947,872 tokens; prompt token counts equal to the preset tokenizer's.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from orchestrator.device import detect_gpu
from servers.launch import RunningTenant, read_kv_cache_info, start_tenant
from servers.proctable import group_members
from servers.spec import EncoderTenant, VllmTenant
from servers.vllm import installed_engine

pytestmark = [pytest.mark.e2e, pytest.mark.gpu, pytest.mark.slow]

if installed_engine() != "cuda" or detect_gpu(0) is None:
    pytest.skip("needs an NVIDIA GPU and the CUDA vLLM", allow_module_level=True)

PROMPT = "The quick brown fox jumps over the lazy dog"


def test_shape_presets_and_encoder_share_the_gpu(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    started: list[RunningTenant] = []
    try:
        enc = EncoderTenant(name="bge", model="bge-base-shape", start_timeout_s=300)
        e = start_tenant(enc, share=0.05, log_path=tmp_path / "bge.log", cache_root=tmp_path)
        started.append(e)
        r = httpx.post(f"{e.openai_url}/embeddings", json={"input": ["x"] * 64}, timeout=60)
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 768
        assert "CUDA memory limited to 0.050" in e.process.log_tail(100)
        # one after the other: vLLM sizes its KV cache from what is free when it profiles
        for name, model in (("llama1b", "llama-3.2-1b"), ("qwen05", "qwen2.5-0.5b")):
            t = VllmTenant(
                name=name, model=model, enforce_eager=True, max_model_len=4096, start_timeout_s=400
            )
            v = start_tenant(
                t, share=0.3, log_path=tmp_path / f"{name}.log", cache_root=tmp_path / "cache"
            )
            started.append(v)
            assert v.resolved.load_format == "dummy"
            assert read_kv_cache_info(v)["kv_cache_tokens"] > 100_000
            with httpx.stream(
                "POST",
                f"{v.openai_url}/completions",
                timeout=120,
                json={
                    "model": v.served_name,
                    "prompt": PROMPT,
                    "max_tokens": 32,
                    "ignore_eos": True,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                },
            ) as s:
                events = [
                    json.loads(ln[5:])
                    for ln in s.iter_lines()
                    if ln.startswith("data:") and ln.strip() != "data: [DONE]"
                ]
            usage = [ev["usage"] for ev in events if ev.get("usage")][-1]
            tok = Tokenizer.from_file(str(Path(v.resolved.path) / "tokenizer.json"))
            assert usage["completion_tokens"] == 32
            assert usage["prompt_tokens"] == len(tok.encode(PROMPT).ids)
    finally:
        pgids = [r.process.pgid for r in started]
        for r in reversed(started):
            r.stop()
    assert all(group_members(p) == [] for p in pgids if p is not None)
