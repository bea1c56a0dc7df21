"""Live mode's bookkeeping: restart one tenant, give up after a few failures in a short time
(on an injected clock), the endpoint table and the copy-paste examples under it."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orchestrator.live import (
    RestartBudget,
    Supervisor,
    TenantDied,
    endpoint_rows,
    example_lines,
    examples,
    key_env_var,
)
from orchestrator.planner import MemoryPlan, TenantPlan
from orchestrator.residents import ResidentSet
from servers.errors import ServerStartError
from servers.spec import EncoderTenant, VllmTenant


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# ---- the give-up rule ----------------------------------------------------------------------


def test_budget_gives_up_at_the_third_failure_within_the_window() -> None:
    clock = Clock()
    b = RestartBudget(max_failures=3, window_s=300, clock=clock)
    assert b.fail("a") is True and b.failures("a") == 1
    clock.t += 100
    assert b.fail("a") is True
    clock.t += 100
    assert b.fail("a") is False  # 3 within 200 s
    assert "3 failures within 300 s" in b.reason("a")
    assert b.failures("b") == 0 and b.fail("b") is True  # per tenant


def test_budget_forgets_failures_older_than_the_window() -> None:
    clock = Clock()
    b = RestartBudget(max_failures=3, window_s=300, clock=clock)
    for _ in range(5):  # one failure every 200 s: never 3 within 300 s
        assert b.fail("a") is True
        clock.t += 200
    assert b.failures("a") == 1  # the one 200 s ago
    clock.t += 301
    assert b.failures("a") == 0


def test_budget_of_one_gives_up_at_once() -> None:
    assert RestartBudget(max_failures=1, clock=Clock()).fail("a") is False
    with pytest.raises(ValueError):
        RestartBudget(max_failures=0)


# ---- the supervisor against a fake resident set ---------------------------------------------


class FakeResidents:
    """dead() reports what the test killed; restart_tenant() fails while ``fail_starts``."""

    def __init__(self, names: list[str]) -> None:
        self.tenants = [SimpleNamespace(name=n) for n in names]
        self.alive = set(names)
        self.fail_starts: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []

    def dead(self) -> dict[str, str]:
        return {t.name: f"tenant {t.name} exited (return code -9)" for t in self.tenants
                if t.name not in self.alive and not any(c == ("stop", t.name) for c in self.calls)}

    def log_tails(self, names: list[str] | None = None, lines: int = 30) -> dict[str, str]:
        return {n: f"last lines of {n}" for n in names or []}

    def stop_tenant(self, name: str) -> None:
        self.calls.append(("stop", name))

    def restart_tenant(self, name: str) -> Any:
        self.calls.append(("restart", name))
        if self.fail_starts.get(name, 0) > 0:
            self.fail_starts[name] -= 1
            raise ServerStartError(f"tenant {name} exited with code 1 before it was healthy.\nlog")
        self.alive.add(name)
        return SimpleNamespace(base_url=f"http://127.0.0.1/{name}")


def supervisor(res: FakeResidents, clock: Clock, **kw: Any) -> tuple[Supervisor, list[str]]:
    said: list[str] = []
    sup = Supervisor(res, RestartBudget(3, 300, clock), say=said.append,
                     show_log=lambda n, tail: said.append(f"LOG {n}: {tail}"), **kw)
    return sup, said


def test_a_dead_tenant_is_restarted_alone() -> None:
    res, clock = FakeResidents(["a", "b", "c"]), Clock()
    sup, said = supervisor(res, clock)
    assert sup.check() == []  # all up: nothing to do
    res.alive.discard("b")
    assert sup.check() == ["b"]
    assert res.calls == [("restart", "b")]  # the others untouched
    assert sup.down == {} and sup.restarted == ["b"]
    assert any("exited" in s for s in said) and "LOG b: last lines of b" in said
    assert any("b is back" in s for s in said)
    assert sup.check() == []


def test_a_tenant_that_keeps_failing_is_left_down_and_the_rest_serve() -> None:
    res, clock = FakeResidents(["a", "b"]), Clock()
    sup, said = supervisor(res, clock)
    res.alive.discard("a")
    res.fail_starts["a"] = 5  # never comes back
    assert sup.check() == ["a"]
    # the death, then two failed restarts: 3 failures, given up
    assert res.calls == [("restart", "a"), ("restart", "a"), ("stop", "a")]
    assert "3 failures within 300 s" in sup.down["a"] and "restart failed" in sup.down["a"]
    assert any("a left down" in s and "others keep serving" in s for s in said)
    assert not sup.all_down()
    assert sup.check() == []  # stopped: not reported dead again
    res.alive.discard("b")
    res.fail_starts["b"] = 5
    sup.check()
    assert sup.all_down()


def test_deaths_spread_out_are_restarted_every_time() -> None:
    res, clock = FakeResidents(["a"]), Clock()
    sup, _ = supervisor(res, clock)
    for _ in range(4):  # a death every 4 minutes: 2 at most within 5 minutes
        res.alive.discard("a")
        sup.check()
        clock.t += 240
    assert sup.restarted == ["a"] * 4 and sup.down == {}


def test_quick_deaths_leave_it_down() -> None:
    res, clock = FakeResidents(["a"]), Clock()
    sup, _ = supervisor(res, clock)
    for _ in range(3):  # three deaths a minute apart, each restart fine
        res.alive.discard("a")
        sup.check()
        clock.t += 60
    assert sup.restarted == ["a", "a"] and "a" in sup.down


def test_exit_on_death_stops_instead_of_restarting() -> None:
    res, clock = FakeResidents(["a", "b"]), Clock()
    sup, said = supervisor(res, clock, exit_on_death=True)
    res.alive.discard("b")
    with pytest.raises(TenantDied, match="b died"):
        sup.check()
    assert res.calls == [] and "LOG b: last lines of b" in said  # the tail is still shown


# ---- ResidentSet.restart_tenant: one tenant, the same port ---------------------------------


def test_restart_tenant_stops_and_starts_one_on_its_port(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import servers.launch

    started: list[tuple[str, int | None, str]] = []
    stopped: list[str] = []

    def fake_launch(t: Any, *, share: float, port: int | None, log_path: Path, **kw: Any) -> Any:
        port = port or 40000 + len(started)
        started.append((t.name, port, Path(log_path).name))
        proc = SimpleNamespace(stop=lambda: stopped.append(t.name), pid=len(started),
                               log_path=log_path, alive=lambda: True)
        return SimpleNamespace(port=port, base_url=f"http://127.0.0.1:{port}", process=proc,
                               resolved=None)

    # ResidentSet spawns with launch_tenant and waits with wait_tenant (since 5f9f6f0; the fake
    # start_tenant this test had was no longer called: it started real encoders, 13 s)
    monkeypatch.setattr(servers.launch, "launch_tenant", fake_launch)
    monkeypatch.setattr(servers.launch, "wait_tenant", lambda r, **kw: r)
    a = EncoderTenant(name="a", model="all-minilm-l6-v2")
    b = EncoderTenant(name="b", model="all-minilm-l6-v2", port=41000)
    plan = MemoryPlan("cpu", 8 << 30, 0, [
        TenantPlan(n, "encoder", 0.1, 1 << 20, 0, 0, 0, 0, None, None, True, i)
        for i, n in enumerate("ab")])
    rs = ResidentSet([a, b], plan, tmp_path / "logs", tmp_path / "cache")
    rs.start()
    assert started == [("a", 40000, "a.0.log"), ("b", 41000, "b.0.log")]
    (tmp_path / "logs" / "a.0.log").write_text("")  # the server would have written it
    rs.restart_tenant("a")
    assert stopped == ["a"]  # b untouched
    assert started[-1] == ("a", 40000, "a.1.log")  # the port a had (a free one), a new log
    assert rs.describe()["a"]["port"] == 40000 and rs.describe()["b"]["pid"] == 2
    rs.stop_tenant("b")
    assert "b" not in rs.running and stopped == ["a", "b"]
    rs.restart_tenant("b")  # from down: back on its port
    assert started[-1][:2] == ("b", 41000)
    with pytest.raises(KeyError):
        rs.restart_tenant("zz")


# ---- the table and the examples ------------------------------------------------------------


def test_endpoint_rows_mark_a_tenant_left_down() -> None:
    d = {"kind": "vllm", "model": "m", "url": "http://h:1", "memory_share": 0.1, "pid": 7,
         "kv_cache_tokens": 10, "planned_kv_tokens": 9, "log": "x.log"}
    rows = endpoint_rows({"a": d, "b": {**d, "url": None, "pid": None, "log": None}},
                         {"b": "3 failures"})
    assert rows[0]["state"] == "up" and rows[0]["url"] == "http://h:1"
    assert rows[1]["state"] == "down" and rows[1]["url"] == "-" and rows[1]["pid"] == "-"


def test_examples_for_a_decoder_and_the_encoder() -> None:
    llm = VllmTenant(name="llama-a", model="tiny-llama")
    curl, py = examples(llm, "http://127.0.0.1:8001")
    argv = shlex.split(curl)
    assert argv[:3] == ["curl", "-s", "http://127.0.0.1:8001/v1/completions"]
    body = json.loads(argv[argv.index("-d") + 1])
    assert body == {"model": "llama-a", "prompt": "hello", "max_tokens": 8}
    assert "Authorization" not in curl
    code = shlex.split(py)[2]
    assert shlex.split(py)[:2] == ["python", "-c"]
    compile(code, "example", "exec")
    assert 'base_url="http://127.0.0.1:8001/v1"' in code and 'model="llama-a"' in code
    assert "completions.create" in code

    enc = EncoderTenant(name="minilm", model="all-minilm-l6-v2")
    curl, py = examples(enc, "http://127.0.0.1:8002")
    argv = shlex.split(curl)
    assert argv[2] == "http://127.0.0.1:8002/v1/embeddings"
    assert json.loads(argv[argv.index("-d") + 1]) == {"model": "minilm", "input": ["hello"]}
    assert "embeddings.create" in shlex.split(py)[2]


def test_examples_use_the_served_name() -> None:
    llm = VllmTenant(name="a", model="tiny-llama", served_name="it's-chat")
    curl, py = examples(llm, "http://h:1")
    argv = shlex.split(curl)
    assert json.loads(argv[argv.index("-d") + 1])["model"] == "it's-chat"
    assert "it's-chat" in shlex.split(py)[2]


def test_examples_never_show_the_key() -> None:
    secret = "s3cr3t-value"
    llm = VllmTenant(name="llama-a", model="tiny-llama", api_key=secret)
    enc = EncoderTenant(name="minilm", model="all-minilm-l6-v2", api_key=secret)
    lines = example_lines([llm, enc], {"llama-a": "http://h:1", "minilm": "http://h:2"})
    text = "\n".join(lines)
    assert secret not in text
    assert key_env_var("llama-a") == "LLAMA_A_KEY" and key_env_var("m.x") == "M_X_KEY"
    curl = next(line for line in lines if "curl" in line and "h:1" in line)
    # the header in double quotes: the shell puts the key in
    assert '-H "Authorization: Bearer $LLAMA_A_KEY"' in curl
    py = next(line for line in lines if "python -c" in line and "h:1" in line)
    assert 'api_key=os.environ["LLAMA_A_KEY"]' in shlex.split(py.strip())[2]
    assert any("export LLAMA_A_KEY=" in line for line in lines)
    assert any("export MINILM_KEY=" in line for line in lines)


def test_example_lines_skip_tenants_without_a_url() -> None:
    a = VllmTenant(name="a", model="tiny-llama")
    b = VllmTenant(name="b", model="tiny-llama")
    lines = example_lines([a, b], {"a": "http://h:1"})
    assert any("# a" in line for line in lines) and not any("# b" in line for line in lines)
