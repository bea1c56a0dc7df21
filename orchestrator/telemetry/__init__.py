"""Telemetry: what the GPU (or the host) and the tenants' servers do while an experiment runs.

``sampler`` (the ``Sampler``: telemetry.parquet) reads ``nvml`` (the GPU) and ``host`` (the
host, the tenants' process trees); ``scrape`` (the ``MetricsScraper``: server_metrics.parquet)
reads the servers' /metrics; both tick on ``periodic`` (a loop at absolute times on an
injected clock). This file imports nothing, so that importing one of them costs only what it
needs.
"""
