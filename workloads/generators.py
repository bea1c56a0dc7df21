"""Synthetic traces from the workload spec's arrival processes and length distributions.

Randomness comes from one numpy ``Generator`` a stream, all derived from
``SeedSequence([seed, crc32(tenant)])``: the same seed (0 included) and tenant give the
same trace; two tenants with one seed get independent arrivals; arrivals do not change
when only a length distribution does.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import polars as pl

from workloads.errors import WorkloadError
from workloads.spec import (
    Arrivals,
    ConstantArrivals,
    EmpiricalLen,
    FixedLen,
    GammaArrivals,
    LengthDist,
    LognormalLen,
    NormalLen,
    OnOffArrivals,
    PoissonArrivals,
    RampArrivals,
    SyntheticWorkload,
    UniformLen,
)
from workloads.trace import make_trace

_STREAMS = ("arrivals", "input", "output", "batch")


def rngs(seed: int, tenant: str | None = None) -> dict[str, np.random.Generator]:
    """Independent generators for arrivals, input, output and batch sizes."""
    if seed < 0:
        raise WorkloadError(f"seed must be >= 0, not {seed}")
    entropy = [seed] if tenant is None else [seed, zlib.crc32(tenant.encode())]
    children = np.random.SeedSequence(entropy).spawn(len(_STREAMS))
    return {name: np.random.default_rng(s) for name, s in zip(_STREAMS, children, strict=True)}


# ---- arrivals ------------------------------------------------------------------------------


def mean_rate(arrival: Arrivals, rate_scale: float = 1.0) -> float:
    """Requests per second the process offers on average."""
    if isinstance(arrival, OnOffArrivals):
        return arrival.rate * rate_scale * arrival.on_s / (arrival.on_s + arrival.off_s)
    return arrival.rate * rate_scale


def arrival_times(
    arrival: Arrivals, duration_s: float, rng: np.random.Generator, *, rate_scale: float = 1.0
) -> np.ndarray:
    """Sorted arrival times in [0, duration_s)."""
    if not duration_s > 0:
        raise WorkloadError(f"duration must be above 0, not {duration_s}")
    if not rate_scale > 0:
        raise WorkloadError(f"rate scale must be above 0, not {rate_scale}")
    if isinstance(arrival, ConstantArrivals):
        return _constant(arrival.rate * rate_scale, duration_s)
    if isinstance(arrival, PoissonArrivals):
        return _renewal(rng, arrival.rate * rate_scale, 1.0, duration_s)
    if isinstance(arrival, GammaArrivals):
        return _renewal(rng, arrival.rate * rate_scale, arrival.cv, duration_s)
    if isinstance(arrival, OnOffArrivals):
        return _onoff(rng, arrival, rate_scale, duration_s)
    if isinstance(arrival, RampArrivals):
        return _ramp(
            rng, arrival.start_rate * rate_scale, arrival.end_rate * rate_scale, duration_s
        )
    raise WorkloadError(f"unknown arrival process {arrival!r}")


def _below(t: np.ndarray, duration_s: float) -> np.ndarray:
    return t[t < duration_s * (1 - 1e-12)]


def _constant(rate: float, duration_s: float) -> np.ndarray:
    """0, 1/rate, 2/rate, ...: exactly ceil(duration * rate) requests (rounding aside)."""
    n = math.ceil(duration_s * rate) + 1
    return _below(np.arange(n, dtype=np.float64) / rate, duration_s)


def _renewal(rng: np.random.Generator, rate: float, cv: float, duration_s: float) -> np.ndarray:
    """Gaps from a gamma distribution with mean 1/rate and coefficient of variation ``cv``
    (cv = 1: exponential gaps, a Poisson process). The first request comes one gap in."""
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate * shape)
    expected = rate * duration_s
    chunk = int(expected + 6 * cv * math.sqrt(expected) + 16)
    parts: list[np.ndarray] = []
    last = 0.0
    while last < duration_s:
        gaps = rng.exponential(scale, chunk) if cv == 1.0 else rng.gamma(shape, scale, chunk)
        t = last + np.cumsum(gaps)
        parts.append(t)
        last = float(t[-1])
        chunk = max(16, chunk // 4)
    return _below(np.concatenate(parts), duration_s)


def _onoff(
    rng: np.random.Generator, a: OnOffArrivals, rate_scale: float, duration_s: float
) -> np.ndarray:
    """Poisson at ``rate`` during on periods, nothing during off periods; starts on."""
    cycle = a.on_s + a.off_s
    on_total = _on_time(duration_s, a.on_s, cycle)
    u = _renewal(rng, a.rate * rate_scale, 1.0, on_total) if on_total > 0 else np.zeros(0)
    # map "on time" back to wall time: the k-th on period starts at k * cycle
    k = np.floor(u / a.on_s)
    return _below(k * cycle + (u - k * a.on_s), duration_s)


def _on_time(duration_s: float, on_s: float, cycle: float) -> float:
    full, rest = divmod(duration_s, cycle)
    return full * on_s + min(rest, on_s)


def _ramp(rng: np.random.Generator, r0: float, r1: float, duration_s: float) -> np.ndarray:
    """Poisson whose rate goes linearly from r0 to r1 over the duration (time change of a
    unit-rate process through the cumulative rate Λ(t) = r0 t + (r1 - r0) t² / 2D)."""
    total = (r0 + r1) / 2 * duration_s
    u = _renewal(rng, 1.0, 1.0, total) if total > 0 else np.zeros(0)
    slope = (r1 - r0) / duration_s
    if abs(slope) < 1e-12:
        return _below(u / r0, duration_s)
    disc = np.maximum(r0 * r0 + 2 * slope * u, 0.0)
    t = (np.sqrt(disc) - r0) / slope
    return _below(np.sort(t), duration_s)


# ---- lengths -------------------------------------------------------------------------------


def sample_lengths(
    dist: LengthDist, n: int, rng: np.random.Generator, *, base_dir: Path | None = None
) -> np.ndarray:
    """``n`` whole lengths (>= 1) from a distribution."""
    if isinstance(dist, FixedLen):
        return np.full(n, dist.value, dtype=np.int64)
    if isinstance(dist, UniformLen):
        return rng.integers(dist.low, dist.high, size=n, endpoint=True, dtype=np.int64)
    if isinstance(dist, NormalLen):
        x = rng.normal(dist.mean, dist.std, size=n)
        return _clip(x, dist.low, dist.high)
    if isinstance(dist, LognormalLen):
        x = dist.median * np.exp(dist.sigma * rng.standard_normal(n))
        return _clip(x, dist.low, dist.high)
    if isinstance(dist, EmpiricalLen):
        pool = empirical_pool(dist, base_dir)
        return _clip(rng.choice(pool, size=n, replace=True).astype(np.float64), dist.low, dist.high)
    raise WorkloadError(f"unknown length distribution {dist!r}")


def _clip(x: np.ndarray, low: int, high: int | None) -> np.ndarray:
    return np.clip(np.rint(x), low, high if high is not None else np.inf).astype(np.int64)


def empirical_pool(dist: EmpiricalLen, base_dir: Path | None) -> np.ndarray:
    """The positive values of a column of another trace file (read with the importers)."""
    from workloads.importers import cached_trace

    path = Path(dist.path).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    values = cached_trace(path, dist.format)[dist.column].to_numpy()
    values = values[values > 0]
    if values.size == 0:
        raise WorkloadError(f"{path}: no positive {dist.column} to sample lengths from")
    return values


# ---- traces --------------------------------------------------------------------------------


def synthesize(
    workload: SyntheticWorkload,
    *,
    duration_s: float,
    seed: int,
    tenant: str | None = None,
    kind: str = "completion",
    rate_scale: float = 1.0,
    base_dir: Path | None = None,
) -> pl.DataFrame:
    """A trace over [0, duration_s) from a synthetic workload spec."""
    r = rngs(seed, tenant)
    t = arrival_times(workload.arrival, duration_s, r["arrivals"], rate_scale=rate_scale)
    n = t.size
    inp = sample_lengths(workload.input_tokens, n, r["input"], base_dir=base_dir)
    if kind == "embedding":
        out = np.zeros(n, dtype=np.int64)
        batch: np.ndarray | None = sample_lengths(
            workload.batch_size, n, r["batch"], base_dir=base_dir
        )
    else:
        out = sample_lengths(workload.output_tokens, n, r["output"], base_dir=base_dir)
        batch = None
    return make_trace(
        t, input_tokens=inp, output_tokens=out, tenant=tenant, kind=kind, batch_size=batch
    )


# ---- command-line forms --------------------------------------------------------------------

LENGTH_FORMS = (
    "N (fixed), uniform:LOW:HIGH, normal:MEAN:STD, lognormal:MEDIAN:SIGMA, "
    "empirical:FILE:input_tokens|output_tokens"
)


def parse_length(text: str) -> LengthDist:
    """A length distribution from its short form, e.g. ``128``, ``uniform:64:256``,
    ``normal:512:128``, ``lognormal:300:0.8``, ``empirical:azure.csv:input_tokens``."""
    from pydantic import TypeAdapter, ValidationError

    parts = text.strip().split(":")
    kind = parts[0].lower()
    fields: dict[str, object]
    try:
        if len(parts) == 1:
            fields = {"dist": "fixed", "value": int(parts[0])}
        elif kind == "uniform" and len(parts) == 3:
            fields = {"dist": "uniform", "low": int(parts[1]), "high": int(parts[2])}
        elif kind == "normal" and len(parts) == 3:
            fields = {"dist": "normal", "mean": float(parts[1]), "std": float(parts[2])}
        elif kind == "lognormal" and len(parts) == 3:
            fields = {"dist": "lognormal", "median": float(parts[1]), "sigma": float(parts[2])}
        elif kind == "empirical" and len(parts) >= 3:
            fields = {"dist": "empirical", "path": ":".join(parts[1:-1]), "column": parts[-1]}
        else:
            raise ValueError
    except ValueError:
        raise WorkloadError(f"length {text!r}: expected one of {LENGTH_FORMS}") from None
    try:
        return TypeAdapter(LengthDist).validate_python(fields)
    except ValidationError as e:
        msg = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise WorkloadError(f"length {text!r}: {msg}") from None
