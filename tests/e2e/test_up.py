"""`cotenant up`: live mode against real tenants; clean errors; no process outlives it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from servers.process import free_port
from tests.e2e.test_campaign import ENC, VLLM, finish, survivors

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


@pytest.mark.slow
def test_up_serves_requests_by_hand_then_ctrl_c_stops_all(tmp_path):
    pv, pe = free_port(), free_port()
    spec = spec_file(tmp_path, [{**VLLM, "port": pv}, {**ENC, "port": pe}])
    proc = up(spec)
    lines: list[str] = []
    deadline = time.monotonic() + 300
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Serving" in line:
            break
    out = "".join(lines)
    assert "Serving" in out, out
    assert f"127.0.0.1:{pv}" in out and f"127.0.0.1:{pe}" in out
    pgids = pgids_of(tmp_path / "logs")
    r = httpx.post(
        f"http://127.0.0.1:{pv}/v1/completions",
        timeout=60,
        json={"model": "llama", "prompt": "hello there", "max_tokens": 5, "ignore_eos": True},
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
    r = httpx.post(
        f"http://127.0.0.1:{pe}/v1/embeddings",
        timeout=60,
        json={"model": "enc", "input": ["a sentence", "another one"]},
    )
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384
    proc.send_signal(signal.SIGINT)
    finish(proc, timeout=60)
    assert proc.returncode in (0, 130)
    assert not survivors(pgids)


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
