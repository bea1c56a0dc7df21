"""Which limit binds: the resources a tenant is measured to saturate in one experiment.

One reading for capacity knees (the probe just past capacity), for profiles over a ladder
of loads and for co-located sets: each figure below is measured in the experiment's
window (means over samples; the client's lag is its p99), and a limit binds when its figure
is at or past the threshold. "Nothing saturated" is a valid reading (an empty list).

| limit | figure | binds at |
| --- | --- | --- |
| ``batch limit`` | vLLM requests running (scraped), against ``max_num_seqs`` | >= 95% |
| ``KV cache`` | vLLM KV cache use (scraped) | >= 90% |
| ``GPU busy`` | NVML GPU utilization (the share of time a kernel ran) | >= 95% |
| ``memory bandwidth`` | GPM DRAM bandwidth utilization | >= 80% |
| ``engine CPU`` | the tenant's process tree CPU, in cores (a vLLM engine core is one busy host thread); CPU backend only | >= 0.9 core |
| ``host CPU`` | the whole host's CPU (every core) | >= 90% |
| ``client`` | the replayer's dispatch lag, p99 (it could not send on time) | >= 50 ms |

The engine-CPU reading applies to vLLM tenants on the CPU backend (the encoder's batcher is
not one thread: on the CPU it uses every core it is given, which ``host CPU`` reads). On a
GPU it is not judged: CUDA synchronisation spins the engine's host thread (the default
schedule when there are fewer contexts than cores), and the API server is a busy process of
its own, so the tree reads 1.5-2 cores at every load (measured on an H200, issue 18) whether
or not the host thread is what limits. Figures that were not measured (no GPU, no GPM, no
/metrics) never bind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

BATCH_LIMIT = "batch limit"
KV_CACHE = "KV cache"
GPU_BUSY = "GPU busy"
MEMORY_BANDWIDTH = "memory bandwidth"
ENGINE_CPU = "engine CPU"
HOST_CPU = "host CPU"
CLIENT = "client"
NOTHING = "nothing saturated"

LIMITS = (BATCH_LIMIT, KV_CACHE, GPU_BUSY, MEMORY_BANDWIDTH, ENGINE_CPU, HOST_CPU, CLIENT)

BATCH_FRAC = 0.95
KV_FRAC = 0.90
GPU_BUSY_PCT = 95.0
DRAM_PCT = 80.0
ENGINE_CORES = 0.9
HOST_CPU_PCT = 90.0
CLIENT_LAG_S = 0.050


def _num(row: Mapping[str, Any], key: str) -> float | None:
    v = row.get(key)
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f  # NaN: not measured


def judges_engine_cpu(row: Mapping[str, Any], kind: str) -> bool:
    """Whether the engine-CPU limit is read for this tenant: a vLLM tenant with no GPU figure
    in ``row`` (the module doc says why not on a GPU)."""
    return kind == "vllm" and _num(row, "gpu_util_mean_pct") is None


def binding_limits(row: Mapping[str, Any], *, kind: str = "vllm",
                   max_num_seqs: int | None = None) -> list[str]:
    """The limits that bind in one experiment for one tenant, in the order of ``LIMITS``.

    ``row`` holds the tenant's figures of the experiment table (``requests_running_mean``,
    ``kv_cache_usage_mean``, ``proc_cpu_mean_pct``, ``send_delay_p99_s``) and the
    experiment's device figures (``gpu_util_mean_pct``, ``gpm_dram_bw_util_mean_pct``,
    ``host_cpu_mean_pct``); ``kind`` is the tenant's (vllm | encoder).
    """
    out: list[str] = []
    running = _num(row, "requests_running_mean")
    if kind == "vllm" and running is not None and max_num_seqs and (
            running >= BATCH_FRAC * max_num_seqs):
        out.append(BATCH_LIMIT)
    kv = _num(row, "kv_cache_usage_mean")
    if kind == "vllm" and kv is not None and kv >= KV_FRAC:
        out.append(KV_CACHE)
    gpu = _num(row, "gpu_util_mean_pct")
    if gpu is not None and gpu >= GPU_BUSY_PCT:
        out.append(GPU_BUSY)
    dram = _num(row, "gpm_dram_bw_util_mean_pct")
    if dram is not None and dram >= DRAM_PCT:
        out.append(MEMORY_BANDWIDTH)
    cpu = _num(row, "proc_cpu_mean_pct")
    if judges_engine_cpu(row, kind) and cpu is not None and cpu / 100.0 >= ENGINE_CORES:
        out.append(ENGINE_CPU)
    host = _num(row, "host_cpu_mean_pct")
    if host is not None and host >= HOST_CPU_PCT:
        out.append(HOST_CPU)
    lag = _num(row, "send_delay_p99_s")
    if lag is not None and lag >= CLIENT_LAG_S:
        out.append(CLIENT)
    return out


def describe(limits: list[str]) -> str:
    """``"batch limit and KV cache"``, or ``"nothing saturated"``."""
    if not limits:
        return NOTHING
    if len(limits) == 1:
        return limits[0]
    return ", ".join(limits[:-1]) + " and " + limits[-1]
