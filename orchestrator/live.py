"""Live mode (`cotenant up`): a resident set kept serving requests sent by hand.

``Supervisor.check`` looks at the tenants once: a tenant found dead has its log tail shown and
is restarted alone on the port it had (``ResidentSet.restart_tenant``) while the others keep
serving; a tenant that fails ``max_failures`` times within ``window_s`` seconds (a death or a
restart that did not become healthy, each counts) is left down with the reason
(``RestartBudget``, on an injected clock). With ``exit_on_death`` the first death raises
``TenantDied`` instead, for scripts that want today's stop-everything behaviour.

``endpoint_rows`` is the endpoint table; ``examples`` the copy-paste requests printed under it
(curl and the openai client, a key as a ``$NAME_KEY`` placeholder, never the secret).
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from servers.spec import EncoderTenant, VllmTenant

TenantSpecT = VllmTenant | EncoderTenant


class TenantDied(Exception):
    """A tenant died and live mode was told to stop everything (``--exit-on-death``)."""


class RestartBudget:
    """How often a tenant may fail before it is left down: ``max_failures`` failures within
    ``window_s`` seconds (by ``clock``) and it is given up; older failures are forgotten."""

    def __init__(
        self,
        max_failures: int = 3,
        window_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def failures(self, name: str) -> int:
        """The failures of ``name`` within the window, now."""
        q = self._failures.get(name)
        if not q:
            return 0
        now = self.clock()
        while q and now - q[0] > self.window_s:
            q.popleft()
        return len(q)

    def fail(self, name: str) -> bool:
        """Count one failure of ``name`` now; True while it may be restarted, False once it
        has failed ``max_failures`` times within the window (give it up)."""
        self._failures.setdefault(name, deque()).append(self.clock())
        return self.failures(name) < self.max_failures

    def reason(self, name: str) -> str:
        return (
            f"{self.failures(name)} failures within {self.window_s:g} s "
            f"(--max-failures {self.max_failures}, --failure-window {self.window_s:g})"
        )


class Residents(Protocol):
    """What the supervisor needs of a ``ResidentSet``."""

    tenants: list[Any]

    def dead(self) -> dict[str, str]: ...

    def log_tails(self, names: list[str] | None = None, lines: int = 30) -> dict[str, str]: ...

    def stop_tenant(self, name: str) -> None: ...

    def restart_tenant(self, name: str) -> Any: ...


class Supervisor:
    """Restart dead tenants one at a time, give up on the ones that keep failing.

    ``say(text)`` prints a status line; ``show_log(name, tail)`` prints a log tail.
    ``down`` holds the tenants left down: name -> why.
    """

    def __init__(
        self,
        residents: Residents,
        budget: RestartBudget,
        *,
        say: Callable[[str], None],
        show_log: Callable[[str, str], None],
        exit_on_death: bool = False,
    ) -> None:
        self.residents = residents
        self.budget = budget
        self.say = say
        self.show_log = show_log
        self.exit_on_death = exit_on_death
        self.down: dict[str, str] = {}
        self.restarted: list[str] = []  # every restart that came back, in order

    def check(self) -> list[str]:
        """One look at the tenants. Returns the names whose state changed (back up, or left
        down): the endpoint table is worth printing again when it is not empty."""
        dead = self.residents.dead()
        if not dead:
            return []
        for name, reason in dead.items():
            self.say(reason)
            self.show_log(name, self.residents.log_tails([name]).get(name, ""))
        if self.exit_on_death:
            raise TenantDied(f"{', '.join(dead)} died; stopping the others (--exit-on-death)")
        for name in dead:
            self._revive(name, dead[name])
        return list(dead)

    def _revive(self, name: str, reason: str) -> None:
        while self.budget.fail(name):
            n = self.budget.failures(name)
            self.say(f"restarting {name} alone (failure {n} of {self.budget.max_failures} "
                     f"allowed within {self.budget.window_s:g} s)")
            try:
                r = self.residents.restart_tenant(name)
            except Exception as e:  # a start that failed counts as a failure too
                reason = f"restart failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                self.say(f"{name}: {reason}")
                continue
            self.restarted.append(name)
            self.say(f"{name} is back at {getattr(r, 'base_url', '?')}")
            return
        self.residents.stop_tenant(name)
        self.down[name] = f"{self.budget.reason(name)}; last: {reason}"
        self.say(f"{name} left down: {self.down[name]}; the others keep serving")

    def all_down(self) -> bool:
        return len(self.down) == len(self.residents.tenants)


# ---- the endpoint table and the examples under it ------------------------------------------


def endpoint_rows(described: dict[str, dict[str, Any]],
                  down: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The endpoint table's rows from ``ResidentSet.describe()``; a tenant left down says so."""
    down = down or {}
    rows = []
    for name, d in described.items():
        state = "down" if name in down else ("up" if d.get("url") else "-")
        rows.append({
            "tenant": name, "kind": d["kind"], "model": d["model"], "state": state,
            "url": str(d["url"] or "-"), "share": f"{d['memory_share']:.2f}",
            "pid": str(d["pid"] or "-"),
            "KV tokens": str(d["kv_cache_tokens"] or d["planned_kv_tokens"] or "-"),
            "log": str(d["log"] or "-"),
        })
    return rows


def key_env_var(tenant: str) -> str:
    """The placeholder variable an example reads a tenant's API key from: ``LLAMA_A_KEY``."""
    return re.sub(r"[^A-Z0-9]", "_", tenant.upper()) + "_KEY"


def examples(tenant: TenantSpecT, base_url: str) -> list[str]:
    """Two copy-paste commands for a tenant at ``base_url`` (no ``/v1``): curl, and a Python
    one-liner with the openai client. Decoders get /v1/completions, the encoder
    /v1/embeddings; a tenant with an api_key reads it from ``$<NAME>_KEY``."""
    model = tenant.api_name
    var = key_env_var(tenant.name) if tenant.key else None
    if isinstance(tenant, VllmTenant):
        path, body = "/v1/completions", {"model": model, "prompt": "hello", "max_tokens": 8}
        call = (f"c.completions.create(model={json.dumps(model)}, prompt=\"hello\", "
                "max_tokens=8).choices[0].text")
    else:
        path, body = "/v1/embeddings", {"model": model, "input": ["hello"]}
        call = (f"len(c.embeddings.create(model={json.dumps(model)}, "
                "input=[\"hello\"]).data[0].embedding)")
    curl = (f"curl -s {shlex.quote(base_url + path)} -H 'Content-Type: application/json' "
            + (f'-H "Authorization: Bearer ${var}" ' if var else "")
            + f"-d {shlex.quote(json.dumps(body))}")
    key = f'os.environ["{var}"]' if var else '"none"'
    code = (f"import os; from openai import OpenAI; c = OpenAI(base_url={json.dumps(base_url + '/v1')}, "
            f"api_key={key}); print({call})")
    return [curl, f"python -c {shlex.quote(code)}"]


def example_lines(tenants: list[TenantSpecT], urls: dict[str, str]) -> list[str]:
    """The block printed under the endpoint table: per tenant its two examples, and a note
    naming the key variables to set."""
    lines = ["Try it (copy and paste):"]
    for t in tenants:
        if t.key and urls.get(t.name):
            lines.append(f"  # first: export {key_env_var(t.name)}=<the api_key of {t.name} "
                         "in the spec>")
    for t in tenants:
        url = urls.get(t.name)
        if url:
            curl, py = examples(t, url)
            lines += [f"  # {t.name}", f"  {curl}", f"  {py}"]
    return lines
