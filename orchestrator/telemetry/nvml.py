"""NVML: the GPU's counters and process list, read for the sampler (``sampler.py``).

Costs. Each NVML read is timed once at start (``sampler_cost()['call_costs_us']``). A read
slower than ``SLOW_CALL_S`` (1 ms) is read only every ``max(process_interval_s, cost /
SLOW_READ_BUDGET)`` seconds, i.e. it may take at most 0.5% of the wall time, and its
columns are null in the rows between (``sampler.py`` says more). ``nvml_session`` is also
what ``orchestrator.device.detect_gpu`` reads the GPU's facts through.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

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
def nvml_session() -> Iterator[Any]:
    """NVML initialised for the block (pynvml counts inits), or None when there is none."""
    nvml, _ = _nvml_init()
    try:
        yield nvml
    finally:
        if nvml is not None:
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlShutdown()


def gpu_processes(index: int = 0) -> list[tuple[int, int | None]]:
    """(pid, GPU memory bytes) of the compute processes on GPU ``index``; [] without NVML.

    Memory is None where NVML cannot tell. Pids may be host pids when run in a container.
    """
    with nvml_session() as nvml:
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
        """The device columns NVML gives at ``now`` (seconds on the sampler's tick clock,
        ``periodic.TickClock``); a failed read, or a slow read that is not due, leaves its
        columns out (null)."""
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
