"""The binding-limit reading at its thresholds."""

from __future__ import annotations

import math

from reports.limits import (
    BATCH_LIMIT,
    CLIENT,
    ENGINE_CPU,
    GPU_BUSY,
    HOST_CPU,
    KV_CACHE,
    MEMORY_BANDWIDTH,
    binding_limits,
    describe,
)


def test_nothing_measured_binds_nothing() -> None:
    assert binding_limits({}, max_num_seqs=64) == []
    assert describe([]) == "nothing saturated"


def test_each_limit_at_its_threshold_and_just_below() -> None:
    at = {
        "requests_running_mean": 0.95 * 64,
        "kv_cache_usage_mean": 0.90,
        "gpu_util_mean_pct": 95.0,
        "gpm_dram_bw_util_mean_pct": 80.0,
        "proc_cpu_mean_pct": 90.0,
        "host_cpu_mean_pct": 90.0,
        "send_delay_p99_s": 0.050,
    }
    # on a GPU the engine's CPU is not judged (CUDA synchronisation spins its host thread)
    assert binding_limits(at, max_num_seqs=64) == [
        BATCH_LIMIT, KV_CACHE, GPU_BUSY, MEMORY_BANDWIDTH, HOST_CPU, CLIENT]
    cpu_backend = {k: v for k, v in at.items() if not k.startswith(("gpu_", "gpm_"))}
    assert binding_limits(cpu_backend, max_num_seqs=64) == [
        BATCH_LIMIT, KV_CACHE, ENGINE_CPU, HOST_CPU, CLIENT]
    below = {k: v * 0.99 for k, v in at.items()}
    assert binding_limits(below, max_num_seqs=64) == []
    assert binding_limits({k: v * 0.99 for k, v in cpu_backend.items()}, max_num_seqs=64) == []


def test_vllm_only_limits_do_not_apply_to_the_encoder() -> None:
    row = {"requests_running_mean": 64, "kv_cache_usage_mean": 1.0, "proc_cpu_mean_pct": 180.0,
           "host_cpu_mean_pct": 97.0}
    assert binding_limits(row, kind="encoder", max_num_seqs=64) == [HOST_CPU]


def test_nan_and_missing_batch_limit_do_not_bind() -> None:
    row = {"gpu_util_mean_pct": math.nan, "requests_running_mean": 70.0}
    assert binding_limits(row, max_num_seqs=None) == []
    assert describe([GPU_BUSY, KV_CACHE, CLIENT]) == "GPU busy, KV cache and client"
