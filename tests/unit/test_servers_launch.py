"""Command lines and environments of tenants, and reading the KV cache size."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from servers import vllm
from servers.env import REPO_ROOT
from servers.launch import encoder_argv_env
from servers.presets import ResolvedModel
from servers.spec import EncoderTenant, VllmTenant
from servers.vllm import (
    kv_info_from_labels,
    kv_info_from_log,
    parse_cache_config_info,
    vllm_argv_env,
)

LOCAL = ResolvedModel(
    str(Path(__file__).parent), str(Path(__file__).parent), True, None, "tiny-llama"
)  # any existing folder: a local model
DUMMY = ResolvedModel("/models/q", "/models/q", True, "dummy", "qwen2.5-0.5b")


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_vllm_argv(tmp_path: Path) -> None:
    t = VllmTenant(
        name="llama-a",
        model="tiny-llama",
        served_name="chat",
        max_model_len=1024,
        max_num_seqs=16,
        dtype="bfloat16",
        kv_cache_memory_bytes=123456789,
        enforce_eager=True,
        engine_args=["--seed", "7"],
        api_key="k3y",
    )
    argv, env = vllm_argv_env(t, LOCAL, 0.25, 8123, tmp_path, backend="cpu", vllm_port=21000,
                              cpu_flags=frozenset())  # no AMX: the tenant's dtype as given
    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry"]
    assert flag(argv, "--model") == LOCAL.path
    assert flag(argv, "--served-model-name") == "chat"
    assert flag(argv, "--port") == "8123" and flag(argv, "--host") == "127.0.0.1"
    assert flag(argv, "--gpu-memory-utilization") == "0.25"
    assert flag(argv, "--max-model-len") == "1024" and flag(argv, "--max-num-seqs") == "16"
    assert flag(argv, "--dtype") == "bfloat16"
    assert flag(argv, "--kv-cache-memory-bytes") == "123456789"
    assert "--enforce-eager" in argv and "--load-format" not in argv
    assert argv[-2:] == ["--seed", "7"]  # engine args last, untouched
    assert "k3y" not in " ".join(argv) and env["VLLM_API_KEY"] == "k3y"
    assert env["VLLM_CACHE_ROOT"] == str(tmp_path.resolve() / "llama-a")
    assert env["VLLM_PORT"] == "21000"
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind" and env["OMP_NUM_THREADS"] == "1"
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # the worker in the engine core


def test_vllm_shape_preset_uses_dummy_weights(tmp_path: Path) -> None:
    t = VllmTenant(name="q", model="qwen2.5-0.5b")
    argv, env = vllm_argv_env(t, DUMMY, 0.3, 8000, tmp_path, backend="cuda", vllm_port=22000)
    assert flag(argv, "--load-format") == "dummy"
    assert "--enforce-eager" not in argv and "--kv-cache-memory-bytes" not in argv
    # no CPU settings on a GPU
    assert env.get("VLLM_CPU_OMP_THREADS_BIND") == os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    # the spec's load_format wins over the preset's
    t2 = VllmTenant(name="q", model="qwen2.5-0.5b", load_format="safetensors")
    argv2, _ = vllm_argv_env(t2, DUMMY, 0.3, 8000, tmp_path, backend="cuda", vllm_port=22000)
    assert flag(argv2, "--load-format") == "safetensors"


def test_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "40")  # legacy: would override the plan
    t = VllmTenant(name="a", model="tiny-llama", env={"OMP_NUM_THREADS": "2", "X": "tenant"})
    _, env = vllm_argv_env(
        t,
        LOCAL,
        0.1,
        8000,
        tmp_path,
        backend="cpu",
        vllm_port=21000,
        extra_env={"X": "extra", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50"},
    )
    assert "VLLM_CPU_KVCACHE_SPACE" not in env
    assert env["OMP_NUM_THREADS"] == "2" and env["X"] == "tenant"
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"


def test_hf_ids_are_not_forced_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub = ResolvedModel("org/model", "org/model", False, None, None)
    _, env = vllm_argv_env(
        VllmTenant(name="a", model="org/model"),
        hub,
        0.5,
        8000,
        tmp_path,
        backend="cuda",
        vllm_port=21000,
    )
    assert "HF_HUB_OFFLINE" not in env


def test_vllm_port_bases_differ() -> None:
    bases = {vllm.vllm_port_base() for _ in range(4)}
    assert len(bases) == 4
    assert all(vllm.VLLM_PORT_RANGE[0] <= b < vllm.VLLM_PORT_RANGE[1] for b in bases)
    assert min(abs(a - b) for a in bases for b in bases if a != b) >= vllm.VLLM_PORT_SPAN


def test_share_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="share"):
        vllm_argv_env(
            VllmTenant(name="a", model="m/x"),
            LOCAL,
            1.5,
            8000,
            tmp_path,
            backend="cpu",
            vllm_port=21000,
        )


def test_encoder_argv() -> None:
    t = EncoderTenant(
        name="emb",
        model="bge-base-shape",
        max_batch=32,
        batch_window_ms=2,
        max_queue=100,
        max_items=50,
        device="cuda",
        api_key="k",
    )
    res = ResolvedModel("/models/bge", "/models/bge", True, None, "bge-base-shape")
    argv, env = encoder_argv_env(t, res, 0.125, 9001)
    assert argv[:3] == [sys.executable, "-m", "servers.encoder"]
    assert flag(argv, "--model") == "/models/bge" and flag(argv, "--served-name") == "emb"
    assert flag(argv, "--port") == "9001" and flag(argv, "--max-batch") == "32"
    assert flag(argv, "--batch-window-ms") == "2.0" and flag(argv, "--max-queue") == "100"
    assert flag(argv, "--max-items") == "50" and flag(argv, "--memory-share") == "0.125"
    assert flag(argv, "--device") == "cuda" and "--random-weights" in argv
    assert "--api-key" not in argv and env["COTENANT_ENCODER_API_KEY"] == "k"
    assert str(REPO_ROOT) in env["PYTHONPATH"].split(":")


def test_the_encoder_cli_accepts_what_the_launcher_writes() -> None:
    from servers.encoder.__main__ import parse_args

    t = EncoderTenant(name="emb", model="all-minilm-l6-v2")
    res = ResolvedModel("/m", "/m", False, None, "all-minilm-l6-v2")
    argv, _ = encoder_argv_env(t, res, 0.1, 9001)
    args = parse_args(argv[3:])
    assert args.served_name == "emb" and args.port == 9001 and not args.random_weights


def test_vllm_module_is_the_non_deprecated_one() -> None:
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")
    assert vllm.vllm_module() == "vllm.entrypoints.launchers.api_server.entry"


METRICS = """\
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{_block_size_resolved="True",block_size="128",cache_dtype="auto",engine="0",gpu_memory_utilization="0.1",kv_cache_max_concurrency="108.0625",kv_cache_memory_bytes="None",kv_cache_size_tokens="221312",num_cpu_blocks="None",num_gpu_blocks="1729",num_gpu_blocks_override="None"} 1.0
vllm:num_requests_running{engine="0",model_name="tl"} 0.0
"""


def test_kv_info_from_metrics() -> None:
    labels = parse_cache_config_info(METRICS)
    assert labels is not None and labels["num_gpu_blocks"] == "1729"
    info = kv_info_from_labels(labels, 2048)
    assert info["kv_cache_tokens"] == 221312 == 1729 * 128
    assert info["num_blocks"] == 1729 and info["block_size"] == 128
    assert info["max_concurrency"] == pytest.approx(108.0625)
    assert info["source"] == "metrics"


def test_kv_info_from_blocks_when_older_vllm_has_no_token_label() -> None:
    labels = {"num_gpu_blocks": "100", "block_size": "16"}
    info = kv_info_from_labels(labels, 800)
    assert info["kv_cache_tokens"] == 1600 and info["max_concurrency"] == 2.0


def test_kv_info_from_log() -> None:
    log = (
        "(EngineCore pid=1) INFO [kv_cache_utils.py:2327] CPU KV cache size: 221,312 tokens, "
        "Maximum concurrency for 2,048 tokens per request: 108.06x\n"
    )
    info = kv_info_from_log(log)
    assert info is not None
    assert info["kv_cache_tokens"] == 221312 and info["max_concurrency"] == 108.06
    gpu = "GPU KV cache size: 1,234,560 tokens"
    assert (kv_info_from_log(gpu) or {})["kv_cache_tokens"] == 1234560
    assert kv_info_from_log("nothing here") is None
    assert parse_cache_config_info("vllm:num_requests_running 0") is None


def test_cpu_memory_total_is_what_vllm_cpu_reads() -> None:
    import psutil

    total = vllm.cpu_memory_total_bytes()
    assert 0 < total <= psutil.virtual_memory().total * 1.01
    node = Path("/sys/devices/system/node/node0/meminfo")
    if node.is_file():
        kib = next(int(ln.split()[3]) for ln in node.read_text().splitlines() if "MemTotal" in ln)
        assert abs(total - kib * 1024) < 512 * 1024 * 1024  # the node may grow meanwhile
