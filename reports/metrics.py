"""The catalogue of figures the reports compute: names, units, labels and which way is better.

Column names carry their unit (``_s``, ``_rps``, ``_pct``, ``_bytes``); seconds are
turned into milliseconds only where a person reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

# latency families: column prefix -> what it is
LATENCIES: dict[str, str] = {
    "ttft": "TTFT: first token - sent",
    "tpot": "TPOT: (done - first token) / (output tokens - 1)",
    "itl": "inter-token gap: each gap between streamed chunks",
    "e2e": "E2E: done - sent (server latency)",
    "e2e_incl_queue": "E2E incl. queueing: done - scheduled (what a user waits)",
}
STATS = ("mean", "p50", "p90", "p99")
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}

RATES: dict[str, str] = {
    "throughput_rps": "achieved throughput, ok requests / window",
    "output_tps": "output tokens / s (decoders)",
    "embeddings_ps": "embeddings / s: sum of batch_size / window (encoder)",
    "goodput_rps": "goodput: requests that met every SLO of the tenant / window",
    "slo_attainment": "share of the window's requests that met every SLO",
    "error_rate": "share of the window's requests that ended in error, timeout or drop",
}

HIGHER_IS_BETTER = frozenset(
    {"throughput_rps", "output_tps", "embeddings_ps", "goodput_rps", "slo_attainment"}
)

# the headline figures of a co-located tenant: the family a report tests (and corrects for
# multiplicity over), the primary figure first (the one experiment.precision sizes on)
HEADLINE_DECODER = ("tpot_p50_s", "ttft_p99_s", "e2e_p99_s")
HEADLINE_ENCODER = ("e2e_p50_s", "e2e_p99_s")
PRIMARY_DECODER = HEADLINE_DECODER[0]
PRIMARY_ENCODER = HEADLINE_ENCODER[0]

# tail figures: p99 over the requests pooled per arm across blocks, intervals by resampling
# blocks (reports.tails); every other figure is analysed per experiment (reports.paired)
TAIL_METRICS = ("ttft_p99_s", "tpot_p99_s", "e2e_p99_s", "e2e_incl_queue_p99_s")


def latency_columns() -> list[str]:
    return [f"{m}_{s}_s" for m in LATENCIES for s in STATS]


def metric_columns() -> list[str]:
    """Per experiment x tenant figures that go through repetitions and interference."""
    return list(RATES) + latency_columns() + [
        "send_delay_mean_s",
        "send_delay_p99_s",
        "proc_gpu_mem_max_bytes",
        "proc_cpu_mean_pct",
        "proc_rss_max_bytes",
        "kv_cache_usage_mean",
        "requests_waiting_mean",
        "preemptions",
    ]


DEVICE_METRICS: dict[str, str] = {
    "gpu_util_mean_pct": "GPU utilization, mean (NVML)",
    "mem_used_mean_bytes": "GPU memory used, mean",
    "mem_used_max_bytes": "GPU memory used, max",
    "power_mean_w": "power, mean",
    "energy_j": "energy over the window",
    "gpm_sm_util_mean_pct": "SM utilization (GPM)",
    "gpm_sm_occupancy_mean_pct": "SM occupancy (GPM)",
    "gpm_tensor_active_mean_pct": "tensor cores active (GPM)",
    "gpm_dram_bw_util_mean_pct": "DRAM bandwidth utilization (GPM)",
    "host_cpu_mean_pct": "host CPU, mean",
    "host_mem_used_max_bytes": "host memory used, max",
}


@dataclass(frozen=True)
class Label:
    text: str
    unit: str  # ms, req/s, tok/s, %, GiB, ...
    scale: float = 1.0


def label(metric: str) -> Label:
    """How to show a metric column to a person."""
    for fam, _ in sorted(LATENCIES.items(), key=lambda kv: -len(kv[0])):
        for s in STATS:
            if metric == f"{fam}_{s}_s":
                name = {
                    "ttft": "TTFT",
                    "tpot": "TPOT",
                    "itl": "inter-token gap",
                    "e2e": "E2E",
                    "e2e_incl_queue": "E2E incl. queue",
                }[fam]
                return Label(f"{name} {s}", "ms", 1e3)
    fixed = {
        "throughput_rps": Label("throughput", "req/s"),
        "output_tps": Label("output tokens", "tok/s"),
        "embeddings_ps": Label("embeddings", "emb/s"),
        "goodput_rps": Label("goodput", "req/s"),
        "slo_attainment": Label("SLO attainment", "%", 100.0),
        "error_rate": Label("error rate", "%", 100.0),
        "send_delay_mean_s": Label("send delay mean", "ms", 1e3),
        "send_delay_p99_s": Label("send delay p99", "ms", 1e3),
        "proc_gpu_mem_max_bytes": Label("GPU memory (process), max", "GiB", 1 / 2**30),
        "proc_cpu_mean_pct": Label("CPU (process tree), mean", "%"),
        "proc_rss_max_bytes": Label("RSS (process tree), max", "GiB", 1 / 2**30),
        "kv_cache_usage_mean": Label("KV cache usage, mean", "%", 100.0),
        "requests_waiting_mean": Label("requests waiting, mean", ""),
        "preemptions": Label("preemptions", ""),
    }
    if metric in fixed:
        return fixed[metric]
    if metric in DEVICE_METRICS:
        if metric.endswith("_bytes"):
            return Label(DEVICE_METRICS[metric], "GiB", 1 / 2**30)
        unit = "%" if metric.endswith("_pct") else metric.rsplit("_", 1)[-1].upper()
        return Label(DEVICE_METRICS[metric], unit)
    return Label(metric, "")


def fmt(metric: str, value: float | None, digits: int = 3) -> str:
    """A value in its display unit, e.g. ``fmt("ttft_p99_s", 0.1234) == "123 ms"``."""
    if value is None:
        return "–"
    lab = label(metric)
    v = value * lab.scale
    return f"{num(v, digits)} {lab.unit}".strip()


def num(v: float | None, digits: int = 3) -> str:
    """Significant digits, no scientific notation for ordinary magnitudes."""
    if v is None:
        return "–"
    if v != v:  # NaN
        return "–"
    if v in (float("inf"), float("-inf")):  # a censored percentile (requests that failed)
        return "∞" if v > 0 else "-∞"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 10 ** (digits + 2):
        return f"{v:,.0f}"
    if a >= 1:
        decimals = max(0, digits - len(str(int(a))))
        return f"{v:,.{decimals}f}"
    return f"{v:.{digits}g}"


def is_latency(metric: str) -> bool:
    return metric.endswith("_s") and metric not in RATES
