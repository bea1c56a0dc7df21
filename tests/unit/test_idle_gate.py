"""The idle gate before each experiment: what a tenant's /metrics says is busy, and the polling
until every tenant (and the GPU) is idle or the deadline has passed, against scripted
/metrics expositions served through httpx.MockTransport and a fake clock."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from orchestrator.idle import busy_reading, wait_idle
from orchestrator.spec import IdleSettings
from orchestrator.telemetry.scrape import parse_metrics


def vllm_text(running: int, waiting: int) -> str:
    """Two engines' gauges, as vLLM labels them (the gate sums over labels)."""
    return (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{engine="0",model_name="a"}} {running}\n'
        'vllm:num_requests_running{engine="1",model_name="a"} 0.0\n'
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{engine="0",model_name="a"}} {waiting}\n'
        "# HELP vllm:num_preemptions Cumulative number of preemption.\n"
        "# TYPE vllm:num_preemptions counter\n"
        'vllm:num_preemptions_total{engine="0",model_name="a"} 3.0\n'
    )


def encoder_text(queued: int, answered: int, batches: int, in_flight: int | None = None) -> str:
    text = (
        "# HELP encoder_queue_depth Items waiting for a batch\n"
        "# TYPE encoder_queue_depth gauge\n"
        f"encoder_queue_depth {queued}\n"
        "# HELP encoder_requests_total Requests answered\n"
        "# TYPE encoder_requests_total counter\n"
        f'encoder_requests_total{{status="200"}} {answered}\n'
        'encoder_requests_total{status="503"} 1.0\n'
        "# HELP encoder_batch_size Items per forward pass\n"
        "# TYPE encoder_batch_size histogram\n"
        'encoder_batch_size_bucket{le="1.0"} 0.0\n'
        f'encoder_batch_size_bucket{{le="+Inf"}} {batches}\n'
        f"encoder_batch_size_count {batches}\n"
        "encoder_batch_size_sum 10.0\n"
    )
    if in_flight is not None:
        text += ("# HELP encoder_requests_in_flight Requests held\n"
                 "# TYPE encoder_requests_in_flight gauge\n"
                 f"encoder_requests_in_flight {in_flight}\n")
    return text


def test_busy_reading_of_a_decoder_sums_its_engines() -> None:
    assert busy_reading("vllm", parse_metrics(vllm_text(0, 0))) == (None, None)
    assert busy_reading("vllm", parse_metrics(vllm_text(2, 1))) == ("2 running, 1 waiting", None)
    assert busy_reading("vllm", parse_metrics(vllm_text(0, 4))) == ("4 waiting", None)


def test_busy_reading_of_the_encoder() -> None:
    what, counters = busy_reading("encoder", parse_metrics(encoder_text(3, 10, 5)))
    assert what == "3 queued" and counters == (11.0, 5.0)  # answered summed over statuses
    assert busy_reading("encoder", parse_metrics(encoder_text(0, 10, 5)))[0] is None
    # with an in-flight gauge the gauge says it all: no counters to compare
    assert busy_reading("encoder", parse_metrics(encoder_text(0, 10, 5, in_flight=2))) == (
        "2 in flight", None)
    assert busy_reading("encoder", parse_metrics(encoder_text(0, 10, 5, in_flight=0))) == (
        None, None)


class Scripted:
    """Per URL a list of answers (text, or an HTTP status), one per poll; the last repeats.
    Each poll advances the fake clock by the poll period through ``sleep``."""

    def __init__(self, script: dict[str, list[str | int]]) -> None:
        self.script = script
        self.calls: dict[str, int] = {u: 0 for u in script}
        self.t = 0.0

    def handler(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        answers = self.script[url]
        i = min(self.calls[url], len(answers) - 1)
        self.calls[url] += 1
        a = answers[i]
        if isinstance(a, int):
            if a == 0:
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(a, text="no")
        return httpx.Response(200, text=a)

    def gate(self, settings: IdleSettings, endpoints: dict[str, tuple[str, str, dict]],
             gpu_util: Callable[[], float | None] | None = None) -> dict:
        client = httpx.Client(transport=httpx.MockTransport(self.handler))

        def sleep(s: float) -> None:
            self.t += s

        g = wait_idle(endpoints, settings, gpu_util=gpu_util, client=client, poll_s=0.5,
                      clock=lambda: self.t, sleep=sleep)
        return g.to_dict()


A = "http://a/metrics"
E = "http://e/metrics"
ENDPOINTS = {"a": ("vllm", A, {}), "e": ("encoder", E, {})}


def test_the_gate_waits_until_every_tenant_is_idle() -> None:
    s = Scripted({
        A: [vllm_text(3, 2), vllm_text(1, 0), vllm_text(0, 0)],
        E: [encoder_text(4, 10, 5), encoder_text(0, 12, 6), encoder_text(0, 12, 6)],
    })
    g = s.gate(IdleSettings(deadline_s=30), ENDPOINTS)
    assert g == {"waited_s": 1.0, "idle": True, "busy": {}, "gpu_util_pct": None}
    assert s.calls == {A: 3, E: 3}


def test_the_encoder_is_idle_only_once_its_counters_stand_still() -> None:
    # queue empty throughout, but requests keep finishing for two polls: something was in flight
    s = Scripted({A: [vllm_text(0, 0)],
                  E: [encoder_text(0, 10, 5), encoder_text(0, 11, 6), encoder_text(0, 12, 6),
                      encoder_text(0, 12, 6)]})
    g = s.gate(IdleSettings(deadline_s=30), ENDPOINTS)
    assert g["idle"] and g["waited_s"] == 1.5 and s.calls[E] == 4
    # with nothing changing, the second poll confirms the first
    s = Scripted({A: [vllm_text(0, 0)], E: [encoder_text(0, 10, 5)]})
    g = s.gate(IdleSettings(deadline_s=30), ENDPOINTS)
    assert g["idle"] and g["waited_s"] == 0.5 and s.calls[E] == 2
    # a decoder alone needs one look
    s = Scripted({A: [vllm_text(0, 0)]})
    g = s.gate(IdleSettings(deadline_s=30), {"a": ENDPOINTS["a"]})
    assert g["idle"] and g["waited_s"] == 0.0 and s.calls[A] == 1


def test_past_the_deadline_the_experiment_runs_anyway_and_says_what_was_busy() -> None:
    s = Scripted({A: [vllm_text(2, 1)], E: [encoder_text(0, 1, 1), encoder_text(0, 2, 2),
                                             encoder_text(0, 3, 3), encoder_text(0, 4, 4)]})
    g = s.gate(IdleSettings(deadline_s=1.2), ENDPOINTS)
    assert not g["idle"] and g["waited_s"] == 1.0
    assert g["busy"] == {"a": "2 running, 1 waiting", "e": "requests finishing"}


def test_unreadable_metrics_count_as_busy() -> None:
    s = Scripted({A: [0], E: [503]})
    g = s.gate(IdleSettings(deadline_s=0.4), ENDPOINTS)
    assert not g["idle"]
    assert g["busy"] == {"a": "metrics unreadable: ConnectError",
                         "e": "metrics unreadable: HTTPStatusError"}


def test_deadline_zero_is_one_look() -> None:
    s = Scripted({A: [vllm_text(0, 0)], E: [encoder_text(0, 10, 5)]})
    g = s.gate(IdleSettings(deadline_s=0), ENDPOINTS)
    assert g["idle"] and g["waited_s"] == 0.0 and s.calls == {A: 1, E: 1}


@pytest.mark.parametrize(("readings", "idle", "waited"), [
    ([80.0, 40.0, 5.0], True, 1.0),
    ([80.0], False, 2.0),
    ([None], True, 0.0),  # NVML could not say: the GPU does not hold the gate
])
def test_the_gpu_must_fall_below_its_threshold(readings: list[float | None], idle: bool,
                                              waited: float) -> None:
    it = iter(readings)
    last = [readings[-1]]

    def util() -> float | None:
        last[0] = next(it, last[0])
        return last[0]

    s = Scripted({A: [vllm_text(0, 0)]})
    g = s.gate(IdleSettings(deadline_s=2.2, gpu_util_pct=10), {"a": ENDPOINTS["a"]}, util)
    assert g["idle"] is idle and g["waited_s"] == waited
    assert g["gpu_util_pct"] == readings[-1]
    if not idle:
        assert g["busy"] == {"(gpu)": "utilization 80% (idle below 10%)"}


def test_the_nvml_reader_says_none_where_nvml_cannot() -> None:
    from orchestrator.idle import _nvml_utilization

    class Error(Exception):
        pass

    class Fake:
        NVMLError = Error

        def __init__(self, fail_handle: bool = False, fail_read: bool = False) -> None:
            self.fail_handle, self.fail_read = fail_handle, fail_read

        def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
            if self.fail_handle:
                raise Error("no such GPU")
            return i

        def nvmlDeviceGetUtilizationRates(self, h: int) -> object:  # noqa: N802
            if self.fail_read:
                raise Error("not supported")
            return type("U", (), {"gpu": 37, "memory": 5})()

    assert _nvml_utilization(None, 0) is None
    assert _nvml_utilization(Fake(fail_handle=True), 0) is None
    read = _nvml_utilization(Fake(), 0)
    assert read is not None and read() == 37.0
    read = _nvml_utilization(Fake(fail_read=True), 0)
    assert read is not None and read() is None
