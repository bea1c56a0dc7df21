"""What the telemetry sampler costs: CPU time and wall time per sample, per source and interval.

Runs ``orchestrator.telemetry.sampler.Sampler`` for ``--duration`` seconds at each ``--intervals``
value, with the host source and, where NVML sees a GPU, the NVML source, while
``--tenants`` real process trees (a parent and a child each, idle) stand in for servers so
the per-tenant rows do their real work. Prints a table, then one JSON line (the last line).

    python benchmarks/sampler_cost.py                   # 100 ms and 10 ms, 5 s each
    python benchmarks/sampler_cost.py --duration 10 --intervals 0.1,0.05,0.01

Columns: samples (device ticks), achieved (mean interval actually kept), missed (ticks
skipped because one overran), cpu/sample (sampler thread CPU time / samples, from
``time.thread_time``), wall/sample and max (time inside one tick), tenant-tick cpu (a tick that
also reads the per-tenant rows), cpu% (sampler thread CPU / wall, 100 = one core).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402
import psutil  # noqa: E402

from orchestrator.device import detect_gpu  # noqa: E402
from orchestrator.telemetry.host import ppid_map  # noqa: E402
from orchestrator.telemetry.sampler import Sampler  # noqa: E402

TENANT = (
    "import subprocess, sys, time\n"
    "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'])\n"
    "print(c.pid, flush=True)\n"
    "time.sleep(3600)\n"
)


class PerfClock:
    def __init__(self) -> None:
        self.anchor_ns = time.perf_counter_ns()

    def now_s(self) -> float:
        return (time.perf_counter_ns() - self.anchor_ns) / 1e9


def spawn_tenants(n: int) -> tuple[dict[str, int], list[int]]:
    tenants, pids = {}, []
    for i in range(n):
        p = subprocess.Popen([sys.executable, "-c", TENANT], stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        child = int(p.stdout.readline())
        tenants[f"tenant-{i}"] = p.pid
        pids += [child, p.pid]
    return tenants, pids


def kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            p = psutil.Process(pid)
            p.kill()
            with contextlib.suppress(psutil.TimeoutExpired, psutil.NoSuchProcess):
                p.wait(5)


def measure(
    source: str, interval_s: float, duration_s: float, tenants: dict[str, int], args: Any
) -> dict[str, Any]:
    s = Sampler(
        PerfClock(),
        tenants,
        experiment_id="sampler-cost",
        interval_s=interval_s,
        process_interval_s=args.process_interval,
        gpu_index=args.gpu_index,
        nvml=source == "nvml",
    )
    s.start()
    if s.source != source:
        s.stop()
        raise SystemExit(f"asked for the {source} source, got {s.source}: {s.nvml_unavailable}")
    t0 = time.perf_counter()
    time.sleep(duration_s)
    df = s.stop()
    wall = time.perf_counter() - t0
    c = s.sampler_cost()
    n = c["samples"]
    return {
        "source": source,
        "interval_ms": interval_s * 1e3,
        "duration_s": round(wall, 3),
        "samples": n,
        "rows": df.height,
        "achieved_interval_ms": _mean_gap_ms(df),
        "missed_ticks": c["missed_ticks"],
        "errors": c["errors"],
        "thread_cpu_ms_per_sample": c["thread_cpu_ms_per_sample"],
        "cpu_ms_per_sample": c["cpu_ms_per_sample"],
        "wall_ms_per_sample": c["wall_ms_per_sample"],
        "wall_ms_max": c["wall_ms_max"],
        "cpu_ms_per_tenant_sample": c["cpu_ms_per_tenant_sample"],
        "thread_cpu_pct": 100.0 * c["thread_cpu_s"] / wall,
        "process_interval_effective_s": c["process_interval_effective_s"],
        "call_costs_us": c["call_costs_us"],
        "read_periods_s": c["read_periods_s"],
    }


def _mean_gap_ms(df: pl.DataFrame) -> float | None:
    t = df.filter(pl.col("scope") == "device")["t_s"]
    return 1e3 * (t[-1] - t[0]) / (t.len() - 1) if t.len() > 1 else None


def fmt(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    ap.add_argument("--intervals", default="0.1,0.01", help="sampling intervals, seconds")
    ap.add_argument("--process-interval", type=float, default=0.5)
    ap.add_argument("--tenants", type=int, default=2, help="stand-in process trees")
    ap.add_argument("--gpu-index", type=int, default=0)
    ap.add_argument("--no-nvml", action="store_true", help="host source only")
    args = ap.parse_args(argv)
    intervals = [float(x) for x in args.intervals.split(",") if x]

    gpu = None if args.no_nvml else detect_gpu(args.gpu_index)
    sources = ["host"] + (["nvml"] if gpu else [])
    t = time.perf_counter()
    n_procs = len(ppid_map())
    scan_ms = 1e3 * (time.perf_counter() - t)
    env = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "processes": n_procs,
        "process_scan_ms": round(scan_ms, 3),
        "gpu": gpu,
    }
    tenants, pids = spawn_tenants(args.tenants)
    results = []
    try:
        for source in sources:
            for interval in intervals:
                results.append(measure(source, interval, args.duration, tenants, args))
    finally:
        kill(pids)

    cols = [
        ("source", "source", 0),
        ("interval", "interval_ms", 1),
        ("samples", "samples", 0),
        ("achieved ms", "achieved_interval_ms", 2),
        ("missed", "missed_ticks", 0),
        ("cpu/sample ms", "thread_cpu_ms_per_sample", 3),
        ("wall/sample ms", "wall_ms_per_sample", 3),
        ("wall max ms", "wall_ms_max", 2),
        ("tenant-tick cpu ms", "cpu_ms_per_tenant_sample", 3),
        ("cpu %", "thread_cpu_pct", 2),
    ]
    print(
        f"host {env['host']}: {env['cpus']} CPUs, {n_procs} processes "
        f"(tree scan {scan_ms:.2f} ms), GPU: {gpu['name'] if gpu else 'none'}"
    )
    widths = [max(len(h), 9) for h, _, _ in cols]
    print("  ".join(h.rjust(w) for (h, _, _), w in zip(cols, widths, strict=True)))
    for r in results:
        cells = [fmt(r[k], d) if isinstance(r[k], float) else fmt(r[k]) for _, k, d in cols]
        print("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
    for r in results:
        if r["call_costs_us"]:
            costs = ", ".join(f"{k} {v:.1f}" for k, v in r["call_costs_us"].items())
            slow = ", ".join(f"{k} every {v:.2f} s" for k, v in r["read_periods_s"].items())
            print(
                f"NVML read costs at {r['interval_ms']:.0f} ms (us): {costs}; slow: {slow or '-'}"
            )
    print(json.dumps({"benchmark": "sampler_cost", "env": env, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
