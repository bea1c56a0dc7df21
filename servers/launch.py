"""From a tenant spec to a running, healthy server.

``vllm_argv_env`` (in ``servers.vllm``) and ``encoder_argv_env`` build the command line and
environment (pure functions: the orchestrator's ``--dry-run`` can print them);
``start_tenant`` resolves the model (building a preset on first use), starts the process and
waits for ``/health``; ``read_kv_cache_info`` reads the KV cache the vLLM engine really
allocated.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from servers.env import REPO_ROOT, base_env, share_arg
from servers.errors import PortInUseError, ServerError
from servers.presets import ResolvedModel, resolve_model
from servers.process import ServerProcess, free_port, read_tail
from servers.spec import EncoderTenant, VllmTenant
from servers.vllm import (
    Backend,
    kv_info_from_labels,
    kv_info_from_log,
    parse_cache_config_info,
    vllm_argv_env,
)

Tenant = VllmTenant | EncoderTenant
Api = Literal["completions", "embeddings"]


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


# ---- the encoder's argv and environment -----------------------------------------------------


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
        share_arg(share),
        "--dtype",
        tenant.dtype,
    ]
    if tenant.device:
        argv += ["--device", tenant.device]
    if resolved.random_weights:
        argv.append("--random-weights")
    env = base_env(resolved, None)
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
    backend: Backend | None = None,
) -> RunningTenant:
    """Start a tenant without waiting for it (see ``start_tenant``). ``backend`` (cpu or
    cuda) is what the orchestrator decided the device is; None: the installed engine's."""
    resolved = resolved or resolve_model(tenant)
    port = port or tenant.port or free_port(_client_host(tenant.host))
    if isinstance(tenant, VllmTenant):
        argv, env = vllm_argv_env(tenant, resolved, share, port, cache_root, extra_env=extra_env,
                                  backend=backend)
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


PORT_PICKS = 3  # a port cotenant picks is picked again when taken before the bind


def start_tenant(
    tenant: Tenant,
    *,
    share: float,
    log_path: str | Path,
    cache_root: str | Path,
    port: int | None = None,
    extra_env: Mapping[str, str] | None = None,
    resolved: ResolvedModel | None = None,
    backend: Backend | None = None,
    on_event: Callable[[str], None] | None = None,
) -> RunningTenant:
    """Resolve the model, start the server on ``port`` (the spec's, else a free one) and
    wait until ``/health`` answers. Raises PortInUseError, ServerStartError (with the log
    tail) or PresetError; on any failure nothing is left running. Where the spec names no
    port, one that another process took between its pick and the server's bind is picked
    again (``PORT_PICKS`` in all; ``on_event`` hears of it); a spec's own port is the spec's
    to fix."""
    for pick in range(PORT_PICKS):
        running = launch_tenant(
            tenant,
            share=share,
            log_path=log_path,
            cache_root=cache_root,
            port=port,
            extra_env=extra_env,
            resolved=resolved,
            backend=backend,
        )
        try:
            return wait_tenant(running)
        except PortInUseError:
            running.process.stop()
            if tenant.port is not None or pick == PORT_PICKS - 1:
                raise
            if on_event is not None:
                on_event(f"{tenant.name}: port {running.port} was taken before the server "
                         "bound it; picking another")
            port = None
        except BaseException:
            running.process.stop()
            raise
    raise AssertionError("unreachable: the last pick returns or raises")


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
