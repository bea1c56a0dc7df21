"""The campaign spec: one strict YAML file (pydantic) for `cotenant up`, `validate` and `run`.

A misspelled key, a wrong type, a negative rate, a missing trace file or an active
tenant that is not resident is one `SpecError` naming the file and the field.
"""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from orchestrator.errors import SpecError
from rundir.base import StrictModel as _Strict
from servers.spec import TenantSpec
from workloads.spec import EmpiricalLen, SyntheticWorkload, TraceWorkload, WorkloadSpec


class ExplicitSet(_Strict):
    """An explicit experiment: these tenants resident, these active (default: all resident)."""

    resident: Annotated[list[str], Field(min_length=1)]
    active: Annotated[list[str] | None, Field(min_length=1)] = None


StrategyItem = Literal["isolated", "pairs", "all", "capacity"] | ExplicitSet

Rates = dict[str, Annotated[float, Field(gt=0)]]


class CapacitySettings(_Strict):
    """The capacity search (``strategy: [capacity]``, ``orchestrator.capacity``): each
    tenant's highest offered rate alone at which its SLO attainment meets the target, then
    each set's highest scale along a mix at which every tenant does."""

    tenants: Annotated[
        list[str] | None,
        Field(description="Searched alone; null: every tenant with a workload and an SLO"),
    ] = None
    sets: Annotated[
        list[Annotated[list[str], Field(min_length=2)]],
        Field(description="Co-located sets searched along every mix (each of its tenants is "
              "searched alone first)"),
    ] = []
    rays: Annotated[
        int, Field(ge=0, le=9, description="Mixes per set, evenly spread in angle in the space "
                   "of r_i / C_i (pairs only); 1: every tenant at the same fraction of its solo "
                   "capacity; 0: only the explicit mixes")
    ] = 1
    mixes: Annotated[
        list[Rates],
        Field(description="Explicit mixes after the rays: relative req/s per tenant, e.g. "
              "{a: 1, b: 1} for the same rate"),
    ] = []
    tolerance: Annotated[
        float, Field(gt=0, lt=1, description="Stop when the bracket's hi / lo - 1 is at most this")
    ] = 0.05
    step: Annotated[float, Field(gt=1, le=16, description="Bracketing factor")] = 2.0
    level: Annotated[
        float, Field(gt=0.5, lt=1, description="Level of each probe's binomial (Clopper-Pearson) "
                     "interval of attainment")
    ] = 0.95
    max_attempts: Annotated[
        int, Field(ge=1, le=20, description="A probe whose interval straddles the target is "
                   "repeated up to this many attempts; then its point estimate decides")
    ] = 3
    max_probes: Annotated[int, Field(ge=2, le=200, description="Probes per search at most")] = 16
    start_rps: Annotated[
        Rates, Field(description="First probe per tenant; default: its workload's rate")
    ] = {}
    min_rps: Annotated[
        Rates, Field(description="Below this a tenant's capacity is 0; default: start / 16")
    ] = {}
    max_rps: Annotated[
        Rates, Field(description="Above this a capacity is only bounded (at least); default: "
                     "start x 64")
    ] = {}
    early_stop: Annotated[
        bool, Field(description="End a probe once its misses make the target unreachable")
    ] = True
    confirm_failures: Annotated[
        bool, Field(description="A probe fails only when two of its attempts fail (one failing "
                    "window is repeated first, within max_attempts): a transient on the host "
                    "fails one window, not the next")
    ] = True
    min_requests: Annotated[
        int, Field(ge=1, description="A probe's window is lengthened until every tenant expects "
                   "this many requests in it (at most max_window_s)")
    ] = 40
    max_window_s: Annotated[
        float | None, Field(gt=0, description="The longest probe window; null: 8 x "
                            "experiment.duration_s")
    ] = None


class WarmupSettings(_Strict):
    """Server warm-up after every start and restart of a resident set: discarded requests with
    the campaign's own shapes, round after round, until two rounds agree (``orchestrator.warmup``)."""

    enabled: Annotated[bool, Field(description="Warm each server up after it starts")] = True
    tolerance: Annotated[
        float,
        Field(gt=0, le=1, description="Two consecutive rounds agree when their p50 E2E latencies "
              "differ by at most this share (larger / smaller - 1)"),
    ] = 0.15
    deadline_s: Annotated[
        float, Field(gt=0, description="Per tenant: give up (not settled) after this long")
    ] = 120.0
    max_rounds: Annotated[
        int, Field(ge=2, le=1000, description="Per tenant: give up (not settled) after this many rounds")
    ] = 10


class IdleSettings(_Strict):
    """The idle gate before each experiment: nothing running or waiting in any resident tenant,
    and the GPU near idle (``orchestrator.idle.wait_idle``)."""

    deadline_s: Annotated[
        float, Field(ge=0, description="Wait at most this long; then the experiment runs anyway, "
                     "recorded as not idle")
    ] = 30.0
    gpu_util_pct: Annotated[
        float, Field(gt=0, le=100, description="The GPU counts as idle below this NVML "
                     "utilization (ignored without a GPU)")
    ] = 10.0


class PrecisionSettings(_Strict):
    """Precision as a goal: after the planned blocks, add blocks until every co-located
    tenant's primary figure has a paired log-ratio interval no wider than the target."""

    half_width: Annotated[
        float, Field(gt=0, description="Target half-width of the interval of log(co-located / "
                     "alone), e.g. 0.05 (about ±5%)")
    ] = 0.05
    max_repetitions: Annotated[
        int, Field(ge=2, le=1000, description="Stop adding blocks at this many repetitions")
    ] = 40
    figures: Annotated[
        dict[str, str],
        Field(description="tenant -> figure column; default tpot_p50_s (decoders), "
              "e2e_p50_s (the encoder)"),
    ] = {}


class ExperimentSettings(_Strict):
    warmup_s: Annotated[float, Field(ge=0, description="Requests sent but flagged warm-up")] = 5.0
    duration_s: Annotated[float, Field(gt=0, description="Measurement window")] = 30.0
    drain_s: Annotated[float, Field(ge=0, description="Deadline for in-flight requests after")] = 30.0
    repetitions: Annotated[
        int, Field(ge=1, le=1000, description="Blocks: each holds every cell of a resident set once")
    ] = 1
    seed: Annotated[
        int | None,
        Field(ge=0, description="Order seed; null: a fresh one per campaign, recorded in "
              "campaign.json (--resume reuses it; `cotenant run --seed N` overrides)"),
    ] = None
    restarts: Annotated[
        int | None,
        Field(ge=1, le=1000, description="Server lifetimes: restart the resident set between "
              "contiguous chunks of blocks; null: 2 on a GPU, 1 on the CPU"),
    ] = None
    warmup: WarmupSettings = WarmupSettings()
    idle: IdleSettings = IdleSettings()
    precision: Annotated[
        PrecisionSettings | None,
        Field(description="Add blocks until intervals are narrow enough; null: a fixed count"),
    ] = None
    rate_scales: Annotated[
        list[Annotated[float, Field(gt=0)]],
        Field(
            min_length=1,
            max_length=1000,
            description="Sweep: multiply every offered rate by each factor",
        ),
    ] = [1.0]
    residency: Annotated[
        Literal["shared", "exact"],
        Field(
            description="shared: every tenant stays resident (idle ones hold memory), servers start "
            "once; exact: only the active set is resident (restarts between sets)"
        ),
    ] = "shared"

    @model_validator(mode="after")
    def _counts(self) -> ExperimentSettings:
        if self.restarts is not None and self.restarts > self.repetitions:
            raise ValueError(f"restarts ({self.restarts}) exceeds repetitions "
                             f"({self.repetitions}): each server lifetime needs a block")
        p = self.precision
        if p is not None and p.max_repetitions < self.repetitions:
            raise ValueError(f"precision.max_repetitions ({p.max_repetitions}) is below "
                             f"repetitions ({self.repetitions})")
        return self


class Slo(_Strict):
    ttft_ms: Annotated[float | None, Field(gt=0)] = None
    tpot_ms: Annotated[float | None, Field(gt=0)] = None
    e2e_ms: Annotated[float | None, Field(gt=0)] = None
    attainment: Annotated[
        float, Field(gt=0, le=1, description="Target share of requests that meet every bound")
    ] = 0.90


class ReportSettings(_Strict):
    """How reports decide: the verdict margin, the interval level, multiplicity, pooling."""

    margin: Annotated[
        float, Field(ge=0, lt=1, description="Verdict margin delta: hurts above 1 + delta")
    ] = 0.10
    level: Annotated[float, Field(gt=0.5, lt=1, description="Confidence level of intervals")] = 0.95
    multiplicity: Annotated[
        Literal["holm", "bh", "none"],
        Field(description="Correction across the figures one report tests"),
    ] = "holm"
    pool_variance: Annotated[
        Literal["auto", "always", "never"],
        Field(description="Pool the residual variance over a campaign's cells; auto: when a "
              "cell has fewer than 5 pairs"),
    ] = "auto"


class TelemetrySettings(_Strict):
    enabled: bool = True
    interval_s: Annotated[float, Field(gt=0, description="Device counters (NVML or host)")] = 0.1
    process_interval_s: Annotated[float, Field(gt=0, description="Per-process memory")] = 0.5
    scrape_interval_s: Annotated[float, Field(gt=0, description="Tenants' /metrics")] = 1.0
    gpm: bool = True


class SharingSettings(_Strict):
    mode: Literal["time-slice", "mps"] = "time-slice"
    mps_active_thread_percentage: Annotated[
        dict[str, Annotated[int, Field(ge=1, le=100)]],
        Field(description="Per tenant CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"),
    ] = {}


class GpuSettings(_Strict):
    memory_gib: Annotated[
        float | None, Field(gt=0, description="Plan for this much memory instead of asking NVML")
    ] = None
    reserve_frac: Annotated[float, Field(ge=0, lt=1, description="Kept free for the driver")] = 0.05
    index: Annotated[int, Field(ge=0)] = 0


class CampaignSpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    description: str = ""
    tenants: Annotated[list[TenantSpec], Field(min_length=1)]
    workloads: dict[str, WorkloadSpec] = {}
    strategy: Annotated[list[StrategyItem], Field(min_length=1)] = ["isolated"]
    experiment: ExperimentSettings = ExperimentSettings()
    slo: dict[str, Slo] = {}
    report: ReportSettings = ReportSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    sharing: SharingSettings = SharingSettings()
    gpu: GpuSettings = GpuSettings()
    capacity: CapacitySettings = CapacitySettings()

    @model_validator(mode="after")
    def _names(self) -> CampaignSpec:
        scales = self.experiment.rate_scales
        if len(set(scales)) != len(scales):
            # two equal factors would give two experiments the same id (and run directory)
            raise ValueError(f"experiment.rate_scales: a factor is repeated: {scales}")
        names = [t.name for t in self.tenants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"tenant names must be unique; repeated: {', '.join(dup)}")
        ports = [t.port for t in self.tenants if t.port is not None]
        dupp = sorted({p for p in ports if ports.count(p) > 1})
        if dupp:
            raise ValueError(f"two tenants ask for the same port: {dupp}")
        known = set(names)
        for section in ("workloads", "slo"):
            for key in getattr(self, section):
                if key not in known:
                    raise ValueError(f"{section}.{key}: no tenant named {key!r} (tenants: {', '.join(names)})")
        precision = self.experiment.precision
        for key, figure in (precision.figures if precision else {}).items():
            if key not in known:
                raise ValueError(f"experiment.precision.figures.{key}: no tenant named {key!r}")
            _check_figure(f"experiment.precision.figures.{key}", figure)
        for key in self.sharing.mps_active_thread_percentage:
            if key not in known:
                raise ValueError(f"sharing.mps_active_thread_percentage.{key}: no such tenant")
        _check_capacity(self.capacity, known, self)
        for i, item in enumerate(self.strategy):
            if isinstance(item, ExplicitSet):
                for field in ("resident", "active"):
                    members = getattr(item, field) or []
                    twice = sorted({n for n in members if members.count(n) > 1})
                    if twice:
                        raise ValueError(f"strategy.{i}.{field}: {', '.join(twice)} listed twice")
                for n in item.resident + (item.active or []):
                    if n not in known:
                        raise ValueError(f"strategy.{i}: no tenant named {n!r}")
                missing = [n for n in (item.active or []) if n not in item.resident]
                if missing:
                    raise ValueError(
                        f"strategy.{i}.active: {', '.join(missing)} not in the resident set "
                        f"{item.resident}"
                    )
        return self

    def tenant(self, name: str) -> Any:
        for t in self.tenants:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def tenant_names(self) -> list[str]:
        return [t.name for t in self.tenants]


def _check_capacity(c: CapacitySettings, known: set[str], spec: CampaignSpec) -> None:
    """Every name in ``capacity`` is a tenant; a searched tenant has a workload and an SLO
    (the search needs both); a set is listed once."""
    for t in c.tenants or []:
        if t not in known:
            raise ValueError(f"capacity.tenants: no tenant named {t!r}")
    for i, members in enumerate(c.sets):
        for t in members:
            if t not in known:
                raise ValueError(f"capacity.sets.{i}: no tenant named {t!r}")
        if len(set(members)) != len(members):
            raise ValueError(f"capacity.sets.{i}: a tenant is listed twice: {members}")
    for field in ("start_rps", "min_rps", "max_rps"):
        for t in getattr(c, field):
            if t not in known:
                raise ValueError(f"capacity.{field}.{t}: no tenant named {t!r}")
    for i, mix in enumerate(c.mixes):
        for t in mix:
            if t not in known:
                raise ValueError(f"capacity.mixes.{i}.{t}: no tenant named {t!r}")
    if "capacity" not in spec.strategy:
        return
    searched = set(c.tenants or []) | {t for m in c.sets for t in m}
    for t in sorted(searched, key=spec.tenant_names.index):
        if t not in spec.workloads:
            raise ValueError(f"capacity: tenant {t!r} has no workload (workloads.{t}) to scale")
        slo = spec.slo.get(t)
        if slo is None or (slo.ttft_ms, slo.tpot_ms, slo.e2e_ms) == (None, None, None):
            raise ValueError(f"capacity: tenant {t!r} has no SLO bound (slo.{t}: ttft_ms, "
                             "tpot_ms or e2e_ms) to judge its probes by")
    for i, mix in enumerate(c.mixes):
        for members in c.sets:
            missing = [t for t in members if t not in mix]
            if missing:
                raise ValueError(f"capacity.mixes.{i}: gives no rate for {', '.join(missing)} "
                                 f"of the set {'+'.join(members)}")


def searched_alone(spec: CampaignSpec) -> list[str]:
    """The tenants a capacity search measures alone: ``capacity.tenants`` (default: every
    tenant with a workload and an SLO bound), and every member of a searched set."""
    c = spec.capacity
    if c.tenants is not None:
        names = set(c.tenants)
    else:
        names = {t for t in spec.workloads
                 if (s := spec.slo.get(t)) is not None
                 and (s.ttft_ms, s.tpot_ms, s.e2e_ms) != (None, None, None)}
    names |= {t for m in c.sets for t in m}
    return [t for t in spec.tenant_names if t in names]


def _check_figure(where: str, figure: str) -> None:
    from reports.metrics import metric_columns

    known = metric_columns()
    if figure not in known:
        raise ValueError(f"{where}: {figure!r} is not a figure of the experiment table "
                         f"(e.g. tpot_p50_s, ttft_p50_s, e2e_p50_s)")


def _loc(loc: tuple[Any, ...], data: Any) -> str:
    """Turn a pydantic location into a readable field path (tenants[1].name → tenants.llama.name)."""
    parts: list[str] = []
    node = data
    for p in loc:
        if isinstance(p, int) and isinstance(node, list) and p < len(node):
            item = node[p]
            label = item.get("name") if isinstance(item, dict) else None
            parts.append(f"{p}({label})" if label else str(p))
            node = item
        else:
            parts.append(str(p))
            node = node.get(p) if isinstance(node, dict) else None
    return ".".join(parts)


def parse_spec(data: Any, source: str = "<spec>") -> CampaignSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec is a YAML mapping with at least 'name' and 'tenants'")
    try:
        return CampaignSpec.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors()[:10]:
            # the discriminator adds the chosen kind to the location; keep it, it helps
            loc = _loc(tuple(err["loc"]), data) or "(top level)"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (misspelled?)"
            lines.append(f"  {loc}: {msg}")
        more = "" if len(e.errors()) <= 10 else f"\n  ... and {len(e.errors()) - 10} more"
        raise SpecError(f"{source}: invalid spec\n" + "\n".join(lines) + more) from None


def load_spec(path: str | Path, *, check_files: bool = True) -> tuple[CampaignSpec, Path]:
    """Read and validate a spec file. Returns the spec and the folder relative paths start from."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise SpecError(f"{path}: is a folder, not a spec file") from None
    except OSError as e:
        raise SpecError(f"{path}: cannot read the spec: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise SpecError(
            f"{path}, line {line}: not UTF-8 text (byte {e.start + 1}: {raw[e.start]:#04x})"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    except RecursionError:
        raise SpecError(f"{path}: not valid YAML: nested too deeply") from None
    spec = parse_spec(data, str(path))
    base = path.resolve().parent
    if check_files:
        for name, w in spec.workloads.items():
            for field, p in _files_of(w):
                if not resolve_path(base, p).is_file():
                    raise SpecError(f"{path}: workloads.{name}.{field}: no such file: {p}")
    return spec, base


def _files_of(w: SyntheticWorkload | TraceWorkload) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if isinstance(w, TraceWorkload):
        out.append(("path", w.path))
    else:
        for field in ("input_tokens", "output_tokens", "batch_size"):
            d = getattr(w, field)
            if isinstance(d, EmpiricalLen):
                out.append((f"{field}.path", d.path))
    return out


def resolve_path(base: Path, p: str) -> Path:
    q = Path(p)
    with contextlib.suppress(RuntimeError):  # ~user of no such user: leave it as written
        q = q.expanduser()
    return q if q.is_absolute() else base / q


# ---- strategy expansion -----------------------------------------------------------------


def expand_sets(spec: CampaignSpec) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(resident, active) pairs the strategy asks for, in spec order, without repeats."""
    names = spec.tenant_names
    exact = spec.experiment.residency == "exact"
    out: list[tuple[tuple[str, ...], tuple[str, ...]]] = []

    def add(resident: tuple[str, ...], active: tuple[str, ...]) -> None:
        key = (tuple(sorted(resident, key=names.index)), tuple(sorted(active, key=names.index)))
        if key not in out:
            out.append(key)

    everyone = tuple(names)
    for item in spec.strategy:
        if item == "isolated":
            for n in names:
                add((n,) if exact else everyone, (n,))
        elif item == "pairs":
            for a, b in itertools.combinations(names, 2):
                add((a, b) if exact else everyone, (a, b))
        elif item == "all":
            add(everyone, everyone)
        elif isinstance(item, ExplicitSet):
            add(tuple(item.resident), tuple(item.active or item.resident))
        # "capacity": its probes are planned as they go (orchestrator.capacity)
    return out
