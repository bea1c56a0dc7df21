"""The idle gate before each experiment: nothing running, waiting or queued in any resident
tenant (read off its /metrics) and the GPU's NVML utilization below the spec's threshold,
polled under a deadline (``experiment.idle``); an experiment that could not start idle runs
anyway, and its manifest's ``idle_gate`` says what was still busy."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from orchestrator.residents import ResidentSet
    from orchestrator.spec import CampaignSpec, IdleSettings

IDLE_POLL_S = 0.25  # the idle gate's polling period

# a gauge of requests the encoder holds (queued or in its forward pass), where it has one
ENCODER_IN_FLIGHT = ("encoder_requests_in_flight", "encoder_in_flight")
# the encoder's counters of work done: without an in-flight gauge, idle means they stand still
ENCODER_PROGRESS = ("encoder_requests_total", "encoder_batch_size_count")


@dataclass
class IdleGate:
    """What the idle gate saw (the manifest's ``idle_gate``)."""

    waited_s: float
    idle: bool
    busy: dict[str, str] = field(default_factory=dict)  # tenant (or "(gpu)") -> what was busy
    gpu_util_pct: float | None = None  # the last NVML reading; null without a GPU

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def busy_reading(kind: str, samples: list[tuple[str, dict[str, str], float]],
                 ) -> tuple[str | None, tuple[float, ...] | None]:
    """From one tenant's kept /metrics samples (``telemetry.scrape.parse_metrics``): what is
    busy ("2 running, 1 waiting"; None: nothing), and, for an encoder without an in-flight
    gauge, its work counters (to compare between polls; None where a gauge says it all)."""
    total: dict[str, float] = {}
    for name, _labels, value in samples:
        total[name] = total.get(name, 0.0) + value  # summed over labels (engines, statuses)
    if kind == "vllm":
        parts = [(total.get(f"vllm:num_requests_{w}", 0.0), w) for w in ("running", "waiting")]
        counters: tuple[float, ...] | None = None
    else:
        parts = [(total.get("encoder_queue_depth", 0.0), "queued")]
        gauge = next((g for g in ENCODER_IN_FLIGHT if g in total), None)
        if gauge is not None:
            parts.append((total[gauge], "in flight"))
        counters = None if gauge else tuple(total.get(c, 0.0) for c in ENCODER_PROGRESS)
    what = ", ".join(f"{v:g} {w}" for v, w in parts if v > 0)
    return what or None, counters


def idle_gate(spec: CampaignSpec, residents: ResidentSet) -> IdleGate:
    """The idle gate for ``residents`` with the spec's ``experiment.idle`` settings; the GPU's
    NVML utilization counts only where the memory plan is for a GPU."""
    from orchestrator.telemetry.nvml import nvml_session

    endpoints = {n: (spec.tenant(n).kind, f"{r.base_url}/metrics", r.headers())
                 for n, r in residents.running.items()}
    with contextlib.ExitStack() as stack:
        util = None
        if residents.plan.backend == "cuda":
            util = _nvml_utilization(stack.enter_context(nvml_session()), spec.gpu.index)
        return wait_idle(endpoints, spec.experiment.idle, gpu_util=util)


def _nvml_utilization(nvml: Any, index: int) -> Callable[[], float | None] | None:
    """A reader of GPU ``index``'s NVML utilization (None where NVML cannot say), or None
    without NVML."""
    if nvml is None:
        return None
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
    except nvml.NVMLError:
        return None

    def read() -> float | None:
        try:
            return float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except nvml.NVMLError:
            return None

    return read


def wait_idle(endpoints: Mapping[str, tuple[str, str, Mapping[str, str]]], settings: IdleSettings,
              *, gpu_util: Callable[[], float | None] | None = None,
              client: httpx.Client | None = None, poll_s: float = IDLE_POLL_S,
              clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep) -> IdleGate:
    """Poll ``endpoints`` (tenant -> (kind, /metrics URL, headers)) until every tenant has
    nothing running, waiting or queued (an encoder without an in-flight gauge: and its work
    counters stand still between two polls) and the GPU's utilization is below
    ``settings.gpu_util_pct``, or ``settings.deadline_s`` has passed (then not idle)."""
    import httpx

    from orchestrator.telemetry.scrape import parse_metrics

    own = client is None
    http = client or httpx.Client(timeout=2.0, trust_env=False)
    t0 = clock()
    prev: dict[str, tuple[float, ...] | None] = {}
    util: float | None = None
    try:
        while True:
            busy: dict[str, str] = {}
            now: dict[str, tuple[float, ...] | None] = {}
            for name, (kind, url, headers) in endpoints.items():
                try:
                    resp = http.get(url, headers=dict(headers))
                    resp.raise_for_status()
                    what, now[name] = busy_reading(kind, parse_metrics(resp.text))
                except (httpx.HTTPError, ValueError) as e:
                    busy[name] = f"metrics unreadable: {type(e).__name__}"
                    continue
                if what is None and now[name] is not None and prev.get(name, now[name]) != now[name]:
                    what = "requests finishing"
                if what:
                    busy[name] = what
            if gpu_util is not None:
                util = gpu_util()
                if util is not None and util >= settings.gpu_util_pct:
                    busy["(gpu)"] = f"utilization {util:g}% (idle below {settings.gpu_util_pct:g}%)"
            waited = clock() - t0
            unconfirmed = any(c is not None and n not in prev for n, c in now.items())
            out_of_time = waited + poll_s > settings.deadline_s
            if not busy and (not unconfirmed or out_of_time):
                return IdleGate(round(waited, 3), True, {}, util)
            if out_of_time:
                return IdleGate(round(waited, 3), False, busy, util)
            prev = now
            sleep(poll_s)
    finally:
        if own:
            http.close()
