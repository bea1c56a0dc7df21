"""The planner's arithmetic against figures computed by hand from the public model shapes."""

from __future__ import annotations

import pytest

from orchestrator.errors import PlanError
from orchestrator.planner import (
    GiB,
    decoder_param_count,
    encoder_param_count,
    kv_bytes_per_token,
    plan_memory,
    tenant_need,
)
from servers.spec import EncoderTenant, VllmTenant

LLAMA_1B = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, head_dim=64, intermediate_size=8192, vocab_size=128256,
                tie_word_embeddings=True, torch_dtype="bfloat16", model_type="llama",
                max_position_embeddings=131072)
LLAMA_8B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
                tie_word_embeddings=False, torch_dtype="bfloat16", model_type="llama")
QWEN_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, intermediate_size=4864, vocab_size=151936,
                tie_word_embeddings=True, torch_dtype="bfloat16", model_type="qwen2",
                max_position_embeddings=32768)
QWEN_7B = dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, intermediate_size=18944, vocab_size=152064,
               tie_word_embeddings=False, torch_dtype="bfloat16", model_type="qwen2")
MINILM = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
              intermediate_size=1536, vocab_size=30522, max_position_embeddings=512,
              type_vocab_size=2, torch_dtype="float32")


@pytest.mark.parametrize(
    "config, params, kv_per_token",
    [
        # embed 262,668,288 + 16 x 60,821,504 + final norm 2,048 (tied head)
        (LLAMA_1B, 1_235_814_400, 16 * 8 * 64 * 2 * 2),
        # embed + 32 x 218,112,000 + norm + untied head 525,336,576
        (LLAMA_8B, 8_030_261_248, 32 * 8 * 128 * 2 * 2),
        # qkv biases: 896 + 2 x 128 a layer
        (QWEN_05B, 494_032_768, 24 * 2 * 64 * 2 * 2),
        (QWEN_7B, 7_615_616_512, 28 * 4 * 128 * 2 * 2),
    ],
)
def test_decoder_params_and_kv(config, params, kv_per_token):
    assert decoder_param_count(config) == params
    assert kv_bytes_per_token(config) == kv_per_token


def test_kv_per_token_known_values():
    assert kv_bytes_per_token(LLAMA_1B) == 32 * 1024  # 32 KiB a token
    assert kv_bytes_per_token(LLAMA_8B) == 128 * 1024
    assert kv_bytes_per_token(LLAMA_1B, "float32") == 64 * 1024


def test_encoder_params_minilm():
    # embeddings (30522 + 512 + 2) x 384 + LN 768; 6 layers x 1,774,464; pooler 147,840
    assert encoder_param_count(MINILM) == 22_713_216


def _tenants():
    return [
        VllmTenant(name="llama", model="llama-3.2-1b", max_model_len=4096, max_num_seqs=64),
        VllmTenant(name="qwen", model="qwen2.5-0.5b", max_model_len=4096, max_num_seqs=64),
        EncoderTenant(name="minilm", model="minilm-l6-shape", max_batch=64),
    ]


def test_plan_h100_shares_fit_and_kv_capacity():
    cfg = {"llama": LLAMA_1B, "qwen": QWEN_05B, "minilm": MINILM}
    needs = [tenant_need(t, cfg[t.name], "cuda") for t in _tenants()]
    total = 80 * GiB
    plan = plan_memory(needs, total_bytes=total, backend="cuda", reserve_frac=0.05)
    llama = plan.by_name("llama")
    # want = weights 2,471,628,800 + runtime 1 GiB + 32 KiB x 4096 x 64 = 8 GiB of KV
    want = 2_471_628_800 + GiB + 32 * 1024 * 4096 * 64
    assert llama.share == pytest.approx(0.15)  # ceil(0.1413, 0.01)
    assert want / total == pytest.approx(0.1413, abs=1e-4)
    assert llama.kv_tokens == (llama.share_bytes - 2_471_628_800 - GiB) // (32 * 1024)
    assert llama.concurrent_seqs == pytest.approx(llama.kv_tokens / 4096)
    assert llama.concurrent_seqs >= 64
    assert plan.start_order[0] == "minilm"  # encoder first, warmed before any vLLM
    assert plan.free_bytes >= 0


def test_plan_squeezes_to_minimum_then_refuses():
    cfg = {"llama": LLAMA_1B, "qwen": QWEN_05B, "minilm": MINILM}
    needs = [tenant_need(t, cfg[t.name], "cuda") for t in _tenants()]
    # 16 GiB: the wants (8 GiB KV each) do not fit, the minimums do
    plan = plan_memory(needs, total_bytes=16 * GiB, backend="cuda")
    assert plan.free_bytes >= 0
    for t in plan.tenants:
        if t.kind == "vllm":
            assert t.kv_tokens is not None and t.kv_tokens >= 4096  # one full sequence
    with pytest.raises(PlanError) as e:
        plan_memory(needs, total_bytes=6 * GiB, backend="cuda")
    msg = str(e.value)
    assert "do not fit" in msg and "llama" in msg and "qwen" in msg and "total" in msg


def test_pinned_share_kept_and_overcommit_by_pins_refused():
    ts = [
        VllmTenant(name="a", model="x", memory_share=0.5),
        VllmTenant(name="b", model="y", memory_share=0.5),
    ]
    needs = [tenant_need(t, LLAMA_1B, "cuda") for t in ts]
    with pytest.raises(PlanError):
        plan_memory(needs, total_bytes=80 * GiB, backend="cuda")
    ok = plan_memory(needs[:1], total_bytes=80 * GiB, backend="cuda")
    assert ok.share("a") == 0.5 and ok.by_name("a").pinned


def test_unknown_config_needs_a_pin():
    t = VllmTenant(name="a", model="org/some-model")
    with pytest.raises(PlanError, match="pin its memory_share"):
        tenant_need(t, None, "cuda")
    pinned = VllmTenant(name="a", model="org/some-model", memory_share=0.3)
    plan = plan_memory([tenant_need(pinned, None, "cuda")], total_bytes=80 * GiB, backend="cuda")
    assert plan.share("a") == 0.3


def test_fixed_kv_bytes_is_the_kv():
    t = VllmTenant(name="a", model="m", kv_cache_memory_bytes=2 * GiB, max_model_len=4096)
    plan = plan_memory([tenant_need(t, LLAMA_1B, "cuda")], total_bytes=80 * GiB, backend="cuda")
    assert plan.by_name("a").kv_bytes == 2 * GiB
    assert plan.by_name("a").kv_tokens == 2 * GiB // (32 * 1024)


def test_an_encoder_without_a_config_still_gets_a_share():
    """A folder the planner cannot size (no config.json: a broken model path) must not get a
    share of 0, which the server refuses: the tenant then fails to start with its own error
    (quoted from its log) instead of the campaign crashing on the share."""
    t = EncoderTenant(name="enc", model="/models/not-a-model")
    plan = plan_memory([tenant_need(t, None, "cpu")], total_bytes=24 * GiB, backend="cpu")
    assert plan.share("enc") >= 0.01
