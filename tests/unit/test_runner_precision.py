"""The campaign loop without servers (a stand-in group function writes each experiment's
manifest and requests from a seeded latency model): the order seed and the resolved restarts
in campaign.json, --resume reusing them, --seed against a recorded seed, and the precision
goal adding blocks until the paired intervals are narrow enough or the cap is reached."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from orchestrator.errors import CampaignError
from orchestrator.executors.local import SerialExecutor
from orchestrator.experiment import ExperimentOutcome
from orchestrator.group import manifest_for
from orchestrator.runner import run_campaign
from orchestrator.spec import parse_spec
from rundir.io import atomic_write_parquet
from rundir.schema import rows_to_frame
from tests.unit.runfixtures import request_row


def make_spec(sigma: float, report: dict[str, Any] | None = None, **experiment: Any) -> Any:
    return parse_spec({
        **({"report": report} if report else {}),
        "name": f"prec-{sigma:g}",
        "tenants": [{"name": "a", "kind": "vllm", "model": "tiny-llama"},
                    {"name": "b", "kind": "vllm", "model": "tiny-llama-wide"}],
        "workloads": {n: {"kind": "synthetic", "arrival": {"process": "poisson", "rate": 1}}
                      for n in "ab"},
        "strategy": ["isolated", "pairs"],
        "experiment": {"warmup_s": 1, "duration_s": 5, "repetitions": 2, **experiment},
        "description": f"{sigma}",
    })


def stand_in(ctx: Any, pending: list[Any], *, log: Any, on_done: Any, progress: Any = None) -> None:
    """Each experiment: TPOT = 10 ms x the block's level (paired: the same alone and
    co-located) x 1.2 co-located x exp(N(0, sigma)) per block and tenant."""
    sigma = float(ctx.spec.description)
    for exp in pending:
        rng = np.random.default_rng(exp.repetition)
        level = float(np.exp(rng.normal(0, 0.3)))
        noise = {t: float(np.exp(rng.normal(0, sigma))) for t in ("a", "b")}
        m = manifest_for(ctx, exp)
        m.data["tenants"] = {t: {"kind": "vllm"} for t in exp.resident}
        m.start()
        rows = []
        for t in exp.active:
            tpot = 0.010 * level * ((1.2 * noise[t]) if len(exp.active) > 1 else 1.0)
            rows += [dict(request_row(t, i, scheduled_s=1.0 + i, ttft_s=0.05,
                                      e2e_s=0.05 + 9 * tpot, output_tokens=10,
                                      window=(1.0, 6.0)), experiment_id=exp.id)
                     for i in range(3)]
        atomic_write_parquet(ctx.run_dir / exp.id / "requests.parquet", rows_to_frame(rows))
        m.finish("completed", counts={t: 3 for t in exp.active})
        on_done(ExperimentOutcome(exp, "completed", None, len(rows), 0))


def run(spec: Any, out: Path, **kw: Any) -> tuple[Any, dict[str, Any]]:
    res = run_campaign(spec, Path("."), out, SerialExecutor(group_fn=stand_in), report=False,
                       console=Console(file=open("/dev/null", "w")), **kw)  # noqa: SIM115
    return res, json.loads((out / spec.name / "campaign.json").read_text())


def test_campaign_json_records_the_order_seed_and_restarts_and_resume_reuses_them(
        tmp_path: Path) -> None:
    spec = make_spec(0.0)
    _, c = run(spec, tmp_path)
    assert isinstance(c["order_seed"], int) and c["restarts"] == 1 and c["precision"] is None
    ms = [json.loads(p.read_text()) for p in (tmp_path / spec.name).glob("*/manifest.json")]
    assert {m["order_seed"] for m in ms} == {c["order_seed"]} and len(ms) == 6
    _, again = run(spec, tmp_path, resume=True)
    assert again["order_seed"] == c["order_seed"] and again["experiments"] == c["experiments"]
    with pytest.raises(CampaignError, match=f"order seed is {c['order_seed']}"):
        run(spec, tmp_path, resume=True, seed=c["order_seed"] + 1)
    _, other = run(spec, tmp_path, overwrite=True, seed=123)
    assert other["order_seed"] == 123


def test_precision_adds_blocks_until_every_interval_is_narrow_enough(tmp_path: Path) -> None:
    # each cell's own pairs (no pooled variance: with it two blocks already reach the target)
    spec = make_spec(0.05, report={"pool_variance": "never"},
                     precision={"half_width": 0.08, "max_repetitions": 30})
    res, c = run(spec, tmp_path)
    p = c["precision"]
    assert p["reached"] is True and p["target"] == 0.08
    assert 2 < p["repetitions"] < 30 and p["widest"]["log_half_width"] <= 0.08
    assert len(c["experiments"]) == 3 * p["repetitions"]  # a block: 2 alone, 1 pair
    reps = {int(e.rsplit("__r", 1)[1]) for e in c["experiments"]}
    assert reps == set(range(p["repetitions"]))
    assert len(res.outcomes) == len(c["experiments"])
    # a resume recomputes, finds the goal reached, and runs nothing more
    res2, c2 = run(spec, tmp_path, resume=True)
    assert c2["precision"]["repetitions"] == p["repetitions"] and not res2.outcomes


def test_precision_stops_at_max_repetitions(tmp_path: Path) -> None:
    spec = make_spec(0.5, precision={"half_width": 0.01, "max_repetitions": 5})
    _, c = run(spec, tmp_path)
    p = c["precision"]
    assert p["reached"] is False and p["repetitions"] == 5
    assert p["widest"]["log_half_width"] > 0.01 and math.isfinite(p["widest"]["log_half_width"])
    assert len(c["experiments"]) == 3 * 5
