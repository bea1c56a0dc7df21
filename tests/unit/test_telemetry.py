"""The sampler: host source against real processes, the schema against the docs, NVML.

The NVML-path tests that run on a CPU machine use ``FakeNvml``, a test double of pynvml's
API: they test our client (per-call failures, slow reads, GPM's two-sample bookkeeping,
pid-to-tenant mapping), not NVML. The ``gpu`` test reads a real GPU and skips without one.
Ticks come from a clock the test advances (``tickclock.FakeTickClock``), so the tests count
exact ticks and never sleep on wall time; only the CPU-accounting test and the ``gpu`` test
sample on the real clock, since what they measure takes real time.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import polars as pl
import psutil
import pytest

from orchestrator.device import detect_gpu
from orchestrator.telemetry import nvml
from orchestrator.telemetry.host import process_tree
from orchestrator.telemetry.nvml import GPU_COLUMNS, gpu_processes
from orchestrator.telemetry.periodic import Periodic
from orchestrator.telemetry.sampler import TELEMETRY_SCHEMA, Sampler
from tests.unit.tickclock import FakeTickClock

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20


class PerfClock:
    def __init__(self) -> None:
        self.anchor_ns = time.perf_counter_ns()

    def now_s(self) -> float:
        return (time.perf_counter_ns() - self.anchor_ns) / 1e9


# --------------------------------------------------------------------------- real processes

PARENT = r"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
print(child.pid, flush=True)
time.sleep(120)
"""

CHILD = r"""
import sys, time
x = bytearray({mb} << 20)
for i in range(0, len(x), 4096):
    x[i] = 1  # touch every page: it counts in RSS
end = time.time() + 120
while time.time() < end:
    if not {burn}:
        time.sleep(0.5)
"""


class Tree:
    def __init__(self, burn: bool, mb: int) -> None:
        code = CHILD.format(mb=mb, burn=burn)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PARENT, code], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.root = self.proc.pid
        self.child = int(self.proc.stdout.readline())
        deadline = time.monotonic() + 30
        while psutil.Process(self.child).memory_info().rss < mb * MiB:
            assert time.monotonic() < deadline, "child never filled its memory"
            time.sleep(0.05)

    def kill(self) -> None:
        for pid in (self.child, self.root):
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
        self.proc.wait(10)


@pytest.fixture
def trees() -> Iterator[list[Tree]]:
    made: list[Tree] = []
    yield made
    for t in made:
        t.kill()


def test_host_source_attributes_cpu_and_rss_to_the_tenant_tree(trees: list[Tree]) -> None:
    # on the real clock: CPU% is the CPU seconds a tree burnt over the wall seconds between
    # samples, so this samples real processes for a real while (and counts no ticks)
    burner = Tree(burn=True, mb=96)
    idle = Tree(burn=False, mb=8)
    trees += [burner, idle]
    burner_procs = [psutil.Process(burner.root), psutil.Process(burner.child)]
    cpu_before = sum(sum(p.cpu_times()[:2]) for p in burner_procs)
    clock = PerfClock()
    s = Sampler(
        clock,
        {"burner": burner.root, "idle": idle.root},
        experiment_id="e1",
        interval_s=0.05,
        process_interval_s=0.25,
        nvml=False,
    )
    s.start()
    time.sleep(2.0)
    df = s.stop()
    cpu_burnt = sum(sum(p.cpu_times()[:2]) for p in burner_procs) - cpu_before
    t_end = clock.now_s()

    assert s.source == "host"
    tenant = df.filter(pl.col("scope") != "device")
    assert set(tenant["scope"]) == {"burner", "idle"}
    b = tenant.filter(pl.col("scope") == "burner")
    i = tenant.filter(pl.col("scope") == "idle")
    # the child's 96 MiB count for the tenant; the root alone is far smaller
    assert psutil.Process(burner.root).memory_info().rss < 64 * MiB
    assert b["proc_rss_bytes"].min() > 96 * MiB  # type: ignore[operator]
    assert i["proc_rss_bytes"].max() < 96 * MiB  # type: ignore[operator]
    # the CPU the tree burnt (the child's, mostly) is what the rows add up to: CPU% x the
    # interval each row covers; the time after the last row is not covered (<= 0.25 s)
    t = b["t_s"].to_list()
    covered = sum(
        pct / 100 * (t1 - t0) for pct, t0, t1 in zip(b["proc_cpu_pct"], [0.0] + t, t, strict=False)
    )
    assert cpu_burnt > 0.1, "the burner got no CPU at all"
    assert 0.5 * cpu_burnt * (t[-1] / t_end) <= covered <= 1.2 * cpu_burnt
    assert b["proc_cpu_pct"].mean() > 2 * i["proc_cpu_pct"].mean()  # type: ignore[operator]
    assert tenant["proc_gpu_mem_bytes"].null_count() == tenant.height
    dev = df.filter(pl.col("scope") == "device")
    assert dev["host_cpu_pct"].null_count() == 0
    assert dev["host_mem_used_bytes"].min() > 0  # type: ignore[operator]
    assert (df["source"] == "host").all()


def test_tenant_changes_and_a_dead_root_give_null_rows(trees: list[Tree]) -> None:
    a = Tree(burn=False, mb=8)
    trees.append(a)
    clock = FakeTickClock()
    s = Sampler(
        clock,
        {"a": a.root},
        experiment_id="e",
        interval_s=0.05,
        process_interval_s=0.1,
        nvml=False,
        tick_clock=clock,
    ).start()
    clock.ticks(8, 0.05)
    s.set_tenants({"a": a.root, "gone": _unused_pid()})
    clock.ticks(16, 0.05)
    df = s.stop()
    gone = df.filter(pl.col("scope") == "gone")
    assert gone.height >= 1
    assert gone["proc_rss_bytes"].null_count() == gone.height
    assert df.filter(pl.col("scope") == "a")["proc_rss_bytes"].null_count() == 0


def test_process_tree_walks_all_descendants() -> None:
    ppids = {1: 0, 10: 1, 11: 10, 12: 11, 13: 10, 20: 1}
    assert sorted(process_tree(10, ppids)) == [10, 11, 12, 13]
    assert process_tree(20, ppids) == [20]


# --------------------------------------------------------------------------- schema, timing


def _documented_telemetry_columns() -> list[str]:
    text = (ROOT / "docs" / "run-directory.md").read_text()
    section = text.split("## telemetry.parquet", 1)[1].split("\n## ", 1)[0]
    cols: list[str] = []
    for line in section.splitlines():
        if not line.startswith("|") or "---" in line or line.startswith("| column"):
            continue
        first = line.split("|")[1]
        first = re.sub(r"\(.*?\)", "", first)
        cols += [c.strip() for c in first.split(",") if c.strip()]
    return cols


def test_schema_matches_the_run_directory_doc(tmp_path: Path) -> None:
    documented = _documented_telemetry_columns()
    assert len(documented) > 15
    assert list(TELEMETRY_SCHEMA) == documented
    clock = FakeTickClock()
    s = Sampler(clock, {}, experiment_id="e", interval_s=0.05, nvml=False, tick_clock=clock)
    s.start()
    clock.ticks(4, 0.05)
    s.stop()
    df = s.write(tmp_path / "telemetry.parquet")
    back = pl.read_parquet(tmp_path / "telemetry.parquet")
    assert dict(back.schema) == TELEMETRY_SCHEMA == dict(df.schema)
    for name, dtype in TELEMETRY_SCHEMA.items():  # the units in the names fix the types
        if name.endswith("_bytes"):
            assert dtype == pl.Int64, name
        elif name.endswith(("_pct", "_s", "_w", "_j", "_c", "_mhz")):
            assert dtype == pl.Float64, name
    assert not list(tmp_path.glob(".*.tmp"))


def test_interval_is_honoured_and_stop_is_prompt() -> None:
    clock = FakeTickClock()
    s = Sampler(clock, {}, experiment_id="e", interval_s=0.05, nvml=False, tick_clock=clock)
    s.start()
    clock.ticks(30, 0.05)
    df = s.stop()
    dev = df.filter(pl.col("scope") == "device")
    assert dev.height == 30
    # on the absolute schedule: tick k at k x interval, no drift
    assert dev["t_s"].to_list() == pytest.approx([k * 0.05 for k in range(30)])
    cost = s.sampler_cost()
    assert cost["samples"] == 30 and cost["missed_ticks"] == 0
    assert cost["cpu_ms_per_sample"] is not None and cost["thread_cpu_s"] > 0

    # on the real clock: a stop wakes a thread that waits 30 s for its next tick at once
    slow = Sampler(PerfClock(), {}, experiment_id="e", interval_s=30.0, nvml=False).start()
    loop = slow._loop  # noqa: SLF001
    assert loop is not None
    while loop.ticks < 1:  # the first tick is due at once; then it waits
        time.sleep(0.01)
    slow.stop()  # joins the thread (giving up after 10 s)
    assert not loop.running


def test_an_overrun_runs_one_late_tick_and_skips_the_others() -> None:
    clock = FakeTickClock()
    due: list[float] = []

    def tick() -> None:
        due.append(clock.now_s())
        if len(due) == 3:
            clock.spend(0.25)  # the tick due at 0.2 s takes until 0.45 s

    loop = Periodic("t", 0.1, tick, clock)
    loop.start()
    clock.ticks(8, 0.1)
    loop.stop()
    # 0.3 is skipped (missed), 0.4 runs late at 0.45, then the schedule goes on
    assert due == pytest.approx([0.0, 0.1, 0.2, 0.45, 0.5, 0.6, 0.7])
    assert loop.ticks == 7 and loop.missed == 1 and loop.errors == 0


def test_a_failing_tick_never_kills_the_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeTickClock()
    s = Sampler(clock, {}, experiment_id="e", interval_s=0.02, nvml=False, tick_clock=clock)
    calls = {"n": 0}
    real = s.host.device

    def flaky() -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] % 2:
            raise RuntimeError("boom")
        return real()

    monkeypatch.setattr(s.host, "device", flaky)
    s.start()
    clock.ticks(20, 0.02)
    df = s.stop()
    assert s.sampler_cost()["errors"] == 10  # every other tick failed
    assert df.height == 10 and s.sampler_cost()["samples"] == 10


# --------------------------------------------------------------------------- no NVML


def test_without_pynvml_the_host_source_fills_the_same_schema(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_pynvml() -> Any:
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(nvml, "_import_nvml", no_pynvml)
    clock = FakeTickClock()
    s = Sampler(clock, {"me": 1}, experiment_id="e", interval_s=0.05, process_interval_s=0.1,
                tick_clock=clock)
    s.start()
    clock.ticks(10, 0.05)
    df = s.stop()
    assert s.source == "host"
    assert "pynvml" in (s.info()["nvml_unavailable"] or "")
    assert (df["source"] == "host").all()
    for col in GPU_COLUMNS:
        assert df[col].null_count() == df.height, col
    assert detect_gpu(0) is None
    assert gpu_processes(0) == []


# --------------------------------------------------------------------------- NVML client logic


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


class FakeNvml:
    """A test double of the pynvml calls telemetry makes (one GPU, scripted answers)."""

    NVMLError = FakeNVMLError
    NVML_SUCCESS = 0
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_NO_PERMISSION = 4
    NVML_ERROR_UNKNOWN = 999
    NVML_ERROR_FUNCTION_NOT_FOUND = 13
    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_GPU = 0
    NVML_GPM_METRIC_SM_UTIL = 2
    NVML_GPM_METRIC_SM_OCCUPANCY = 3
    NVML_GPM_METRIC_ANY_TENSOR_UTIL = 5
    NVML_GPM_METRIC_DRAM_BW_UTIL = 10
    NVML_GPM_METRICS_GET_VERSION = 1

    def __init__(self, procs: list[tuple[int, int]] | None = None, slow_energy: bool = False):
        self.procs = procs or []
        self.slow_energy = slow_energy
        self.energy_mj = 5_000_000
        self.util_calls = 0
        self.inits = 0
        self.gpm_samples = 0

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.inits -= 1

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        if i != 0:
            raise FakeNVMLError(2)
        return "h0"

    def nvmlDeviceGetName(self, h: str) -> str:
        return "Fake H100"

    def nvmlDeviceGetUUID(self, h: str) -> str:
        return "GPU-fake"

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.1"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 13000

    def nvmlDeviceGetMemoryInfo(self, h: str) -> Any:
        return SimpleNamespace(total=80 << 30, free=60 << 30, used=20 << 30)

    def nvmlDeviceGetUtilizationRates(self, h: str) -> Any:
        self.util_calls += 1
        if self.util_calls % 3 == 0:
            raise FakeNVMLError(self.NVML_ERROR_UNKNOWN)  # transient
        return SimpleNamespace(gpu=55, memory=20)

    def nvmlDeviceGetPowerUsage(self, h: str) -> int:
        raise FakeNVMLError(self.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetTotalEnergyConsumption(self, h: str) -> int:
        if self.slow_energy:
            time.sleep(0.002)
        self.energy_mj += 1000
        return self.energy_mj

    def nvmlDeviceGetClockInfo(self, h: str, which: int) -> int:
        return 1980

    def nvmlDeviceGetTemperature(self, h: str, sensor: int) -> int:
        return 50

    def nvmlDeviceGetComputeRunningProcesses(self, h: str) -> list[Any]:
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in self.procs]

    def nvmlGpmQueryDeviceSupport(self, h: str) -> Any:
        return SimpleNamespace(isSupportedDevice=1)

    def nvmlGpmSampleAlloc(self) -> Any:
        return SimpleNamespace(taken=None)

    def nvmlGpmSampleFree(self, s: Any) -> None:
        pass

    def nvmlGpmSampleGet(self, h: str, s: Any) -> Any:
        self.gpm_samples += 1
        s.taken = self.gpm_samples
        return s

    def c_nvmlGpmMetricsGet_t(self) -> Any:
        return SimpleNamespace(
            version=0,
            numMetrics=0,
            sample1=None,
            sample2=None,
            metrics=[SimpleNamespace(metricId=0, nvmlReturn=0, value=0.0) for _ in range(8)],
        )

    def nvmlGpmMetricsGet(self, req: Any) -> Any:
        assert req.sample1 is not req.sample2
        assert req.sample2.taken == req.sample1.taken + 1  # consecutive samples, in order
        for m in req.metrics[: req.numMetrics]:
            if m.metricId == self.NVML_GPM_METRIC_ANY_TENSOR_UTIL:
                m.nvmlReturn, m.value = self.NVML_ERROR_NOT_SUPPORTED, 0.0
            elif m.metricId == self.NVML_GPM_METRIC_DRAM_BW_UTIL and self.gpm_samples == 8:
                m.nvmlReturn, m.value = 0, float("nan")  # seen once on an H100
            else:
                m.nvmlReturn, m.value = 0, 42.0
        return req


def _use(monkeypatch: pytest.MonkeyPatch, fake: FakeNvml) -> None:
    monkeypatch.setattr(nvml, "_import_nvml", lambda: fake)


def test_nvml_reads_fill_device_rows_and_one_failure_nulls_only_its_columns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeNvml()
    _use(monkeypatch, fake)
    clock = FakeTickClock()
    s = Sampler(clock, {}, experiment_id="e", interval_s=0.02, process_interval_s=0.1,
                tick_clock=clock)
    s.start()
    clock.ticks(30, 0.02)
    df = s.stop()
    assert s.source == "nvml" and fake.inits == 0  # NVML released
    dev = df.filter(pl.col("scope") == "device")
    assert (dev["source"] == "nvml").all()
    assert dev["mem_total_bytes"].unique().to_list() == [80 << 30]
    assert dev["mem_used_bytes"].unique().to_list() == [20 << 30]
    assert dev["sm_clock_mhz"].null_count() == 0 and dev["temp_c"].null_count() == 0
    # the transient utilization error: null in some rows, and the other columns still there
    assert 0 < dev["gpu_util_pct"].null_count() < dev.height
    assert dev.filter(pl.col("gpu_util_pct").is_null())["temp_c"].null_count() == 0
    # power not supported: disabled after the first try, always null
    assert dev["power_w"].null_count() == dev.height
    assert "power" in s.info()["disabled_reads"]
    # energy counts from the start, in joules
    energy = dev["energy_j"].drop_nulls()
    assert energy.min() > 0 and energy.is_sorted()  # type: ignore[operator]
    # GPM: null on the first sample (no interval yet), then the metrics; tensor unsupported
    assert dev["gpm_sm_util_pct"][0] is None
    assert set(dev["gpm_sm_util_pct"].drop_nulls().to_list()) == {42.0}
    dram = dev["gpm_dram_bw_util_pct"]
    assert dram.drop_nulls().len() >= dev.height - 3 and dram.is_nan().sum() == 0
    assert s.info()["gpm"] is True
    assert dev["gpm_tensor_active_pct"].null_count() == dev.height
    assert dev["host_cpu_pct"].null_count() == 0  # both sources fill the host columns
    cost = s.sampler_cost()
    assert set(cost["call_costs_us"]) >= {"utilization", "memory", "energy", "gpm", "process_list"}


def test_slow_reads_are_read_less_often(monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, FakeNvml(slow_energy=True))
    clock = FakeTickClock()
    s = Sampler(clock, {}, experiment_id="e", interval_s=0.02, process_interval_s=0.2,
                tick_clock=clock)
    s.start()
    clock.ticks(40, 0.02)  # 0.8 s of ticks
    df = s.stop()
    # 2 ms a read at a 0.5% budget: energy read every >= 0.4 s, null in the rows between
    assert s.info()["read_periods_s"]["energy"] >= 0.4
    dev = df.filter(pl.col("scope") == "device")
    filled = dev["energy_j"].drop_nulls().len()
    assert 1 <= filled < dev.height / 3
    assert dev["temp_c"].null_count() == 0  # the fast reads are not held back
    assert s.process_interval_effective_s == 0.2  # the process list is cheap: as asked


def test_gpu_processes_map_to_tenants_through_the_tree(
    monkeypatch: pytest.MonkeyPatch, trees: list[Tree]
) -> None:
    a, b = Tree(burn=False, mb=8), Tree(burn=False, mb=8)
    trees += [a, b]
    stranger = _unused_pid()
    fake = FakeNvml(procs=[(a.child, 3 << 30), (a.root, 1 << 30), (stranger, 70 << 20)])
    _use(monkeypatch, fake)
    clock = FakeTickClock()
    s = Sampler(
        clock,
        {"a": a.root, "b": b.root},
        experiment_id="e",
        interval_s=0.05,
        process_interval_s=0.1,
        tick_clock=clock,
    )
    s.start()
    clock.ticks(10, 0.05)
    df = s.stop()
    ta = df.filter(pl.col("scope") == "a")
    tb = df.filter(pl.col("scope") == "b")
    assert ta.height >= 2
    assert ta["proc_gpu_mem_bytes"].unique().to_list() == [4 << 30]  # child + root
    assert tb["proc_gpu_mem_bytes"].unique().to_list() == [0]  # no GPU process: 0, known
    assert ta["proc_rss_bytes"].null_count() == 0  # CPU/RSS still come from the host
    other = df.filter(pl.col("scope") == f"pid:{stranger}")
    assert other.height == ta.height
    assert other["proc_gpu_mem_bytes"].unique().to_list() == [70 << 20]


def test_unmatchable_nvml_pids_leave_tenant_gpu_memory_unknown(
    monkeypatch: pytest.MonkeyPatch, trees: list[Tree]
) -> None:
    """A container: NVML speaks host pids that this namespace cannot see."""
    a = Tree(burn=False, mb=8)
    trees.append(a)
    host_pid = _unused_pid()
    _use(monkeypatch, FakeNvml(procs=[(host_pid, 3 << 30)]))
    clock = FakeTickClock()
    s = Sampler(clock, {"a": a.root}, experiment_id="e", interval_s=0.05,
                process_interval_s=0.1, tick_clock=clock)
    s.start()
    clock.ticks(8, 0.05)
    df = s.stop()
    ta = df.filter(pl.col("scope") == "a")
    assert ta.height >= 1 and ta["proc_gpu_mem_bytes"].null_count() == ta.height
    assert df.filter(pl.col("scope") == f"pid:{host_pid}")["proc_gpu_mem_bytes"][0] == 3 << 30


def test_detect_gpu_and_gpu_processes_through_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml(procs=[(1234, 5 << 20)])
    _use(monkeypatch, fake)
    assert detect_gpu(0) == {
        "index": 0,
        "name": "Fake H100",
        "uuid": "GPU-fake",
        "memory_total_bytes": 80 << 30,
        "driver": "580.1",
        "cuda_version": "13.0",
    }
    assert detect_gpu(3) is None
    assert gpu_processes(0) == [(1234, 5 << 20)]
    assert fake.inits == 0


def _unused_pid() -> int:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text()) if Path("/proc").is_dir() else 99999
    pid = pid_max + 17
    assert not psutil.pid_exists(pid)
    return pid


# --------------------------------------------------------------------------- a real GPU


def _gpu_or_skip() -> None:
    try:
        import pynvml
    except ImportError:
        pytest.skip("pynvml not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        pytest.skip(f"no NVML: {e}")
    try:
        if pynvml.nvmlDeviceGetCount() == 0:
            pytest.skip("NVML sees no GPU")
    finally:
        pynvml.nvmlShutdown()


@pytest.mark.gpu
def test_real_gpu_sampling() -> None:
    _gpu_or_skip()
    info = detect_gpu(0)
    assert info is not None and info["memory_total_bytes"] > 0
    me = psutil.Process().pid
    s = Sampler(PerfClock(), {"me": me}, experiment_id="e", interval_s=0.05, process_interval_s=0.2)
    s.start()
    time.sleep(1.0)
    df = s.stop()
    assert s.source == "nvml"
    dev = df.filter(pl.col("scope") == "device")
    for col in ("gpu_util_pct", "mem_used_bytes", "mem_total_bytes", "sm_clock_mhz", "temp_c"):
        assert dev[col].null_count() < dev.height, col
    assert dev["energy_j"].drop_nulls().len() >= 1
    if s.info()["gpm"]:
        assert dev["gpm_sm_util_pct"].drop_nulls().len() >= dev.height - 3
    mine = df.filter(pl.col("scope") == "me")
    assert mine.height >= 1 and mine["proc_rss_bytes"].null_count() == 0
