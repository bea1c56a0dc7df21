"""Telemetry: sample the GPU (NVML) or the host (psutil) on a thread while an experiment runs.

One row a sample and scope, as ``docs/run-directory.md`` (telemetry.parquet) says:

- a ``device`` row every ``interval_s`` (default 100 ms): GPU counters from NVML when a GPU
  answers (``source='nvml'``), plus the host's CPU% and memory, which both sources fill;
- per-tenant rows every ``process_interval_s`` (default 0.5 s): the tenant's GPU memory
  (NVML process list) and the CPU% and RSS of its process tree (root pid and all children).

The sampler schedules on absolute time (one ``perf_counter`` anchor, tick k is due at
``anchor + k * interval``), so it does not drift; a tick that falls behind skips the ticks
it missed (counted) instead of bursting. ``t_s`` comes from the experiment's clock (any
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

import contextlib
import logging
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import polars as pl
import psutil

from rundir.io import atomic_write_parquet
from rundir.schema import TELEMETRY_SCHEMA, rows_to_frame

log = logging.getLogger(__name__)


GPU_COLUMNS: tuple[str, ...] = (
    "gpu_util_pct",
    "mem_util_pct",
    "mem_used_bytes",
    "mem_total_bytes",
    "power_w",
    "energy_j",
    "sm_clock_mhz",
    "temp_c",
    "gpm_sm_util_pct",
    "gpm_sm_occupancy_pct",
    "gpm_tensor_active_pct",
    "gpm_dram_bw_util_pct",
    "proc_gpu_mem_bytes",
)

# GPM metric per column: the name of the pynvml constant (looked up at run time)
GPM_METRICS: dict[str, str] = {
    "gpm_sm_util_pct": "NVML_GPM_METRIC_SM_UTIL",
    "gpm_sm_occupancy_pct": "NVML_GPM_METRIC_SM_OCCUPANCY",
    "gpm_tensor_active_pct": "NVML_GPM_METRIC_ANY_TENSOR_UTIL",
    "gpm_dram_bw_util_pct": "NVML_GPM_METRIC_DRAM_BW_UTIL",
}

SLOW_CALL_S = 0.001  # an NVML read slower than this is read less often
SLOW_READ_BUDGET = 0.005  # a slow NVML read may take at most this share of wall time
TREE_REFRESH_S = 1.0  # rescan tenants' process trees at least this often


class Clock(Protocol):
    """The experiment's clock: seconds since its anchor (``workloads.clock.ExperimentClock``)."""

    def now_s(self) -> float: ...


# --------------------------------------------------------------------------- NVML access


def _import_nvml() -> Any:
    """Import pynvml (a seam for tests that simulate a host without it)."""
    import pynvml

    return pynvml


def _nvml_init() -> tuple[Any, str | None]:
    """(pynvml, None) with NVML initialised, or (None, why not)."""
    try:
        nvml = _import_nvml()
    except ImportError as e:
        return None, f"pynvml not importable: {e}"
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:
        return None, f"nvmlInit failed: {e}"
    return nvml, None


@contextlib.contextmanager
def _nvml_session() -> Iterator[Any]:
    """NVML initialised for the block (pynvml counts inits), or None when there is none."""
    nvml, _ = _nvml_init()
    try:
        yield nvml
    finally:
        if nvml is not None:
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlShutdown()


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def detect_gpu(index: int = 0) -> dict[str, Any] | None:
    """The GPU at ``index`` as the manifest records it, or None when NVML or the GPU is absent.

    Keys: index, name, uuid, memory_total_bytes, driver, cuda_version.
    """
    with _nvml_session() as nvml:
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


def gpu_processes(index: int = 0) -> list[tuple[int, int | None]]:
    """(pid, GPU memory bytes) of the compute processes on GPU ``index``; [] without NVML.

    Memory is None where NVML cannot tell. Pids may be host pids when run in a container.
    """
    with _nvml_session() as nvml:
        if nvml is None:
            return []
        try:
            h = nvml.nvmlDeviceGetHandleByIndex(index)
            procs = nvml.nvmlDeviceGetComputeRunningProcesses(h)
        except nvml.NVMLError as e:
            log.warning("NVML cannot list processes on GPU %d: %s", index, e)
            return []
        return [(int(p.pid), _opt_int(p.usedGpuMemory)) for p in procs]


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


class NvmlSource:
    """Device counters and the GPU process list of one GPU, through NVML.

    ``open()`` initialises NVML (raises ``RuntimeError`` with the reason when it cannot),
    takes the energy baseline, checks GPM support and times every read once.
    """

    name = "nvml"
    _DISABLE_ON = (
        "NVML_ERROR_NOT_SUPPORTED",
        "NVML_ERROR_FUNCTION_NOT_FOUND",
        "NVML_ERROR_NO_PERMISSION",
    )

    def __init__(self, gpu_index: int = 0, gpm: bool = True, slow_period_s: float = 0.5) -> None:
        self.gpu_index = gpu_index
        self.want_gpm = gpm
        self.slow_period_s = slow_period_s  # the least period of a slow read
        self.gpm_supported = False
        self.call_costs_us: dict[str, float] = {}
        self.read_periods_s: dict[str, float] = {}  # slow read -> its period
        self._next_due: dict[str, float] = {}
        self.disabled: dict[str, str] = {}  # read -> why
        self.errors = 0
        self._nvml: Any = None
        self._h: Any = None
        self._energy0_mj: int | None = None
        self._gpm_bufs: list[Any] = []
        self._gpm_i = 0
        self._gpm_have_prev = False
        self._gpm_req: Any = None
        self._gpm_ids: list[tuple[str, int]] = []
        self._reads: dict[str, Callable[[], dict[str, Any]]] = {
            "utilization": self._read_util,
            "memory": self._read_mem,
            "power": self._read_power,
            "energy": self._read_energy,
            "sm_clock": self._read_clock,
            "temperature": self._read_temp,
        }
        self._disable_codes: set[int] = set()

    # ---- life

    def open(self) -> None:
        nvml, why = _nvml_init()
        if nvml is None:
            raise RuntimeError(why)
        self._nvml = nvml
        self._disable_codes = {getattr(nvml, c) for c in self._DISABLE_ON if hasattr(nvml, c)}
        try:
            self._h = nvml.nvmlDeviceGetHandleByIndex(self.gpu_index)
        except nvml.NVMLError as e:
            self.close()
            raise RuntimeError(f"no GPU {self.gpu_index}: {e}") from e
        try:
            self._energy0_mj = int(nvml.nvmlDeviceGetTotalEnergyConsumption(self._h))
        except nvml.NVMLError as e:
            self.disabled["energy"] = str(e)
        if self.want_gpm:
            self._open_gpm()
        self._time_reads()

    def _open_gpm(self) -> None:
        nvml = self._nvml
        try:
            ids = [(col, int(getattr(nvml, const))) for col, const in GPM_METRICS.items()]
            if not nvml.nvmlGpmQueryDeviceSupport(self._h).isSupportedDevice:
                self.disabled["gpm"] = "GPM not supported on this GPU (needs Hopper or newer)"
                return
            self._gpm_bufs = [nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc()]
            req = nvml.c_nvmlGpmMetricsGet_t()
            req.version = nvml.NVML_GPM_METRICS_GET_VERSION
            self._gpm_req = req
        except (AttributeError, nvml.NVMLError) as e:
            self.disabled["gpm"] = f"GPM unavailable: {e}"
            self._free_gpm()
            return
        self._gpm_ids = ids
        self.gpm_supported = True
        self._reads["gpm"] = self._read_gpm

    def _time_reads(self) -> None:
        """Time each read (median of 3 after one warm-up); slow ones get a longer period."""
        for name, fn in list(self._reads.items()):
            if name in self.disabled:
                continue
            ts = []
            for _ in range(4):
                t = time.perf_counter_ns()
                self._guarded(name, fn)
                ts.append(time.perf_counter_ns() - t)
            self.call_costs_us[name] = statistics.median(ts[1:]) / 1e3
            cost_s = self.call_costs_us[name] / 1e6
            if cost_s > SLOW_CALL_S:
                self.read_periods_s[name] = max(self.slow_period_s, cost_s / SLOW_READ_BUDGET)
                self._next_due[name] = 0.0
        ts = []
        for _ in range(4):
            t = time.perf_counter_ns()
            self.processes()
            ts.append(time.perf_counter_ns() - t)
        self.call_costs_us["process_list"] = statistics.median(ts[1:]) / 1e3
        self._gpm_have_prev = False  # the timing's GPM samples are not an interval of the run

    def close(self) -> None:
        if self._nvml is None:
            return
        self._free_gpm()
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()
        self._nvml = None

    def _free_gpm(self) -> None:
        for buf in self._gpm_bufs:
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlGpmSampleFree(buf)
        self._gpm_bufs = []
        self._reads.pop("gpm", None)

    # ---- reads

    def process_list_period_s(self, wanted_s: float) -> float:
        """How often to read the process list: ``wanted_s``, or less often if it is slow."""
        cost_s = self.call_costs_us.get("process_list", 0.0) / 1e6
        return wanted_s if cost_s <= SLOW_CALL_S else max(wanted_s, cost_s / SLOW_READ_BUDGET)

    def device(self, now: float) -> dict[str, Any]:
        """The device columns NVML gives at ``now`` (``time.perf_counter``); a failed read,
        or a slow read that is not due, leaves its columns out (null)."""
        row: dict[str, Any] = {}
        for name, fn in self._reads.items():
            if name in self.disabled:
                continue
            if name in self.read_periods_s:
                if now < self._next_due[name]:
                    continue
                self._next_due[name] = now + self.read_periods_s[name]
            row.update(self._guarded(name, fn))
        return row

    def _guarded(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        try:
            return fn()
        except self._nvml.NVMLError as e:
            self.errors += 1
            if getattr(e, "value", None) in self._disable_codes:
                self.disabled[name] = str(e)
                log.info("NVML read %s disabled: %s", name, e)
            return {}

    def processes(self) -> list[tuple[int, int | None]] | None:
        """(pid, GPU memory) of the compute processes; None when the call failed."""
        try:
            procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._h)
        except self._nvml.NVMLError:
            self.errors += 1
            return None
        return [(int(p.pid), _opt_int(p.usedGpuMemory)) for p in procs]

    def _read_util(self) -> dict[str, Any]:
        u = self._nvml.nvmlDeviceGetUtilizationRates(self._h)
        return {"gpu_util_pct": float(u.gpu), "mem_util_pct": float(u.memory)}

    def _read_mem(self) -> dict[str, Any]:
        m = self._nvml.nvmlDeviceGetMemoryInfo(self._h)
        return {"mem_used_bytes": int(m.total) - int(m.free), "mem_total_bytes": int(m.total)}

    def _read_power(self) -> dict[str, Any]:
        return {"power_w": self._nvml.nvmlDeviceGetPowerUsage(self._h) / 1e3}

    def _read_energy(self) -> dict[str, Any]:
        mj = int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._h))
        if self._energy0_mj is None:
            self._energy0_mj = mj
        return {"energy_j": (mj - self._energy0_mj) / 1e3}

    def _read_clock(self) -> dict[str, Any]:
        return {
            "sm_clock_mhz": float(
                self._nvml.nvmlDeviceGetClockInfo(self._h, self._nvml.NVML_CLOCK_SM)
            )
        }

    def _read_temp(self) -> dict[str, Any]:
        t = self._nvml.nvmlDeviceGetTemperature(self._h, self._nvml.NVML_TEMPERATURE_GPU)
        return {"temp_c": float(t)}

    def _read_gpm(self) -> dict[str, Any]:
        """GPM metrics over the interval since the previous device sample (null on the first)."""
        nvml = self._nvml
        cur = self._gpm_i
        had_prev, self._gpm_have_prev = self._gpm_have_prev, False
        nvml.nvmlGpmSampleGet(self._h, self._gpm_bufs[cur])
        self._gpm_have_prev = True
        self._gpm_i ^= 1
        if not had_prev:
            return {}
        req = self._gpm_req
        req.numMetrics = len(self._gpm_ids)
        req.sample1 = self._gpm_bufs[cur ^ 1]
        req.sample2 = self._gpm_bufs[cur]
        for i, (_, metric_id) in enumerate(self._gpm_ids):
            req.metrics[i].metricId = metric_id
        nvml.nvmlGpmMetricsGet(req)
        out: dict[str, Any] = {}
        for i, (col, _) in enumerate(self._gpm_ids):
            m = req.metrics[i]
            value = float(m.value)
            if m.nvmlReturn == nvml.NVML_SUCCESS and math.isfinite(value):  # H100 gave a NaN once
                out[col] = value
        return out


# --------------------------------------------------------------------------- host (psutil)


def _ppid_map() -> dict[int, int]:
    """pid -> parent pid for every visible process (one pass over /proc on Linux)."""
    out: dict[int, int] = {}
    if os.path.isdir("/proc/self"):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            fields = data[data.rfind(b")") + 2 :].split()
            if len(fields) > 1:
                out[int(entry.name)] = int(fields[1])
        return out
    for p in psutil.process_iter(["ppid"]):
        out[p.pid] = p.info["ppid"]
    return out


def process_tree(root: int, ppids: Mapping[int, int]) -> list[int]:
    """``root`` and all its descendants that appear in ``ppids`` (root first)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


class HostSource:
    """Host CPU% and memory, and CPU% and RSS summed over each tenant's process tree.

    Trees are rescanned every ``TREE_REFRESH_S``, when the tenants change, when a process
    of a tree exits, or on request (an NVML pid that matches no tenant).
    """

    name = "host"

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        self._cpu_s: dict[int, float] = {}  # pid -> its CPU seconds at the last tenant sample
        self._last_mono: float | None = None
        self._last_wall: float | None = None
        self._trees: dict[str, list[int]] = {}
        self._tree_roots: dict[str, int] = {}
        self._tree_at = -1e18
        self.errors = 0

    def open(self) -> None:
        psutil.cpu_percent(interval=None)  # primes the host CPU% counter

    def device(self) -> dict[str, Any]:
        row: dict[str, Any] = {}
        try:
            row["host_cpu_pct"] = float(psutil.cpu_percent(interval=None))
            vm = psutil.virtual_memory()
            row["host_mem_used_bytes"] = int(vm.total - vm.available)
        except (OSError, psutil.Error):
            self.errors += 1
        return row

    def trees(self, roots: Mapping[str, int], force: bool = False) -> dict[str, list[int]]:
        """tenant -> pids of its tree (the root alone when the root has exited)."""
        now = time.monotonic()
        if force or dict(roots) != self._tree_roots or now - self._tree_at > TREE_REFRESH_S:
            ppids = _ppid_map()
            self._trees = {
                t: process_tree(root, ppids) if root in ppids else [root]
                for t, root in roots.items()
            }
            self._tree_roots = dict(roots)
            self._tree_at = now
        return self._trees

    def tree_usage(
        self, trees: Mapping[str, list[int]]
    ) -> dict[str, tuple[float | None, int | None]]:
        """tenant -> (CPU% since the last call, RSS bytes) over its tree.

        A process first seen now counts with all its CPU time if it started after the last
        call, else from now on. CPU% is None on the first call (no interval yet); both are
        None when no process of the tree exists.
        """
        mono, wall = time.monotonic(), time.time()
        dt = None if self._last_mono is None else mono - self._last_mono
        seen: set[int] = set()
        out: dict[str, tuple[float | None, int | None]] = {}
        for tenant, pids in trees.items():
            cpu_s, rss, alive = 0.0, 0, 0
            for pid in pids:
                got = self._read_proc(pid)
                if got is None:
                    continue
                cpu_now, rss_now, created = got
                alive += 1
                rss += rss_now
                seen.add(pid)
                before = self._cpu_s.get(pid)
                if before is None and self._last_wall is not None and created >= self._last_wall:
                    before = 0.0
                if before is not None:
                    cpu_s += max(0.0, cpu_now - before)
                self._cpu_s[pid] = cpu_now
            if alive == 0:
                out[tenant] = (None, None)
            else:
                out[tenant] = (None if not dt else 100.0 * cpu_s / dt, rss)
        for pid in set(self._cpu_s) - seen:
            self._cpu_s.pop(pid, None)
            self._procs.pop(pid, None)
        if any(pid not in seen for pids in trees.values() for pid in pids):
            self._tree_at = -1e18  # a process exited (or is new): rescan next time
        self._last_mono, self._last_wall = mono, wall
        return out

    def _read_proc(self, pid: int) -> tuple[float, int, float] | None:
        try:
            p = self._procs.get(pid)
            if p is None:
                p = self._procs[pid] = psutil.Process(pid)
            with p.oneshot():
                ct = p.cpu_times()
                rss = p.memory_info().rss
                created = p.create_time()
            return ct.user + ct.system, int(rss), created
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            self._procs.pop(pid, None)
            return None
        except (psutil.AccessDenied, OSError):
            self.errors += 1
            return None


# --------------------------------------------------------------------------- scheduling


class Periodic:
    """Calls ``fn()`` on its own daemon thread at absolute times ``anchor + k * interval_s``.

    A call that overruns skips the ticks it missed (``missed``) rather than bursting.
    ``stop()`` wakes the thread at once and joins it. An exception in ``fn`` is logged and
    counted (``errors``); the thread goes on.
    """

    def __init__(self, name: str, interval_s: float, fn: Callable[[], None]) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self._fn = fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.ticks = 0
        self.missed = 0
        self.errors = 0
        self.last_error: str | None = None
        self.thread_cpu_s = 0.0  # CPU time of this thread so far (time.thread_time)

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to stop without waiting (see ``stop``)."""
        self._stop.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread: it wakes at once, finishes a tick in progress, and is joined."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("%s did not stop within %.1f s", self._thread.name, timeout_s)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        cpu0 = time.thread_time()
        anchor = time.perf_counter()
        k = 0
        while True:
            delay = anchor + k * self.interval_s - time.perf_counter()
            if (delay > 0 and self._stop.wait(delay)) or self._stop.is_set():
                break
            try:
                self._fn()
            except Exception as e:  # a sampler must outlive any one bad sample
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
                if self.errors <= 3:
                    log.exception("%s: tick failed", self._thread.name)
            self.ticks += 1
            self.thread_cpu_s = time.thread_time() - cpu0
            k += 1
            due_now = int((time.perf_counter() - anchor) / self.interval_s) + 1
            if due_now > k + 1:
                self.missed += due_now - 1 - k
                k = due_now - 1
        self.thread_cpu_s = time.thread_time() - cpu0


# --------------------------------------------------------------------------- the sampler


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
    found each time). ``nvml=False`` forces the host source. Use as a context manager or
    ``start()`` / ``stop()``; ``stop()`` returns the frame, ``write(path)`` writes it.
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
    ) -> None:
        if interval_s <= 0 or process_interval_s <= 0:
            raise ValueError("interval_s and process_interval_s must be > 0")
        self.clock = clock
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
        self._next_tenants = time.perf_counter() + self.process_interval_effective_s
        self._loop = Periodic("cotenant-sampler", self.interval_s, self._tick)
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
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        tenants = wall0 >= self._next_tenants
        if tenants:
            self._next_tenants += self.process_interval_effective_s
            if self._next_tenants <= wall0:  # fell behind: back on a grid ahead of now
                self._next_tenants = wall0 + self.process_interval_effective_s
        t_s = self.clock.now_s()
        base = {"experiment_id": self.experiment_id, "t_s": t_s, "source": self.source}
        device = {**base, "scope": "device", **self.host.device()}
        if self.nvml is not None:
            device.update(self.nvml.device(wall0))
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
