"""Telemetry: sample the GPU (NVML) or the host (psutil) on a thread while an experiment runs.

One row a sample and scope, as ``docs/run-directory.md`` (telemetry.parquet) says:

- a ``device`` row every ``interval_s`` (default 100 ms): GPU counters from NVML when a GPU
  answers (``source='nvml'``), plus the host's CPU% and memory, which both sources fill;
- per-tenant rows every ``process_interval_s`` (default 0.5 s): the tenant's GPU memory
  (NVML process list) and the CPU% and RSS of its process tree (root pid and all children).

The sampler schedules on absolute time (one anchor on its tick clock, ``perf_counter``
unless a test injects another, see ``periodic.py``; tick k is due at ``anchor + k *
interval``), so it does not drift; a tick that falls behind skips the ticks it missed
(counted) instead of bursting. ``t_s`` comes from the experiment's clock (any
object with ``now_s()``, e.g. ``workloads.clock.ExperimentClock``), so samples join request
rows. One failing NVML or psutil call makes its columns null for that sample and never
stops the thread.

Costs. Each NVML read is timed once at start (``sampler_cost()['call_costs_us']``). A read
slower than ``SLOW_CALL_S`` (1 ms) is read only every ``max(process_interval_s, cost /
SLOW_READ_BUDGET)`` seconds, i.e. it may take at most 0.5% of the wall time, and its
columns are null in the rows between. The per-tenant rows follow the same rule with the
cost of the NVML process list. On the H100 of shared/gpu the energy counter costs 2.4-5.6 ms
a call, so ``energy_j`` is filled about every 0.5-1.1 s (null in the rows between);
utilization, memory, power, clocks, temperature and the process list cost 2-15 us, GPM
90-190 us. ``nvmlDeviceGetSamples`` (buffered utilization) costs 1.4 ms there and is not used.

Mapping GPU processes to tenants. NVML reports pids; a pid that is in a tenant's process
tree counts for that tenant (a vLLM server's GPU work runs in its EngineCore child). A pid
that matches no tenant is written as its own row with scope ``pid:<n>`` (e.g. the MPS server,
or another user's job). Inside a container NVML may report host pids that this pid namespace
cannot see: then no pid matches, and the tenants' ``proc_gpu_mem_bytes`` is null (unknown)
rather than 0, while the ``pid:<n>`` rows still carry the memory by host pid. When at least
one pid matches, a tenant with no GPU process gets 0.

Units: ``host_cpu_pct`` is the whole host, 0-100; ``proc_cpu_pct`` is psutil's per-process
convention, 100 = one core busy, summed over the tree. ``host_mem_used_bytes`` is
total - available. ``proc_rss_bytes`` sums RSS over the tree (shared pages count once a
process). ``mem_used_bytes`` is the GPU's total - free. ``energy_j`` counts from the
sampler's start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import psutil

from orchestrator.telemetry.host import HostSource
from orchestrator.telemetry.nvml import NvmlSource
from orchestrator.telemetry.periodic import SYSTEM_CLOCK, Clock, Periodic, TickClock
from rundir.io import atomic_write_parquet
from rundir.schema import TELEMETRY_SCHEMA, rows_to_frame

log = logging.getLogger(__name__)


@dataclass
class _TickCost:
    samples: int = 0
    tenant_samples: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    wall_max_s: float = 0.0
    tenant_cpu_s: float = 0.0
    tenant_wall_s: float = 0.0

    def add(self, cpu_s: float, wall_s: float, tenants: bool) -> None:
        self.samples += 1
        self.cpu_s += cpu_s
        self.wall_s += wall_s
        self.wall_max_s = max(self.wall_max_s, wall_s)
        if tenants:
            self.tenant_samples += 1
            self.tenant_cpu_s += cpu_s
            self.tenant_wall_s += wall_s


class Sampler:
    """Samples the GPU (or the host) and the tenants' processes on its own thread.

    ``tenants`` maps a tenant's name to its root pid (the server process; its children are
    found each time). ``nvml=False`` forces the host source. ``tick_clock`` says when samples
    are due (``periodic.TickClock``; tests inject one they advance). Use as a context manager
    or ``start()`` / ``stop()``; ``stop()`` returns the frame, ``write(path)`` writes it.
    """

    def __init__(
        self,
        clock: Clock,
        tenants: Mapping[str, int],
        *,
        experiment_id: str,
        interval_s: float = 0.1,
        process_interval_s: float = 0.5,
        gpu_index: int = 0,
        gpm: bool = True,
        nvml: bool = True,
        tick_clock: TickClock = SYSTEM_CLOCK,
    ) -> None:
        if interval_s <= 0 or process_interval_s <= 0:
            raise ValueError("interval_s and process_interval_s must be > 0")
        self.clock = clock
        self.tick_clock = tick_clock  # when ticks are due (periodic.py)
        self.experiment_id = experiment_id
        self.interval_s = interval_s
        self.process_interval_s = process_interval_s
        self.process_interval_effective_s = max(process_interval_s, interval_s)
        self.gpu_index = gpu_index
        self.gpm = gpm
        self.use_nvml = nvml
        self.host = HostSource()
        self.nvml: NvmlSource | None = None
        self.nvml_unavailable: str | None = None if nvml else "disabled by the caller"
        self._tenants: dict[str, int] = dict(tenants)
        self._tenants_changed = False
        self._lock = threading.Lock()
        self._rows: list[dict[str, Any]] = []
        self._loop: Periodic | None = None
        self._next_tenants = 0.0
        self._strangers: set[int] = set()  # GPU pids that matched no tenant at the last rescan
        self._stopped_frame: pl.DataFrame | None = None
        self._cost = _TickCost()

    @property
    def source(self) -> str:
        return "nvml" if self.nvml is not None else "host"

    # ---- life

    def start(self) -> Sampler:
        if self._loop is not None:
            raise RuntimeError("Sampler already started")
        if self.use_nvml:
            src = NvmlSource(self.gpu_index, gpm=self.gpm, slow_period_s=self.process_interval_s)
            try:
                src.open()
                self.nvml = src
            except RuntimeError as e:
                self.nvml_unavailable = str(e)
                log.info("no NVML, sampling the host: %s", e)
        if self.nvml is not None:
            period = self.nvml.process_list_period_s(self.process_interval_s)
            self.process_interval_effective_s = max(period, self.interval_s)
            if period > self.process_interval_s:
                log.info("slow NVML process list: per-tenant rows every %.2f s", period)
            for name, p in self.nvml.read_periods_s.items():
                log.info(
                    "slow NVML read %s (%.0f us): read every %.2f s",
                    name,
                    self.nvml.call_costs_us[name],
                    p,
                )
        self.host.open()
        with self._lock:
            tenants = dict(self._tenants)
        self.host.tree_usage(self.host.trees(tenants))  # CPU baseline for the first tenant rows
        # the first tenant rows come one process interval in: CPU% needs an interval
        self._next_tenants = self.tick_clock.now() + self.process_interval_effective_s
        self._loop = Periodic("cotenant-sampler", self.interval_s, self._tick, self.tick_clock)
        self._loop.start()
        return self

    def stop(self) -> pl.DataFrame:
        """Stop the thread (promptly), release NVML, and return every row as a frame."""
        if self._stopped_frame is not None:
            return self._stopped_frame
        if self._loop is not None:
            self._loop.stop()
        if self.nvml is not None:
            self.nvml.close()
        self._stopped_frame = self.frame()
        return self._stopped_frame

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_tenants(self, tenants: Mapping[str, int]) -> None:
        """Replace the tenants (name -> root pid), e.g. after a server restarted."""
        with self._lock:
            self._tenants = dict(tenants)
            self._tenants_changed = True

    def frame(self) -> pl.DataFrame:
        """The rows so far, as a frame with ``TELEMETRY_SCHEMA``."""
        with self._lock:
            rows = list(self._rows)
        return rows_to_frame(rows, TELEMETRY_SCHEMA)

    def write(self, path: str | Path) -> pl.DataFrame:
        """Write the rows (all of them once stopped, else those so far) atomically as Parquet."""
        df = self._stopped_frame if self._stopped_frame is not None else self.frame()
        atomic_write_parquet(path, df)
        return df

    # ---- one tick

    def _tick(self) -> None:
        cpu0, wall0 = time.thread_time(), time.perf_counter()  # what the tick costs
        now = self.tick_clock.now()  # what is due
        tenants = now >= self._next_tenants
        if tenants:
            self._next_tenants += self.process_interval_effective_s
            if self._next_tenants <= now:  # fell behind: back on a grid ahead of now
                self._next_tenants = now + self.process_interval_effective_s
        t_s = self.clock.now_s()
        base = {"experiment_id": self.experiment_id, "t_s": t_s, "source": self.source}
        device = {**base, "scope": "device", **self.host.device()}
        if self.nvml is not None:
            device.update(self.nvml.device(now))
        rows = [device]
        if tenants:
            rows.extend(self._tenant_rows(base))
        with self._lock:
            self._rows.extend(rows)
        self._cost.add(time.thread_time() - cpu0, time.perf_counter() - wall0, tenants)

    def _tenant_rows(self, base: dict[str, Any]) -> list[dict[str, Any]]:
        with self._lock:
            tenants = dict(self._tenants)
            changed, self._tenants_changed = self._tenants_changed, False
        trees = self.host.trees(tenants, force=changed)
        procs = self.nvml.processes() if self.nvml is not None else None
        owner = {pid: t for t, pids in trees.items() for pid in pids}
        strangers = {pid for pid, _ in procs or () if pid not in owner}
        if strangers - self._strangers:  # a new child may hold GPU memory: rescan, once
            trees = self.host.trees(tenants, force=True)
            owner = {pid: t for t, pids in trees.items() for pid in pids}
            strangers = {pid for pid in strangers if pid not in owner}
        self._strangers = strangers
        usage = self.host.tree_usage(trees)
        gpu_mem: dict[str, int] = {}
        unmatched: list[tuple[int, int | None]] = []
        for pid, used in procs or ():
            if pid in owner:
                gpu_mem[owner[pid]] = gpu_mem.get(owner[pid], 0) + (used or 0)
            else:
                unmatched.append((pid, used))
        # NVML lists processes, none is a tenant's and some are not in this pid namespace:
        # NVML speaks host pids (a container), so the tenants' GPU memory is unknown, not 0
        pids_unknown = (
            bool(procs) and not gpu_mem and any(not psutil.pid_exists(p) for p, _ in unmatched)
        )
        rows: list[dict[str, Any]] = []
        for tenant in tenants:
            cpu, rss = usage.get(tenant, (None, None))
            row = {**base, "scope": tenant, "proc_cpu_pct": cpu, "proc_rss_bytes": rss}
            if procs is not None and not pids_unknown:
                row["proc_gpu_mem_bytes"] = gpu_mem.get(tenant, 0)
            rows.append(row)
        for pid, used in unmatched:
            rows.append({**base, "scope": f"pid:{pid}", "proc_gpu_mem_bytes": used})
        return rows

    # ---- what it cost

    def sampler_cost(self) -> dict[str, Any]:
        """What sampling cost: CPU and wall time per sample, ticks missed, NVML read costs."""
        c = self._cost
        n, ns = c.samples, c.tenant_samples
        loop = self._loop
        thread_cpu = loop.thread_cpu_s if loop is not None else 0.0
        return {
            "source": self.source,
            "interval_s": self.interval_s,
            "process_interval_s": self.process_interval_s,
            "process_interval_effective_s": self.process_interval_effective_s,
            "samples": n,
            "tenant_samples": ns,
            "rows": len(self._rows),
            "missed_ticks": loop.missed if loop is not None else 0,
            "errors": (loop.errors if loop is not None else 0)
            + self.host.errors
            + (self.nvml.errors if self.nvml is not None else 0),
            "thread_cpu_s": thread_cpu,
            "thread_cpu_ms_per_sample": 1e3 * thread_cpu / n if n else None,
            "cpu_ms_per_sample": 1e3 * c.cpu_s / n if n else None,
            "wall_ms_per_sample": 1e3 * c.wall_s / n if n else None,
            "wall_ms_max": 1e3 * c.wall_max_s,
            "cpu_ms_per_tenant_sample": 1e3 * c.tenant_cpu_s / ns if ns else None,
            "wall_ms_per_tenant_sample": 1e3 * c.tenant_wall_s / ns if ns else None,
            "call_costs_us": dict(self.nvml.call_costs_us) if self.nvml is not None else {},
            "read_periods_s": dict(self.nvml.read_periods_s) if self.nvml is not None else {},
        }

    def info(self) -> dict[str, Any]:
        """How this sampler reads, for the manifest: source, why not NVML, GPM, read costs."""
        nv = self.nvml
        return {
            "source": self.source,
            "nvml_unavailable": self.nvml_unavailable,
            "gpu_index": self.gpu_index if nv is not None else None,
            "gpm": nv.gpm_supported if nv is not None else False,
            "disabled_reads": dict(nv.disabled) if nv is not None else {},
            "interval_s": self.interval_s,
            "process_interval_s": self.process_interval_s,
            "process_interval_effective_s": self.process_interval_effective_s,
            "call_costs_us": dict(nv.call_costs_us) if nv is not None else {},
            "read_periods_s": dict(nv.read_periods_s) if nv is not None else {},
        }
