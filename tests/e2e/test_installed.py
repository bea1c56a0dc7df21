"""cotenant installed as a package (not the editable checkout), run from another folder.

``pip install --target`` puts the built wheel's packages (and its ``cotenant`` script) in a
folder of their own; the script runs with that folder first on ``PYTHONPATH``, from a
working directory outside the repository, so nothing can come from the source tree: the
packages, their data, the servers' own ``python -m`` starts and the tiny models' cache are
what an installed cotenant has. Dependencies come from this interpreter's site-packages.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(build), str(REPO)],
        check=True, cwd=build, capture_output=True, timeout=300,
    )
    wheel = next(build.glob("cotenant-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    return site


def _env(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(site)
    return env


def _cotenant(site: Path, *args: str, cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(site / "bin" / "cotenant"), *args], cwd=cwd, env=_env(site),
                          capture_output=True, text=True, timeout=timeout)


def test_the_wheel_holds_the_packages_and_no_tests(installed: Path, tmp_path: Path) -> None:
    names = {p.name for p in installed.iterdir()}
    assert {"orchestrator", "servers", "workloads", "reports", "rundir"} <= names
    assert "tests" not in names and "benchmarks" not in names
    out = subprocess.run(
        [sys.executable, "-c", "import orchestrator, servers, rundir; "
         "print(orchestrator.__file__); print(servers.__file__); print(rundir.__file__)"],
        cwd=tmp_path, env=_env(installed), capture_output=True, text=True, check=True,
    ).stdout.split()
    assert all(p.startswith(str(installed)) for p in out), out


def test_up_check_from_another_folder(installed: Path, tmp_path: Path) -> None:
    spec = REPO / "examples" / "cpu-demo.yaml"
    r = _cotenant(installed, "up", str(spec), "--check", "--only", "minilm", "--only", "llama-a",
                  "--logs", str(tmp_path / "logs"), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "2 tenants healthy" in r.stdout + r.stderr


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
