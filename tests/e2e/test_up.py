"""`cotenant up`: live mode against real tenants; clean errors; no process outlives it.

Serving requests by hand and Ctrl-C stopping every tenant (a vLLM decoder and the encoder
among them, their ports closed, nothing of their groups left) are test_live.py's, on its
one `cotenant up` of examples/cpu-demo.yaml; these tests start at most the encoder.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_campaign import ENC, VLLM, finish

pytestmark = [pytest.mark.e2e]
ROOT = Path(__file__).parents[2]


def up(spec: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "up",
            str(spec),
            "--logs",
            str(spec.parent / "logs"),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )


def spec_file(tmp: Path, tenants: list[dict]) -> Path:
    p = tmp / "spec.yaml"
    p.write_text(yaml.safe_dump({"name": "live", "tenants": tenants}))
    return p


def pgids_of(log_dir: Path) -> set[int]:
    """The servers' process groups, found from the processes whose log files are in log_dir."""
    import psutil

    out = set()
    for p in psutil.process_iter(["pid"]):
        try:
            if any(str(log_dir) in f.path for f in p.open_files()):
                out.add(p.pid)
        except psutil.Error:
            continue
    return out


def test_up_check_exits_zero_when_healthy(tmp_path):
    spec = spec_file(tmp_path, [ENC])
    proc = up(spec, "--check")
    out = finish(proc, timeout=180)
    assert proc.returncode == 0, out
    assert "healthy" in out and "enc" in out


def test_busy_port_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        spec = spec_file(tmp_path, [{**ENC, "port": port}])
        proc = up(spec, "--check")
        out = finish(proc, timeout=120)
    assert proc.returncode == 2, out
    assert str(port) in out and "enc" in out and "Traceback" not in out


def test_overcommit_is_refused_before_anything_starts(tmp_path):
    spec = spec_file(tmp_path, [{**VLLM, "memory_share": 0.7}, {**ENC, "memory_share": 0.6}])
    t0 = time.monotonic()
    proc = up(spec, "--check")
    out = finish(proc, timeout=60)
    assert proc.returncode == 2, out
    assert "do not fit" in out and "llama" in out and "Traceback" not in out
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").iterdir())
    assert time.monotonic() - t0 < 30  # nothing was started


def test_spec_errors_are_one_message(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "tenants": [{**ENC, "max_batchh": 3}]}))
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "validate", str(p)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "bad.yaml" in proc.stderr and "max_batchh" in proc.stderr
    assert "Traceback" not in proc.stderr
