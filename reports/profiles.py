"""Profiles: each tenant alone over the loads it was offered, the input of every prediction.

A tenant's profile is its solo experiments (active set = {tenant}: completed experiments and
capacity probes alike) grouped by offered rate (the manifest's ``workloads.<t>.offered_rate``,
the experiment table's ``offered_rps``), one *rung* per rate with its repetitions pooled:

* the resource figures, as the mean over the rung's experiments and their spread (``_sd``,
  the sample standard deviation over experiments): NVML GPU busy, GPM SM activity,
  occupancy, DRAM bandwidth and tensor activity (where the GPU has GPM), SM clock and power,
  the host's CPU, the engine's process-tree CPU (``proc_cpu_mean_pct``), vLLM's requests
  running and waiting, KV cache use, preemptions, the client's dispatch lag (p99);
* the request figures over the rung's requests pooled (TTFT, TPOT and E2E p50 / p99, SLO
  attainment, throughput), with the spread of the per-experiment values beside them.
  A request that is not ok counts as infinitely slow in every percentile and as a miss
  (censoring, SCIENCE.md), so a p99 is infinite when more than 1% of requests failed.

``profile_table`` writes it as ``tables/profiles.parquet``; ``TenantProfile`` reads figures
off it at any rate (interpolated on the log scale between rungs) and recomputes SLO
attainment from the rung's own requests with scaled bounds, which the time-rescaling model
of ``reports.prediction`` needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from reports.limits import binding_limits, describe
from reports.scan import scan_requests
from rundir.reader import RunDir

DEFAULT_TARGET = 0.90  # SLO attainment target when the spec names none

DEVICE_FIGURES = (
    "gpu_util_mean_pct",
    "gpm_sm_util_mean_pct",
    "gpm_sm_occupancy_mean_pct",
    "gpm_dram_bw_util_mean_pct",
    "gpm_tensor_active_mean_pct",
    "sm_clock_mean_mhz",
    "power_mean_w",
    "host_cpu_mean_pct",
)
TENANT_FIGURES = (
    "proc_cpu_mean_pct",
    "requests_running_mean",
    "requests_waiting_mean",
    "kv_cache_usage_mean",
    "encoder_queue_mean",
    "preemptions",
    "send_delay_p99_s",
    "throughput_rps",
    "goodput_rps",
)
# pooled over the rung's requests (the spread is over its experiments' own values)
REQUEST_FIGURES = (
    "ttft_p50_s",
    "ttft_p99_s",
    "tpot_p50_s",
    "tpot_p99_s",
    "e2e_p50_s",
    "e2e_p99_s",
    "slo_attainment",
)
FIGURES = DEVICE_FIGURES + TENANT_FIGURES + REQUEST_FIGURES


@dataclass(frozen=True)
class Slo:
    """A tenant's SLO bounds (seconds; None: not bounded) and attainment target."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None
    target: float = DEFAULT_TARGET


def slo_of(run: RunDir, tenant: str) -> Slo:
    """From the spec's ``slo.<tenant>`` (bounds in ms; ``attainment`` the target)."""
    raw = (run.spec.get("slo") or {}).get(tenant) or {}
    for e in run.completed:
        if tenant in e.slo:
            raw = {**raw, **(e.slo.get(tenant) or {})}
            break

    def s(key: str) -> float | None:
        v = raw.get(key)
        return None if v is None else float(v) / 1e3

    target = raw.get("attainment")
    return Slo(s("ttft_ms"), s("tpot_ms"), s("e2e_ms"),
               DEFAULT_TARGET if target is None else float(target))


def max_num_seqs(run: RunDir, tenant: str) -> int | None:
    for src in (run.tenant_info(tenant), *[t for t in run.spec.get("tenants") or []
                                           if t.get("name") == tenant]):
        v = src.get("max_num_seqs")
        if v:
            return int(v)
    return None


# ---- requests ------------------------------------------------------------------------------------


def request_latencies(run: RunDir) -> pl.DataFrame:
    """In-window requests of every completed experiment: experiment_id, tenant, ok, ttft_s,
    tpot_s, e2e_s (null where a figure does not apply, e.g. TTFT of an embedding)."""
    ok = pl.col("status") == "ok"
    first = pl.col("first_token_s").is_not_null()
    return (
        scan_requests(run)
        .filter(pl.col("in_window").fill_null(False))
        .select(
            "experiment_id",
            "tenant",
            ok.fill_null(False).alias("ok"),
            pl.when(ok & first).then(pl.col("first_token_s") - pl.col("sent_s")).alias("ttft_s"),
            pl.when(ok & first & (pl.col("output_tokens") > 1))
            .then((pl.col("done_s") - pl.col("first_token_s")) / (pl.col("output_tokens") - 1))
            .alias("tpot_s"),
            pl.when(ok).then(pl.col("done_s") - pl.col("sent_s")).alias("e2e_s"),
            (pl.col("kind") == "embedding").fill_null(False).alias("embedding"),
        )
        .collect()
    )


def censored_quantile(v: np.ndarray, q: float) -> float:
    """Linear-interpolation quantile (numpy's default) where +inf values (censored
    requests) sort last: infinite as soon as the interpolation touches one."""
    v = np.sort(v)
    pos = q * (v.size - 1)
    lo, hi = int(math.floor(pos)), int(math.ceil(pos))
    frac = pos - lo
    if frac == 0.0 or lo == hi:
        return float(v[lo])
    if not np.isfinite(v[hi]):
        return math.inf
    return float(v[lo] + frac * (v[hi] - v[lo]))


@dataclass(frozen=True)
class Arm:
    """One tenant's requests over some experiments (repetitions pooled): NaN where a figure
    does not apply, +inf where the request was not ok (censored)."""

    tenant: str
    kind: str
    experiments: tuple[str, ...]
    ok: np.ndarray
    ttft: np.ndarray
    tpot: np.ndarray
    e2e: np.ndarray
    origin: np.ndarray | None = None  # each request's experiment id

    def only(self, experiments: Sequence[str]) -> Arm:
        """The requests of some of the experiments (``origin`` must be known)."""
        keep = np.isin(self.origin if self.origin is not None else np.array([]),
                       list(experiments))
        return Arm(self.tenant, self.kind, tuple(experiments), self.ok[keep], self.ttft[keep],
                   self.tpot[keep], self.e2e[keep], None if self.origin is None
                   else self.origin[keep])

    @property
    def requests(self) -> int:
        return int(self.ok.size)

    def quantile(self, figure: str) -> float | None:
        """``tpot_p50_s`` etc. over the pooled requests; None when no request has it."""
        fam, stat, _ = figure.rsplit("_", 2)
        vals = {"ttft": self.ttft, "tpot": self.tpot, "e2e": self.e2e}[fam]
        v = vals[~np.isnan(vals)]
        if v.size == 0:
            return None
        return censored_quantile(v, float(stat[1:]) / 100.0)

    def attainment(self, slo: Slo, scale: float = 1.0) -> float | None:
        """Share of requests that were ok and met every bound of ``slo`` divided by ``scale``."""
        if self.ok.size == 0:
            return None
        met = self.ok.copy()
        for vals, bound in ((self.ttft, slo.ttft_s), (self.tpot, slo.tpot_s), (self.e2e, slo.e2e_s)):
            if bound is None:
                continue
            with np.errstate(invalid="ignore"):
                met &= np.isnan(vals) | (vals <= bound / scale)
        return float(met.mean())


def make_arm(lat: pl.DataFrame, tenant: str, kind: str, experiments: Sequence[str]) -> Arm:
    rows = lat.filter(pl.col("experiment_id").is_in(list(experiments)) & (pl.col("tenant") == tenant))
    ok = rows["ok"].to_numpy().astype(bool)
    enc = kind == "encoder"

    def arr(col: str, applies: bool) -> np.ndarray:
        v = rows[col].cast(pl.Float64).fill_null(float("nan")).to_numpy().astype(float)
        if not applies:
            return np.full(ok.size, np.nan)
        return np.where(ok, v, np.inf)

    # TPOT does not apply to one-token answers (NaN); a failed request is censored (inf)
    return Arm(tenant, kind, tuple(experiments), ok, arr("ttft_s", not enc), arr("tpot_s", not enc),
               arr("e2e_s", True), rows["experiment_id"].to_numpy().astype(str))


# ---- the profile table ---------------------------------------------------------------------------


def rate_key(offered: float | None, scale: float) -> float:
    """The rung an experiment belongs to: its offered rate (6 significant digits)."""
    if offered is None or not math.isfinite(offered):
        return float(f"{scale:.6g}")
    return float(f"{offered:.6g}")


def solo_rows(exp: pl.DataFrame, dev: pl.DataFrame) -> pl.DataFrame:
    """Experiment x tenant rows of the tenants alone, with the device figures and rung."""
    devcols = [c for c in DEVICE_FIGURES if c in dev.columns]
    solo = exp.filter(pl.col("n_active") == 1)
    if solo.height == 0:
        return solo.with_columns(pl.lit(None, dtype=pl.Float64).alias("rung"))
    solo = solo.join(dev.select("experiment_id", *devcols), on="experiment_id", how="left")
    keys = [rate_key(o, s) for o, s in zip(solo["offered_rps"], solo["rate_scale"], strict=True)]
    return solo.with_columns(pl.Series("rung", keys, dtype=pl.Float64))


def mean_sd(vals: Sequence[Any]) -> tuple[float | None, float | None]:
    x = np.array([float(v) for v in vals if v is not None and v == v], dtype=float)
    if x.size == 0:
        return None, None
    finite = x[np.isfinite(x)]
    mean = float(x.mean()) if finite.size == x.size else math.inf
    sd = float(finite.std(ddof=1)) if finite.size >= 2 else None
    return mean, sd


PROFILE_SCHEMA: dict[str, Any] = {
    "tenant": pl.Utf8,
    "tenant_kind": pl.Utf8,
    "offered_rps": pl.Float64,
    "rate_scale": pl.Float64,
    "experiments": pl.Int64,
    "probes": pl.Int64,
    "requests": pl.Int64,
    "max_num_seqs": pl.Int64,
    "attainment_target": pl.Float64,
    **{c: pl.Float64 for f in FIGURES for c in (f, f"{f}_sd")},
    "binding": pl.Utf8,
}


@dataclass(frozen=True)
class Rung:
    rate: float
    arm: Arm
    row: dict[str, Any]  # the profile table's row


@dataclass(frozen=True)
class TenantProfile:
    """A tenant alone: its rungs by offered rate, its SLO and kind."""

    tenant: str
    kind: str
    slo: Slo
    rungs: tuple[Rung, ...] = field(default_factory=tuple)

    @property
    def rates(self) -> np.ndarray:
        return np.array([r.rate for r in self.rungs], dtype=float)

    def column(self, figure: str) -> np.ndarray:
        return np.array([_f(r.row.get(figure)) for r in self.rungs], dtype=float)

    def covers(self, rate: float) -> bool:
        """Whether ``rate`` lies within the ladder (no extrapolation)."""
        return bool(self.rungs) and self.rungs[0].rate * (1 - 1e-6) <= rate <= (
            self.rungs[-1].rate * (1 + 1e-6))

    def demand_at(self, figure: str, rate: float) -> float | None:
        """A resource figure at ``rate``: linear in rate between rungs, proportional to rate
        below the lowest rung, straight on from the two busiest rungs above the top (never
        below the top rung's value). None when no rung measured it."""
        xs, ys = self.rates, self.column(figure)
        keep = ~np.isnan(ys)
        xs, ys = xs[keep], ys[keep]
        if xs.size == 0:
            return None
        if rate <= xs[0]:
            return float(ys[0] * rate / xs[0]) if xs[0] > 0 else float(ys[0])
        if rate <= xs[-1]:
            return float(np.interp(rate, xs, ys))
        if xs.size == 1:
            return float(ys[-1] * rate / xs[-1])
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return float(ys[-1] + max(slope, 0.0) * (rate - xs[-1]))

    def value_at(self, values: Sequence[float | None], rate: float, *, log_y: bool = True,
                 rising: bool = True) -> float | None:
        """Per-rung ``values`` read at ``rate``: linear in log rate (and in log value when
        ``log_y``) between rungs; held at the end rung below the ladder; straight on from
        the last two rungs above it, never turning back (``rising``: latencies grow with
        load, attainment does not). Infinite rungs stay infinite."""
        pts = [(math.log(r.rate), _f(v)) for r, v in zip(self.rungs, values, strict=True)
               if v is not None and not math.isnan(_f(v)) and r.rate > 0]
        if not pts:
            return None
        x = math.log(rate) if rate > 0 else pts[0][0]
        xs = [q[0] for q in pts]
        ys = [_to_y(q[1], log_y) for q in pts]
        if x <= xs[0] or len(pts) == 1:
            y = ys[0] if x <= xs[0] else ys[-1]
        elif x <= xs[-1]:
            k = int(np.searchsorted(xs, x))
            y0, y1 = ys[k - 1], ys[k]
            w = (x - xs[k - 1]) / (xs[k] - xs[k - 1])
            y = y0 if w == 0 else (y1 if w == 1 else _lerp(y0, y1, w))
        else:
            slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) if all(map(math.isfinite, ys[-2:])) else 0.0
            slope = max(slope, 0.0) if rising else min(slope, 0.0)
            y = ys[-1] + slope * (x - xs[-1]) if math.isfinite(ys[-1]) else ys[-1]
        return _from_y(y, log_y)


def _f(v: Any) -> float:
    return math.nan if v is None else float(v)


def _to_y(v: float, log_y: bool) -> float:
    if not log_y:
        return v
    return math.log(v) if v > 0 else -math.inf


def _from_y(y: float, log_y: bool) -> float:
    return math.exp(y) if log_y else y


def _lerp(y0: float, y1: float, w: float) -> float:
    if math.isinf(y0) or math.isinf(y1):  # a censored (infinite) rung: the nearer rung
        return y0 if w <= 0.5 else y1
    return y0 + w * (y1 - y0)


def build_profiles(run: RunDir, exp: pl.DataFrame, dev: pl.DataFrame,
                   lat: pl.DataFrame | None = None) -> dict[str, TenantProfile]:
    """Every tenant that ran alone: its profile (rungs sorted by rate)."""
    solo = solo_rows(exp, dev)
    if solo.height == 0:
        return {}
    lat = request_latencies(run) if lat is None else lat
    probes = {e.id for e in run.completed if e.manifest.get("probe")}
    out: dict[str, TenantProfile] = {}
    for t in [n for n in run.tenant_names if n in set(solo["tenant"])]:
        kind = run.tenant_kind(t)
        slo, mns = slo_of(run, t), max_num_seqs(run, t)
        rungs = []
        mine = solo.filter(pl.col("tenant") == t)
        for rate in sorted(set(mine["rung"])):
            rows = mine.filter(pl.col("rung") == rate)
            ids = rows["experiment_id"].to_list()
            arm = make_arm(lat, t, kind, ids)
            row = _rung_row(rows, arm, slo, kind, mns)
            row.update(tenant=t, tenant_kind=kind, offered_rps=rate, experiments=len(ids),
                       probes=sum(i in probes for i in ids))
            rungs.append(Rung(rate, arm, row))
        out[t] = TenantProfile(t, kind, slo, tuple(rungs))
    return out


def _rung_row(rows: pl.DataFrame, arm: Arm, slo: Slo, kind: str, mns: int | None) -> dict[str, Any]:
    scale = rows["rate_scale"].drop_nulls()
    row: dict[str, Any] = {"rate_scale": float(scale.min()) if scale.len() else None,  # type: ignore[arg-type]
                           "requests": arm.requests,
                           "max_num_seqs": mns, "attainment_target": slo.target}
    for f in DEVICE_FIGURES + TENANT_FIGURES + REQUEST_FIGURES:
        mean, sd = mean_sd(rows[f].to_list()) if f in rows.columns else (None, None)
        row[f], row[f"{f}_sd"] = mean, sd
    for f in REQUEST_FIGURES[:-1]:
        row[f] = arm.quantile(f)
    row["slo_attainment"] = arm.attainment(slo)
    if kind == "encoder":
        for f in ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s"):
            row[f] = row[f"{f}_sd"] = None
    row["binding"] = describe(binding_limits(row, kind=kind, max_num_seqs=mns))
    return row


def profile_table(profiles: Mapping[str, TenantProfile]) -> pl.DataFrame:
    """One row per tenant x offered rate (``tables/profiles.parquet``)."""
    rows = [{k: r.row.get(k) for k in PROFILE_SCHEMA} for p in profiles.values() for r in p.rungs]
    if not rows:
        return pl.DataFrame(schema=PROFILE_SCHEMA)
    return pl.DataFrame(rows, schema=PROFILE_SCHEMA, strict=False)
