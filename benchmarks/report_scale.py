"""How the reports scale: a synthetic campaign of 10 million request rows, aggregated.

Writes a run directory that follows docs/run-directory.md (200 experiments by default:
4 tenants, isolated + pairs, 2 rate scales, 10 repetitions; requests.parquet written
straight from numpy through Arrow, telemetry and server metrics beside it), then runs the
aggregation in a fresh process per mode so that each peak RSS is its own:

* ``lazy``:  reports.analysis.analyze (lazy scans, streaming engine, inter-token gaps a few
  experiments at a time) plus the latency CDFs, which is what ``cotenant report`` computes
  before drawing
* ``eager``: the naive way, for comparison: read every requests.parquet whole, then the
  same expressions on the in-memory engine, all inter-token gaps exploded at once

Prints a table and, last, one JSON line. Example:

    .venv/bin/python benchmarks/report_scale.py                      # 10M rows, 200 experiments
    .venv/bin/python benchmarks/report_scale.py --rows 1000000 --experiments 20 --modes lazy
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TENANTS = [("dec-a", "vllm"), ("dec-b", "vllm"), ("dec-c", "vllm"), ("enc", "encoder")]
WARMUP_S, DURATION_S = 10.0, 60.0


def _sets() -> list[tuple[str, ...]]:
    names = [t for t, _ in TENANTS]
    return [(n,) for n in names] + list(itertools.combinations(names, 2))


def plan(experiments: int) -> list[tuple[str, tuple[str, ...], float, int]]:
    sets = _sets()
    scales = [1.0, 2.0]
    groups = [(s, x) for x in scales for s in sets]
    reps = max(1, -(-experiments // len(groups)))
    out = []
    for rep in range(reps):
        for s, x in groups:
            if len(out) == experiments:
                return out
            out.append((f"{'+'.join(s)}__all__x{x:g}__r{rep}", s, x, rep))
    return out


def _requests_table(eid: str, active: tuple[str, ...], n: int, rng: np.random.Generator) -> pa.Table:
    kinds = dict(TENANTS)
    tenant_idx = rng.integers(0, len(active), n)
    tenant = np.asarray(active, dtype=object)[tenant_idx]
    is_emb = np.asarray([kinds[t] == "encoder" for t in active])[tenant_idx]
    end = WARMUP_S + DURATION_S
    scheduled = np.sort(rng.uniform(0.0, end, n))
    sent = scheduled + rng.exponential(0.001, n)
    slow = 1.0 + 0.3 * (len(active) - 1)
    ttft = rng.lognormal(np.log(0.05 * slow), 0.3, n)
    out_tok = np.where(is_emb, 0, rng.integers(2, 17, n))
    gaps_n = np.where(is_emb, 0, out_tok - 1)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(gaps_n, out=offsets[1:])
    gaps = rng.lognormal(np.log(0.01 * slow), 0.2, int(offsets[-1]))
    cs = np.concatenate([[0.0], np.cumsum(gaps)])
    gap_sum = cs[offsets[1:]] - cs[offsets[:-1]]
    first = np.where(is_emb, np.nan, sent + ttft)
    done = np.where(is_emb, sent + ttft / 2, sent + ttft + gap_sum)
    status = np.where(rng.random(n) < 0.01, "error", "ok").astype(object)
    itl = pa.ListArray.from_arrays(pa.array(offsets), pa.array(gaps), mask=pa.array(is_emb))
    return pa.table(
        {
            "experiment_id": pa.array([eid] * n, pa.string()),
            "tenant": pa.array(tenant, pa.string()),
            "request_id": pa.array(np.arange(n, dtype=np.int64)),
            "kind": pa.array(np.where(is_emb, "embedding", "completion").astype(object), pa.string()),
            "scheduled_s": pa.array(scheduled),
            "sent_s": pa.array(sent),
            "first_token_s": pa.array(first, from_pandas=True),
            "done_s": pa.array(done),
            "input_tokens": pa.array(rng.integers(16, 512, n)),
            "output_tokens": pa.array(out_tok.astype(np.int64)),
            "expected_output_tokens": pa.array(out_tok.astype(np.int64)),
            "batch_size": pa.array(np.where(is_emb, 8, 1).astype(np.int64)),
            "itl_s": itl,
            "status": pa.array(status, pa.string()),
            "http_status": pa.array(np.where(status == "ok", 200, 500).astype(np.int64)),
            "error": pa.array(np.where(status == "ok", None, "synthetic").astype(object), pa.string()),
            "warmup": pa.array(scheduled < WARMUP_S),
            "in_window": pa.array((scheduled >= WARMUP_S) & (scheduled < end)),
        }
    )


def _telemetry_table(eid: str, active: tuple[str, ...], rng: np.random.Generator) -> pa.Table:
    t = np.arange(0.0, WARMUP_S + DURATION_S + 5.0, 0.1)
    m = t.size
    names = [n for n, _ in TENANTS]
    scope = ["device"] * m + [n for n in names for _ in range(m // 5)]
    ts = np.concatenate([t] + [t[::5][: m // 5]] * len(names))
    k = len(scope)
    dev = np.arange(k) < m
    util = np.where(dev, rng.uniform(20, 90, k), np.nan)

    def f(x: np.ndarray) -> pa.Array:
        return pa.array(x, from_pandas=True)

    def i(x: np.ndarray) -> pa.Array:
        return pa.array(np.where(np.isnan(x), 0, x).astype(np.int64), mask=np.isnan(x))

    nan = np.full(k, np.nan)
    return pa.table(
        {
            "experiment_id": pa.array([eid] * k, pa.string()),
            "t_s": pa.array(ts),
            "scope": pa.array(scope, pa.string()),
            "source": pa.array(["nvml"] * k, pa.string()),
            "gpu_util_pct": f(util),
            "mem_util_pct": f(util / 2),
            "mem_used_bytes": i(np.where(dev, 60e9, np.nan)),
            "mem_total_bytes": i(np.where(dev, 80e9, np.nan)),
            "power_w": f(np.where(dev, 300.0, np.nan)),
            "energy_j": f(np.where(dev, np.cumsum(np.full(k, 30.0)), np.nan)),
            "sm_clock_mhz": f(np.where(dev, 1980.0, np.nan)),
            "temp_c": f(np.where(dev, 50.0, np.nan)),
            "gpm_sm_util_pct": f(util * 0.8),
            "gpm_sm_occupancy_pct": f(util * 0.5),
            "gpm_tensor_active_pct": f(util * 0.3),
            "gpm_dram_bw_util_pct": f(util * 0.9),
            "host_cpu_pct": f(np.where(dev, 10.0, np.nan)),
            "host_mem_used_bytes": i(np.where(dev, 30e9, np.nan)),
            "proc_gpu_mem_bytes": i(np.where(dev, np.nan, 15e9)),
            "proc_cpu_pct": f(nan),
            "proc_rss_bytes": i(nan),
        }
    )


def _server_table(eid: str, active: tuple[str, ...]) -> pa.Table:
    t = np.arange(0.0, WARMUP_S + DURATION_S + 5.0, 1.0)
    rows: dict[str, list[Any]] = {k: [] for k in ("experiment_id", "t_s", "tenant", "metric", "labels", "value")}
    for name in active:
        for metric in ("vllm:kv_cache_usage_perc", "vllm:num_requests_waiting", "vllm:num_preemptions_total"):
            rows["experiment_id"] += [eid] * t.size
            rows["t_s"] += t.tolist()
            rows["tenant"] += [name] * t.size
            rows["metric"] += [metric] * t.size
            rows["labels"] += ['{"engine": "0"}'] * t.size
            rows["value"] += (t / 100).tolist()
    return pa.table(rows)


def synthesize(run_dir: Path, rows: int, experiments: int, seed: int = 0) -> dict[str, Any]:
    """Write the campaign; returns how long it took and how big it is."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    p = plan(experiments)
    run_dir.mkdir(parents=True, exist_ok=True)
    names = [n for n, _ in TENANTS]
    spec = {
        "name": run_dir.name,
        "description": "benchmarks/report_scale.py synthetic campaign",
        "tenants": [{"name": n, "kind": k, "model": f"model-{n}"} for n, k in TENANTS],
        "strategy": ["isolated", "pairs"],
        "experiment": {"warmup_s": WARMUP_S, "duration_s": DURATION_S, "repetitions": -(-experiments // 20),
                       "rate_scales": [1.0, 2.0], "residency": "shared"},
        "slo": {n: {"ttft_ms": 120.0, "e2e_ms": 500.0} for n in names},
        "sharing": {"mode": "time-slice"},
    }
    (run_dir / "campaign.json").write_text(json.dumps({
        "schema_version": 1, "name": run_dir.name, "spec": spec,
        "versions": {"cotenant": "bench"}, "host": {"hostname": "bench"},
        "gpu": {"index": 0, "name": "synthetic GPU", "memory_total_bytes": 80 * 2**30, "driver": "0"},
        "plan": {}, "experiments": [e[0] for e in p], "started": None, "ended": None,
    }))
    per = rows // len(p)
    for k, (eid, active, scale, rep) in enumerate(p):
        d = run_dir / eid
        d.mkdir(exist_ok=True)
        n = per + (1 if k < rows - per * len(p) else 0)
        pq.write_table(_requests_table(eid, active, n, rng), d / "requests.parquet", compression="snappy")
        pq.write_table(_telemetry_table(eid, active, rng), d / "telemetry.parquet")
        pq.write_table(_server_table(eid, active), d / "server_metrics.parquet")
        (d / "manifest.json").write_text(json.dumps({
            "schema_version": 1, "experiment_id": eid, "campaign": run_dir.name,
            "resident": names, "active": list(active), "repetition": rep, "rate_scale": scale,
            "status": "completed", "reason": None, "warmup_s": WARMUP_S, "duration_s": DURATION_S,
            "drain_s": 5.0, "slo": spec["slo"],
            "tenants": {nm: {"kind": kd, "model": f"model-{nm}"} for nm, kd in TENANTS},
            "sharing": "time-slice",
        }))
    size = sum(f.stat().st_size for f in run_dir.rglob("*.parquet"))
    return {"write_s": time.perf_counter() - t0, "bytes_on_disk": size, "experiments": len(p), "rows": rows}


# ---- the measured work, each in its own process ---------------------------------------------------


def _lazy(run_dir: Path) -> dict[str, Any]:
    from reports.analysis import analyze
    from reports.request_figures import latency_cdf
    from rundir.reader import load_run

    run = load_run(run_dir)
    t0 = time.perf_counter()
    a = analyze(run)
    t1 = time.perf_counter()
    latency_cdf(run, "e2e_s")
    t2 = time.perf_counter()
    return {"analyze_s": t1 - t0, "cdf_s": t2 - t1, "experiment_rows": a.experiments.height,
            "ranked_sets": a.strategies.height}


def _eager(run_dir: Path) -> dict[str, Any]:
    import polars as pl

    from reports.metrics import LATENCIES
    from reports.request_figures import _derived, _stat_exprs
    from reports.scan import windows_frame
    from rundir.reader import load_run

    run = load_run(run_dir)
    t0 = time.perf_counter()
    df = pl.read_parquet([str(f) for f in run.files("requests.parquet")])  # everything, at once
    df = df.filter(pl.col("in_window")).join(windows_frame(run), on=["experiment_id", "tenant"])
    df = _derived(df.lazy()).collect(engine="in-memory")
    aggs = [pl.len().alias("requests"), pl.col("ok").sum(), pl.col("met").sum()]
    for fam in LATENCIES:
        if fam != "itl":
            aggs += _stat_exprs(f"{fam}_s", fam)
    out = df.group_by("experiment_id", "tenant").agg(aggs)
    itl = (df.filter(pl.col("ok")).select("experiment_id", "tenant", "itl_s").explode("itl_s")
           .group_by("experiment_id", "tenant").agg(_stat_exprs("itl_s", "itl")))
    t1 = time.perf_counter()
    return {"analyze_s": t1 - t0, "experiment_rows": out.join(itl, on=["experiment_id", "tenant"]).height}


def child(mode: str, run_dir: Path) -> None:
    res = _lazy(run_dir) if mode == "lazy" else _eager(run_dir)
    res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(res))


def measure(mode: str, run_dir: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, __file__, "--child", mode, str(run_dir)],
                       capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"mode": mode, "error": (p.stderr or p.stdout)[-2000:], "wall_s": wall}
    return {"mode": mode, "wall_s": wall} | json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--experiments", type=int, default=200)
    ap.add_argument("--modes", default="lazy,eager", help="comma-separated: lazy, eager")
    ap.add_argument("--dir", type=Path, default=None, help="keep the campaign here (default: a temp dir, removed)")
    ap.add_argument("--reuse", action="store_true", help="use the campaign already in --dir")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "RUN_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    tmp = None
    if args.dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="cotenant-scale-"))
        run_dir = tmp / "scale"
    else:
        run_dir = args.dir
    try:
        if args.reuse and (run_dir / "campaign.json").is_file():
            info = {"write_s": None, "rows": args.rows, "experiments": len(list(run_dir.glob("*/manifest.json"))),
                    "bytes_on_disk": sum(f.stat().st_size for f in run_dir.rglob("*.parquet"))}
        else:
            info = synthesize(run_dir, args.rows, args.experiments)
        results = [measure(m.strip(), run_dir) for m in args.modes.split(",") if m.strip()]
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"campaign: {info['rows']:,} request rows, {info['experiments']} experiments, "
          f"{info['bytes_on_disk'] / 2**20:,.0f} MiB of Parquet"
          + (f", written in {info['write_s']:.1f} s" if info["write_s"] else "")
          + f"; {os.cpu_count()} cores")
    print(f"{'mode':<8}{'wall s':>10}{'aggregate s':>14}{'cdf s':>10}{'peak RSS MiB':>15}")
    for r in results:
        if "error" in r:
            print(f"{r['mode']:<8} failed: {r['error']}")
            continue
        print(f"{r['mode']:<8}{r['wall_s']:>10.1f}{r['analyze_s']:>14.1f}{r.get('cdf_s', float('nan')):>10.1f}"
              f"{r['peak_rss_bytes'] / 2**20:>15,.0f}")
    print(json.dumps({"benchmark": "report_scale", **info, "results": results}))


if __name__ == "__main__":
    main()
