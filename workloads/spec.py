"""Workload specs: what each active tenant is asked (an arrival process or a trace, and shapes).

Strict pydantic models; ``process``/``dist``/``kind`` pick the subtype. The generators
(`workloads.generators`) and importers (`workloads.importers`) turn these into traces.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from rundir.base import StrictModel as _Strict

# ---- arrival processes -------------------------------------------------------------------


class ConstantArrivals(_Strict):
    process: Literal["constant"] = "constant"
    rate: Annotated[float, Field(gt=0, description="Requests per second")]


class PoissonArrivals(_Strict):
    process: Literal["poisson"] = "poisson"
    rate: Annotated[float, Field(gt=0, description="Requests per second")]


class GammaArrivals(_Strict):
    process: Literal["gamma"] = "gamma"
    rate: Annotated[float, Field(gt=0, description="Requests per second")]
    cv: Annotated[
        float,
        Field(gt=0, description="Burstiness: coefficient of variation of the gaps (1 = Poisson)"),
    ] = 2.0


class OnOffArrivals(_Strict):
    process: Literal["onoff"] = "onoff"
    rate: Annotated[float, Field(gt=0, description="Requests per second while on")]
    on_s: Annotated[float, Field(gt=0)] = 5.0
    off_s: Annotated[float, Field(ge=0)] = 5.0


class RampArrivals(_Strict):
    process: Literal["ramp"] = "ramp"
    start_rate: Annotated[float, Field(ge=0)]
    end_rate: Annotated[float, Field(ge=0)]

    @model_validator(mode="after")
    def _some_rate(self) -> RampArrivals:
        if self.start_rate == 0 and self.end_rate == 0:
            raise ValueError("a ramp needs start_rate or end_rate above 0")
        return self

    @property
    def rate(self) -> float:
        return (self.start_rate + self.end_rate) / 2


Arrivals = Annotated[
    ConstantArrivals | PoissonArrivals | GammaArrivals | OnOffArrivals | RampArrivals,
    Field(discriminator="process"),
]

# ---- length distributions ----------------------------------------------------------------


class FixedLen(_Strict):
    dist: Literal["fixed"] = "fixed"
    value: Annotated[int, Field(ge=1)]


class UniformLen(_Strict):
    dist: Literal["uniform"] = "uniform"
    low: Annotated[int, Field(ge=1)]
    high: Annotated[int, Field(ge=1)]

    @model_validator(mode="after")
    def _ordered(self) -> UniformLen:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) is below low ({self.low})")
        return self


class NormalLen(_Strict):
    dist: Literal["normal"] = "normal"
    mean: Annotated[float, Field(gt=0)]
    std: Annotated[float, Field(ge=0)]
    low: Annotated[int, Field(ge=1)] = 1
    high: Annotated[int | None, Field(ge=1)] = None


class LognormalLen(_Strict):
    dist: Literal["lognormal"] = "lognormal"
    median: Annotated[float, Field(gt=0)]
    sigma: Annotated[float, Field(ge=0)] = 0.5
    low: Annotated[int, Field(ge=1)] = 1
    high: Annotated[int | None, Field(ge=1)] = None


class EmpiricalLen(_Strict):
    """Sample lengths from a column of another trace file."""

    dist: Literal["empirical"] = "empirical"
    path: str
    column: Literal["input_tokens", "output_tokens"]
    format: str = "auto"
    low: Annotated[int, Field(ge=1)] = 1
    high: Annotated[int | None, Field(ge=1)] = None


LengthDist = Annotated[
    FixedLen | UniformLen | NormalLen | LognormalLen | EmpiricalLen, Field(discriminator="dist")
]

# ---- workloads ---------------------------------------------------------------------------

Api = Literal["completions", "chat", "embeddings"]


class PrefixSpec(_Strict):
    """A shared prompt prefix: ``share`` of requests start with the same ``tokens`` tokens."""

    tokens: Annotated[int, Field(ge=0)] = 0
    share: Annotated[float, Field(ge=0, le=1)] = 0.0


class _WorkloadBase(_Strict):
    api: Annotated[
        Api | None,
        Field(description="Endpoint flavour; default: completions (vllm) or embeddings (encoder)"),
    ] = None
    max_concurrency: Annotated[
        int | None, Field(gt=0, description="Closed loop: at most this many in flight")
    ] = None
    timeout_s: Annotated[float, Field(gt=0, description="Per-request deadline")] = 120.0
    prefix: PrefixSpec = PrefixSpec()


class SyntheticWorkload(_WorkloadBase):
    kind: Literal["synthetic"] = "synthetic"
    arrival: Arrivals
    input_tokens: LengthDist = FixedLen(value=128)
    output_tokens: LengthDist = FixedLen(value=64)
    batch_size: Annotated[LengthDist, Field(description="Embedding items per request")] = FixedLen(
        value=1
    )


class TraceTransforms(_Strict):
    time_scale: Annotated[
        float, Field(gt=0, description="Multiply arrival times (0.1 = ten times faster)")
    ] = 1.0
    window: Annotated[
        tuple[float, float] | None, Field(description="Keep arrivals in [from, to) seconds")
    ] = None
    rate: Annotated[
        float | None, Field(gt=0, description="Rescale arrival times to this mean rate")
    ] = None
    max_input_tokens: Annotated[int | None, Field(ge=1)] = None
    max_output_tokens: Annotated[int | None, Field(ge=1)] = None
    min_input_tokens: Annotated[int, Field(ge=1)] = 1
    min_output_tokens: Annotated[int, Field(ge=1)] = 1


class TraceWorkload(_WorkloadBase):
    kind: Literal["trace"] = "trace"
    path: Annotated[str, Field(description="Trace file; relative paths are from the spec file")]
    format: Annotated[
        Literal["auto", "cotenant", "azure", "burstgpt", "mooncake", "sharegpt"],
        Field(description="Trace format; auto: detected from the header"),
    ] = "auto"
    transforms: TraceTransforms = TraceTransforms()
    loop: Annotated[bool, Field(description="Repeat the trace to fill the window")] = True
    skip_bad_rows: Annotated[
        bool, Field(description="Skip (and count) malformed rows instead of failing")
    ] = False
    skip_failed: Annotated[
        bool, Field(description="BurstGPT: leave out failed requests (0 response tokens)")
    ] = True


WorkloadSpec = Annotated[SyntheticWorkload | TraceWorkload, Field(discriminator="kind")]
