"""cotenant installed as a package (not the editable checkout), run from another folder.

``pip install --target`` puts the built wheel's packages (and its ``cotenant`` script) in a
folder of their own; the script runs with that folder first on ``PYTHONPATH``, from a
working directory outside the repository, so nothing can come from the source tree: the
packages, their data, the servers' own ``python -m`` starts and the tiny models' cache are
what an installed cotenant has. Dependencies come from this interpreter's site-packages.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.session import installed_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def installed(installed_cotenant: Path) -> Path:
    return installed_cotenant


def _cotenant(site: Path, *args: str, cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(site / "bin" / "cotenant"), *args], cwd=cwd, env=installed_env(site),
                          capture_output=True, text=True, timeout=timeout)


def test_the_wheel_holds_the_packages_and_no_tests(installed: Path, tmp_path: Path) -> None:
    names = {p.name for p in installed.iterdir()}
    assert {"orchestrator", "servers", "workloads", "reports", "rundir"} <= names
    assert "tests" not in names and "benchmarks" not in names
    out = subprocess.run(
        [sys.executable, "-c", "import orchestrator, servers, rundir; "
         "print(orchestrator.__file__); print(servers.__file__); print(rundir.__file__)"],
        cwd=tmp_path, env=installed_env(installed), capture_output=True, text=True, check=True,
    ).stdout.split()
    assert all(p.startswith(str(installed)) for p in out), out


def test_up_check_from_another_folder(installed: Path, tmp_path: Path) -> None:
    """--check and --only from the installed package (the encoder alone: the installed
    package's vLLM start is test_live.py's, whose `cotenant up` is this one)."""
    spec = REPO / "examples" / "cpu-demo.yaml"
    r = _cotenant(installed, "up", str(spec), "--check", "--only", "minilm",
                  "--logs", str(tmp_path / "logs"), cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "1 tenants healthy" in out and "--check: all healthy; stopping" in out, out
    assert sorted(p.name for p in (tmp_path / "logs").glob("*.log")) == ["minilm.0.log"]


def test_a_campaign_from_another_folder(installed: Path, tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        "name: installed\n"
        "tenants:\n"
        "  - {name: enc, kind: encoder, model: all-minilm-l6-v2, max_batch: 16}\n"
        "workloads:\n"
        "  enc: {kind: synthetic, arrival: {process: poisson, rate: 4},\n"
        "        input_tokens: {dist: fixed, value: 16}, batch_size: {dist: fixed, value: 2}}\n"
        "strategy: [isolated]\n"
        "experiment: {warmup_s: 0.5, duration_s: 2, drain_s: 5}\n"
    )
    r = _cotenant(installed, "run", str(spec), "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    run = tmp_path / "runs" / "installed"
    assert (run / "report.html").is_file() and (run / "summary.md").is_file()
    assert list(run.glob("*/requests.parquet"))
