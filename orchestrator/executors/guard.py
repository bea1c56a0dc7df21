"""The orphan guard: no server outlives a worker process that is killed.

Servers started by a worker would outlive it (they run in their own sessions). Every worker
(a local parallel worker, a Ray task) keeps a guard: ``OrphanGuard`` starts the guard program,
``python -m orchestrator.executors.guard [FOLDER...]`` (``main``), and tells it on its stdin
the process group of each server the worker starts (``+<pgid>:<leader start ticks>``) and
stops (``-<pgid>``). A worker that ends well says ``done`` and the guard exits; if the pipe
closes without it (the worker died), the guard stops those groups (SIGTERM, SIGCONT, then
SIGKILL after 5 s) and removes the FOLDERs (a Ray task's temporary run directory).

The program must start at once and depend on nothing that could be missing or slow: this
module imports the standard library only (``servers.process`` is imported by
``OrphanGuard.sync``, in the worker), and the packages above it import nothing. It reads
``/proc/<pid>/stat`` itself for the same reason (``servers.process.proc_stat`` reads the same).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds the orchestrator package
PROC = os.path.isdir("/proc")


class OrphanGuard:
    """A guard process told the process group of every server this process starts (polled
    from ``servers.process.running_servers``); if this process dies without saying goodbye,
    the guard's stdin closes and it kills those groups (SIGTERM, then SIGKILL after 5 s),
    then removes the ``remove`` folders (a Ray task's temporary run directory)."""

    def __init__(self, interval_s: float = 0.2, remove: list[Path] | None = None) -> None:
        self.interval_s = interval_s
        self.remove = [os.path.abspath(p) for p in remove or []]  # the guard runs in _ROOT
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sent: set[int] = set()
        self._t0 = time.monotonic()

    def start(self) -> OrphanGuard:
        # run from the folder that holds this package: ``-m`` imports this very file, not
        # another cotenant that the interpreter's paths may point at
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.executors.guard", *self.remove],
            stdin=subprocess.PIPE, cwd=_ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self._proc.wait()  # it forks and returns at once; the guard itself lives on
        self._thread = threading.Thread(target=self._loop, name="orphan-guard", daemon=True)
        self._thread.start()
        return self

    def _send(self, line: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(line.encode() + b"\n")
        self._proc.stdin.flush()

    def sync(self) -> None:
        from servers.process import running_servers

        # only servers started since the guard began: never servers the process already ran
        # (in a test session, the shared fixtures' tenants)
        now = {
            p.pgid: p.start_ticks
            for p in running_servers()
            if p.pgid is not None and (p.started_at or 0.0) >= self._t0
        }
        with contextlib.suppress(OSError, ValueError):
            for g in now.keys() - self._sent:
                # with the leader's start time: the guard never signals a recycled group id
                self._send(f"+{g}" + (f":{now[g]}" if now[g] is not None else ""))
            for g in self._sent - now.keys():
                self._send(f"-{g}")
            self._sent = set(now)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sync()

    def stop(self) -> None:
        """Goodbye. Servers still running now (a clean-up that was cut short) are left to
        the guard, which stops them as if this process had died."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._proc is not None:
            with contextlib.suppress(OSError, ValueError):
                self.sync()
                if not self._sent:
                    self._send("done")
                assert self._proc.stdin is not None
                self._proc.stdin.close()

    def __enter__(self) -> OrphanGuard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- the guard program (python -m orchestrator.executors.guard) --------------------------


def read_groups(lines: Iterable[str]) -> dict[int, int | None] | None:
    """The process groups the worker told of, when its stdin ends: process group id -> its
    leader's start time (clock ticks since boot) or None; None when it said ``done``."""
    groups: dict[int, int | None] = {}
    for line in lines:
        line = line.strip()
        if line == "done":
            return None
        g, _, st = line[1:].partition(":")
        if g.isdigit():
            if line[0] == "+":
                groups[int(g)] = int(st) if st.isdigit() else None
            else:
                groups.pop(int(g), None)
    return groups


def stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def ours(g: int, st: int | None) -> list[int]:
    """What to signal of group ``g``: ``[0]`` for the whole group, else member pids."""
    # a group id is a pid and pids are recycled: while the leader we were told about runs, the
    # whole group; once it is gone, the group's members that started after it (left-over
    # children); a leader that started at another time means the id now names a stranger
    if not PROC or st is None:
        return [0]  # no way to tell: the group as it is
    lead = stat(g)
    if lead is not None and lead[0] not in ("Z", "X"):
        return [0] if int(lead[19]) == st else []
    out = []
    for e in os.listdir("/proc"):
        f = stat(e) if e.isdigit() else None
        if f and int(f[2]) == g and f[0] not in ("Z", "X") and int(f[19]) >= st:
            out.append(int(e))
    return out


def kill(g: int, st: int | None, sig: int) -> bool:
    """Send ``sig`` to what is ours of group ``g``; False when nothing of it is left."""
    targets = ours(g, st)
    for pid in targets:
        try:
            if pid == 0:
                os.killpg(g, sig)
            else:
                os.kill(pid, sig)
        except OSError:
            if pid == 0:
                return False
    return bool(targets)


def alive(g: int, st: int | None) -> bool:
    if not PROC or st is None:
        try:
            os.killpg(g, 0)
            return True
        except OSError:
            return False
    return bool(ours(g, st))


def stop_groups(groups: dict[int, int | None]) -> None:
    """SIGTERM (and SIGCONT) every group, wait up to 5 s, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        for g, st in list(groups.items()):
            if not kill(g, st, sig):
                groups.pop(g, None)
            elif sig == signal.SIGTERM:
                kill(g, st, signal.SIGCONT)  # a stopped server acts on the SIGTERM now
        end = time.monotonic() + wait
        while time.monotonic() < end and any(alive(g, st) for g, st in groups.items()):
            time.sleep(0.1)


def main(folders: list[str]) -> int:
    # not a child of the worker: Ray kills a dead worker's children (this guard among them)
    if os.fork() > 0:
        os._exit(0)
    groups = read_groups(sys.stdin)
    if groups is None:
        return 0  # goodbye: the worker stopped its servers itself
    stop_groups(groups)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
