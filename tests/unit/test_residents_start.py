"""ResidentSet.start: tenants that profile free memory one after another, the rest together."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import servers.launch
import servers.vllm
from orchestrator.residents import ResidentSet
from servers.spec import EncoderTenant, VllmTenant


def _plan(backend: str, order: list[str]) -> SimpleNamespace:
    return SimpleNamespace(backend=backend, start_order=order, share=lambda name: 0.2)


@pytest.fixture
def starts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float, float]]:
    """Fake server starts: a spawn that must happen in the main thread (a server's
    parent-death signal follows the thread that forked it: a server spawned from a pool
    thread is killed when that thread ends), then 0.3 s to become healthy; records
    (tenant, began, ended)."""
    log: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    def launch_tenant(t, **kw):  # type: ignore[no-untyped-def]
        assert threading.current_thread() is threading.main_thread(), "spawned off the main thread"
        stopped = []
        return SimpleNamespace(name=t.name, port=8000, resolved=None, base_url="http://x",
                               process=SimpleNamespace(stop=lambda: stopped.append(1)))

    def wait_tenant(r):  # type: ignore[no-untyped-def]
        t0 = time.monotonic()
        time.sleep(0.3)
        with lock:
            log.append((r.name, t0, time.monotonic()))
        return r

    monkeypatch.setattr(servers.launch, "launch_tenant", launch_tenant)
    monkeypatch.setattr(servers.launch, "wait_tenant", wait_tenant)
    monkeypatch.setattr(servers.launch, "read_kv_cache_info", lambda r: {})
    monkeypatch.setattr(servers.vllm, "cpu_attention_for", lambda *a: None)
    return log


def _overlap(log: list[tuple[str, float, float]], a: str, b: str) -> bool:
    (_, a0, a1), (_, b0, b1) = (next(x for x in log if x[0] == n) for n in (a, b))
    return a0 < b1 and b0 < a1


TENANTS = [
    VllmTenant(name="sized", model="tiny-llama"),  # profiles free memory: alone
    VllmTenant(name="fixed", model="tiny-llama", kv_cache_memory_bytes=1 << 30),
    EncoderTenant(name="enc", model="all-minilm-l6-v2"),
]


def test_on_a_gpu_the_tenants_that_size_nothing_start_together(tmp_path: Path, starts) -> None:
    rs = ResidentSet(list(TENANTS), _plan("cuda", ["sized", "fixed", "enc"]), tmp_path, tmp_path)  # type: ignore[arg-type]
    rs.start()
    assert set(rs.running) == {"sized", "fixed", "enc"}
    assert _overlap(starts, "fixed", "enc")
    assert not _overlap(starts, "sized", "fixed") and not _overlap(starts, "sized", "enc")


def test_on_the_cpu_every_tenant_starts_alone(tmp_path: Path, starts) -> None:
    rs = ResidentSet(list(TENANTS), _plan("cpu", ["sized", "fixed", "enc"]), tmp_path, tmp_path)  # type: ignore[arg-type]
    rs.start()
    assert [s[0] for s in starts] == ["sized", "fixed", "enc"]
    assert not _overlap(starts, "fixed", "enc")


def test_a_picked_port_taken_before_the_bind_is_picked_again(tmp_path: Path, starts,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from servers.errors import PortInUseError

    real_wait = servers.launch.wait_tenant
    taken = {"enc": 1, "fixed": 5}  # how many starts find their port taken

    def wait_tenant(r):  # type: ignore[no-untyped-def]
        if taken.get(r.name, 0) > 0:
            taken[r.name] -= 1
            raise PortInUseError(f"tenant {r.name}: port 8000 is already in use")
        return real_wait(r)

    monkeypatch.setattr(servers.launch, "wait_tenant", wait_tenant)
    enc = EncoderTenant(name="enc", model="all-minilm-l6-v2")
    rs = ResidentSet([enc], _plan("cpu", ["enc"]), tmp_path, tmp_path)  # type: ignore[arg-type]
    rs.start()
    assert "enc" in rs.running and taken["enc"] == 0
    # a port the spec names is not changed behind its back; three picks at most
    named = EncoderTenant(name="fixed", model="all-minilm-l6-v2", port=8123)
    with pytest.raises(PortInUseError):
        ResidentSet([named], _plan("cpu", ["fixed"]), tmp_path, tmp_path).start()  # type: ignore[arg-type]
    assert taken["fixed"] == 4
