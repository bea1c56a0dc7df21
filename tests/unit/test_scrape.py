"""The metrics scraper against a real prometheus_client exposition on a free local port.

Scrapes are due on a clock the test advances (``tickclock.FakeTickClock``, also the rows'
experiment clock), so the tests count exact scrapes and never sleep on wall time."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_http_server

from orchestrator.telemetry.scrape import (
    KEEP_METRICS,
    SCRAPE_DURATION,
    SCRAPE_ERROR,
    SERVER_METRICS_SCHEMA,
    MetricsScraper,
    keep_sample,
    parse_metrics,
)
from tests.unit.tickclock import FakeTickClock

ROOT = Path(__file__).resolve().parents[2]


def _scraper(endpoints: dict[str, str], **kw: Any) -> tuple[MetricsScraper, FakeTickClock]:
    """A scraper every 0.1 s on a clock the test advances, started."""
    clock = FakeTickClock()
    kw.setdefault("experiment_id", "e")
    s = MetricsScraper(clock, endpoints, interval_s=0.1, tick_clock=clock, **kw)
    return s.start(), clock


def vllm_like_registry() -> CollectorRegistry:
    """What a vLLM server and the encoder expose, in miniature, plus noise to drop."""
    reg = CollectorRegistry()
    labels = ["model_name", "engine"]
    Gauge("vllm:kv_cache_usage_perc", "kv", labels, registry=reg).labels("m", "0").set(0.25)
    Gauge("vllm:num_requests_running", "r", labels, registry=reg).labels("m", "0").set(3)
    Gauge("vllm:num_requests_waiting", "w", labels, registry=reg).labels("m", "0").set(1)
    Counter("vllm:num_preemptions", "p", labels, registry=reg).labels("m", "0").inc(2)
    Counter("vllm:prompt_tokens", "pt", labels, registry=reg).labels("m", "0").inc(512)
    Counter("vllm:generation_tokens", "gt", labels, registry=reg).labels("m", "0").inc(128)
    info = Gauge("vllm:cache_config_info", "cc", ["block_size", "num_gpu_blocks"], registry=reg)
    info.labels("16", "4096").set(1)
    Histogram("vllm:time_to_first_token_seconds", "ttft", labels, registry=reg).labels(
        "m", "0"
    ).observe(0.05)
    Gauge("encoder_queue_depth", "q", registry=reg).set(4)
    Counter("encoder_items_embedded", "i", registry=reg).inc(640)
    h = Histogram("encoder_batch_size", "b", buckets=(1, 8, 32, 64), registry=reg)
    for n in (4, 16, 64):
        h.observe(n)
    Counter("http_requests", "noise", registry=reg).inc()
    return reg


@pytest.fixture
def exposition() -> Iterator[str]:
    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=vllm_like_registry())
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_parse_keeps_the_useful_families_and_drops_the_rest() -> None:
    text = generate_latest(vllm_like_registry()).decode()
    names = {name for name, _, _ in parse_metrics(text)}
    assert names == {
        "vllm:kv_cache_usage_perc",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:num_preemptions_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:cache_config_info",
        "encoder_queue_depth",
        "encoder_items_embedded_total",
        "encoder_batch_size_sum",
        "encoder_batch_size_count",
    }
    got = {(n, json.dumps(lab, sort_keys=True)): v for n, lab, v in parse_metrics(text)}
    assert got[("encoder_batch_size_sum", "{}")] == 84.0
    assert got[("encoder_batch_size_count", "{}")] == 3.0
    key = ("vllm:num_preemptions_total", json.dumps({"engine": "0", "model_name": "m"}))
    assert got[key] == 2.0
    assert not keep_sample("encoder_batch_size_bucket", "histogram")
    assert not keep_sample("encoder_items_embedded_created", "counter")
    assert not keep_sample(
        "encoder_items_embedded_created", "gauge", frozenset({"encoder_items_embedded"})
    )
    assert keep_sample("encoder_last_created", "gauge")  # a gauge that happens to end so
    assert keep_sample("encoder_anything_new", "gauge")
    assert "vllm:num_preemptions_total" in KEEP_METRICS


def test_scraper_rows_follow_the_doc_and_info_is_written_once(
    exposition: str, tmp_path: Path
) -> None:
    s, clock = _scraper({"llama": exposition}, experiment_id="exp-1")
    clock.ticks(10, 0.1)
    df = s.stop()
    assert dict(df.schema) == SERVER_METRICS_SCHEMA
    assert (df["experiment_id"] == "exp-1").all() and (df["tenant"] == "llama").all()
    durations = df.filter(pl.col("metric") == SCRAPE_DURATION)
    scrapes = durations.height
    assert scrapes == 10  # one a tick
    assert durations["t_s"].to_list() == pytest.approx([k * 0.1 for k in range(10)])
    assert df.filter(pl.col("metric") == SCRAPE_ERROR).height == 0
    running = df.filter(pl.col("metric") == "vllm:num_requests_running")
    assert running.height == scrapes
    assert json.loads(running["labels"][0]) == {"engine": "0", "model_name": "m"}
    assert running["value"].unique().to_list() == [3.0]
    info = df.filter(pl.col("metric") == "vllm:cache_config_info")
    assert info.height == 1
    assert json.loads(info["labels"][0]) == {"block_size": "16", "num_gpu_blocks": "4096"}
    assert df["t_s"].is_sorted()
    s.write(tmp_path / "server_metrics.parquet")
    back = pl.read_parquet(tmp_path / "server_metrics.parquet")
    assert dict(back.schema) == SERVER_METRICS_SCHEMA and back.height == df.height


def test_documented_metric_names_are_kept() -> None:
    text = (ROOT / "docs" / "run-directory.md").read_text()
    section = text.split("## server_metrics.parquet", 1)[1]
    for name in ("vllm:kv_cache_usage_perc", "vllm:num_requests_running",
                 "vllm:num_requests_waiting", "vllm:num_preemptions_total",
                 "encoder_queue_depth"):  # fmt: skip
        assert f"`{name}`" in section
        assert keep_sample(name, "gauge")


def test_a_down_server_gives_error_rows_not_exceptions(exposition: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    s, clock = _scraper({"up": exposition, "down": dead})
    clock.ticks(6, 0.1, threads=2)  # a thread an endpoint
    df = s.stop()
    down = df.filter(pl.col("tenant") == "down")
    assert down.height == 6
    assert down["metric"].unique().to_list() == [SCRAPE_ERROR]
    assert down["value"].unique().to_list() == [1.0]
    assert "Connect" in json.loads(down["labels"][0])["error"]
    up = df.filter(pl.col("tenant") == "up")
    assert up.filter(pl.col("metric") == "vllm:num_requests_running").height == 6
    assert s.stats()["down"]["failures"] == down.height


def test_a_server_that_goes_away_mid_run_turns_into_error_rows() -> None:
    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=vllm_like_registry())
    url = f"http://127.0.0.1:{httpd.server_port}"
    s, clock = _scraper({"t": url})
    clock.ticks(5, 0.1)
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)
    clock.ticks(10, 0.1)
    df = s.stop()
    metrics = df["metric"].to_list()
    assert "vllm:num_requests_running" in metrics
    last = df.filter(pl.col("t_s") == df["t_s"].max())
    assert last["metric"].to_list() == [SCRAPE_ERROR]


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]] = []
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        body = generate_latest(vllm_like_registry())
        self.send_response(self.status)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Rec", (_Recorder,), {"seen": [], "status": 200})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/", handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(5)


def test_api_key_and_path(recorder: tuple[str, type[_Recorder]]) -> None:
    url, handler = recorder
    s, clock = _scraper({"t": url}, api_keys={"t": "sk-x"})
    clock.ticks(1, 0.1)
    s.stop()
    assert handler.seen and handler.seen[0] == ("/metrics", "Bearer sk-x")


def test_http_error_status_is_an_error_row(recorder: tuple[str, type[_Recorder]]) -> None:
    url, handler = recorder
    handler.status = 503
    s, clock = _scraper({"t": url})
    clock.ticks(2, 0.1)
    df = s.stop()
    assert df.height == 2 and set(df["metric"]) == {SCRAPE_ERROR}
    assert "503" in json.loads(df["labels"][0])["error"]
