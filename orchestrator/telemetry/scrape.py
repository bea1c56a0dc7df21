"""Scrape the tenants' Prometheus ``/metrics`` while an experiment runs.

One daemon thread per endpoint, each with its own ``httpx.Client`` and absolute-time
schedule (``periodic.Periodic``), so a slow or dead server delays nobody else and the
replayer's event loop is not involved. Rows are long form, as ``docs/run-directory.md``
(server_metrics.parquet) says: experiment_id, t_s, tenant, metric, labels (JSON text,
keys sorted), value. ``t_s`` is the experiment clock when the request went out.

Kept: the samples named in ``KEEP_METRICS`` and every sample whose name starts with one of
``KEEP_PREFIXES`` (the encoder's own metrics: name them ``encoder_...``), minus histogram
buckets and ``_created`` timestamps. ``*_info`` metrics (labels only, value 1) are written
once per tenant and label set, not every scrape. Two rows a scrape describe the scrape
itself: ``scrape_duration_s`` after each success, and ``scrape_error`` (value 1, the
reason in ``labels.error``) instead of an exception when a scrape fails.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import polars as pl
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.telemetry.periodic import SYSTEM_CLOCK, Clock, Periodic, TickClock
from rundir.io import atomic_write_parquet
from rundir.schema import SERVER_METRICS_SCHEMA, rows_to_frame

log = logging.getLogger(__name__)


KEEP_METRICS: frozenset[str] = frozenset(
    {
        # vLLM V1 (0.8+): scheduler state and KV cache
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",  # the same, older vLLM
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        # counters (sample names carry _total)
        "vllm:num_preemptions_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:request_success_total",
        # labels only: num_gpu_blocks, block_size, gpu_memory_utilization, ...
        "vllm:cache_config_info",
    }
)
KEEP_PREFIXES: tuple[str, ...] = ("encoder_",)

SCRAPE_ERROR = "scrape_error"
SCRAPE_DURATION = "scrape_duration_s"

_TIMESTAMP_TYPES = {"counter", "histogram", "summary", "gaugehistogram"}


def keep_sample(name: str, family_type: str, created_of: frozenset[str] = frozenset()) -> bool:
    """Whether a sample of this name (from a family of this type) is kept.

    ``created_of``: the counter / histogram / summary families of the same exposition, whose
    ``<name>_created`` timestamps the text format exposes as families of their own.
    """
    if family_type in {"histogram", "gaugehistogram"} and name.endswith("_bucket"):
        return False
    if name.endswith("_created") and (
        family_type in _TIMESTAMP_TYPES or name.removesuffix("_created") in created_of
    ):
        return False
    return name in KEEP_METRICS or name.startswith(KEEP_PREFIXES)


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """The kept samples of a Prometheus text exposition: (name, labels, value)."""
    families = list(text_string_to_metric_families(text))
    created_of = frozenset(f.name for f in families if f.type in _TIMESTAMP_TYPES)
    out = []
    for family in families:
        for s in family.samples:
            if keep_sample(s.name, family.type, created_of):
                out.append((s.name, dict(s.labels), float(s.value)))
    return out


def _labels_json(labels: Mapping[str, str]) -> str:
    return json.dumps(dict(labels), sort_keys=True)


class _Endpoint:
    """One tenant's scrape loop."""

    def __init__(self, owner: MetricsScraper, tenant: str, url: str, headers: dict[str, str]):
        self.owner = owner
        self.tenant = tenant
        self.url = url.rstrip("/") + "/metrics"
        self.client = httpx.Client(timeout=owner.timeout_s, headers=headers)
        self.seen_info: set[tuple[str, str]] = set()
        self.loop = Periodic(f"cotenant-scrape-{tenant}", owner.interval_s, self.scrape,
                             owner.tick_clock)
        self.scrapes = 0
        self.failures = 0

    def scrape(self) -> None:
        o = self.owner
        t_s = o.clock.now_s()
        t0 = time.perf_counter()
        base = {"experiment_id": o.experiment_id, "t_s": t_s, "tenant": self.tenant}
        self.scrapes += 1
        try:
            r = self.client.get(self.url)
            r.raise_for_status()
            samples = parse_metrics(r.text)
        except (httpx.HTTPError, ValueError) as e:
            self.failures += 1
            err = f"{type(e).__name__}: {e}"
            if self.failures <= 3:
                log.info("scrape of %s (%s) failed: %s", self.tenant, self.url, err)
            o._add(
                [
                    {
                        **base,
                        "metric": SCRAPE_ERROR,
                        "labels": _labels_json({"error": err}),
                        "value": 1.0,
                    }
                ]
            )
            return
        rows = []
        for name, labels, value in samples:
            lj = _labels_json(labels)
            if name.endswith("_info"):
                if (name, lj) in self.seen_info:
                    continue
                self.seen_info.add((name, lj))
            rows.append({**base, "metric": name, "labels": lj, "value": value})
        rows.append(
            {**base, "metric": SCRAPE_DURATION, "labels": "{}", "value": time.perf_counter() - t0}
        )
        o._add(rows)


class MetricsScraper:
    """Scrapes ``<base URL>/metrics`` of each tenant every ``interval_s`` on threads.

    ``endpoints`` maps a tenant to its base URL (``http://127.0.0.1:8001``); ``api_keys``
    (tenant -> key) adds ``Authorization: Bearer``. ``timeout_s`` defaults to the interval,
    at least 1 s. ``tick_clock`` says when scrapes are due (``periodic.TickClock``; tests inject
    one they advance). Use as a context manager or ``start()`` / ``stop()``.
    """

    def __init__(
        self,
        clock: Clock,
        endpoints: Mapping[str, str],
        *,
        experiment_id: str,
        interval_s: float = 1.0,
        api_keys: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        tick_clock: TickClock = SYSTEM_CLOCK,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.clock = clock
        self.tick_clock = tick_clock  # when scrapes are due (periodic.py)
        self.experiment_id = experiment_id
        self.interval_s = interval_s
        self.timeout_s = timeout_s if timeout_s is not None else max(1.0, interval_s)
        self.endpoints = dict(endpoints)
        self.api_keys = dict(api_keys or {})
        self._lock = threading.Lock()
        self._rows: list[dict[str, Any]] = []
        self._eps: list[_Endpoint] = []
        self._frame: pl.DataFrame | None = None

    def start(self) -> MetricsScraper:
        if self._eps:
            raise RuntimeError("MetricsScraper already started")
        for tenant, url in self.endpoints.items():
            key = self.api_keys.get(tenant)
            headers = {"Accept": "text/plain"}
            if key:
                headers["Authorization"] = f"Bearer {key}"
            self._eps.append(_Endpoint(self, tenant, url, headers))
        for ep in self._eps:
            ep.loop.start()
        return self

    def stop(self) -> pl.DataFrame:
        """Stop every loop (an in-flight scrape finishes or times out), return all rows."""
        if self._frame is not None:
            return self._frame
        for ep in self._eps:
            ep.loop.request_stop()
        for ep in self._eps:
            ep.loop.stop(timeout_s=self.timeout_s + 5.0)
            ep.client.close()
        self._frame = self.frame()
        return self._frame

    def __enter__(self) -> MetricsScraper:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _add(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            self._rows.extend(rows)

    def frame(self) -> pl.DataFrame:
        """The rows so far, as a frame with ``SERVER_METRICS_SCHEMA``."""
        with self._lock:
            rows = list(self._rows)
        return rows_to_frame(rows, SERVER_METRICS_SCHEMA)

    def write(self, path: str | Path) -> pl.DataFrame:
        """Write the rows (all once stopped, else those so far) atomically as Parquet."""
        df = self._frame if self._frame is not None else self.frame()
        atomic_write_parquet(path, df)
        return df

    def stats(self) -> dict[str, dict[str, int]]:
        """tenant -> scrapes, failures, missed ticks."""
        return {
            ep.tenant: {"scrapes": ep.scrapes, "failures": ep.failures, "missed": ep.loop.missed}
            for ep in self._eps
        }
