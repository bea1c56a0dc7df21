"""One server process: its own process group, one log file, health polling, a clean stop.

``ServerProcess`` starts a command in a new session (so it and every child it forks share
one process group that nothing else is in), sends stdout and stderr to one log file, waits
for ``GET /health`` under a monotonic deadline while watching for an early exit, and stops
with SIGTERM then SIGKILL to the whole group. Every started process is in a module
registry; ``stop_all()`` stops them all and runs at interpreter exit and, once
``install_signal_handlers()`` was called, on SIGTERM/SIGHUP, so Ctrl-C or a kill of the
conductor leaves no orphans.

A process group id is a pid, and pids are recycled (``pid_max`` is 32768 on many hosts and
every thread takes one): once the leader is reaped and its group is empty, the same number
can name a stranger's group. So the group is signalled with ``killpg`` only while the leader
is not reaped (a zombie still holds the number); after that, only the processes that were
in the group when the leader was reaped, each checked by its start time and signalled
through a pidfd, so a recycled number is never signalled.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

import httpx

from servers.errors import PortInUseError, ServerDiedError, ServerStartError
from servers.proctable import group_members, proc_start_ticks, same_process, signal_process

LOG_TAIL_LINES = 30
_BUSY_PATTERNS = ("address already in use", "errno 98")


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something holds ``host:port`` (a bind with SO_REUSEADDR fails)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


_handed_out: set[int] = set()
_handed_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now and that this process has not handed out before."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        with _handed_lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise OSError("no free port found")


def read_tail(path: str | Path, n: int = LOG_TAIL_LINES, start: int = 0) -> str:
    """The last ``n`` lines of a text file from byte ``start`` on (reads at most ~1 MiB)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            begin = max(start, end - (1 << 20))
            f.seek(begin)
            data = f.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-n:])


class ServerProcess:
    """A server command in its own process group, logging to one file.

    ``health_url`` is polled by ``wait_healthy``; ``name`` appears in every error.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: str | Path,
        health_url: str,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else dict(os.environ)
        self.cwd = str(cwd) if cwd is not None else None
        self.log_path = Path(log_path)
        self.health_url = health_url
        self.port = port
        self.host = host
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_start = 0
        self.started_at: float | None = None  # monotonic
        self.healthy_at: float | None = None  # monotonic
        self._term_sent_at: float | None = None  # monotonic time of the first SIGTERM
        self.start_ticks: int | None = None  # the leader's start time (clock ticks)
        # once the leader is reaped: the group's members then, pid -> start time; the only
        # processes this object signals from then on (the group id may be recycled)
        self._left: dict[int, int] | None = None

    # ---- state -------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def pgid(self) -> int | None:
        """The process group id (the pid: the process leads its own session)."""
        return self.pid

    @property
    def returncode(self) -> int | None:
        return self._poll()

    def alive(self) -> bool:
        return self._proc is not None and self._poll() is None

    def _poll(self) -> int | None:
        """``Popen.poll`` (which reaps the leader), noting the group's members the first
        time it finds the leader gone."""
        if self._proc is None:
            return None
        rc = self._proc.poll()
        if rc is not None and self._left is None:
            self._left = {
                pid: st for pid in group_members(self._proc.pid)
                if (st := proc_start_ticks(pid)) is not None
            }
        return rc

    def members(self) -> list[int]:
        """This server's live processes: the group while the leader is not reaped; after,
        those of the group's members at that time that still run (same pid, same start)."""
        if self._proc is None:
            return []
        if self._poll() is None:
            return group_members(self._proc.pid)
        return [pid for pid, st in (self._left or {}).items() if same_process(pid, st)]

    def group_alive(self) -> bool:
        """Whether any process of this server still runs (never looks at a recycled group)."""
        if self._proc is None:
            return False
        if self._poll() is None:
            return True
        return bool(self.members())

    def log_tail(self, n: int = LOG_TAIL_LINES) -> str:
        """The last ``n`` lines this start wrote to the log."""
        return read_tail(self.log_path, n, self._log_start)

    @property
    def startup_s(self) -> float | None:
        if self.started_at is None or self.healthy_at is None:
            return None
        return self.healthy_at - self.started_at

    # ---- life cycle --------------------------------------------------------------------

    def start(self) -> ServerProcess:
        if self._proc is not None:
            raise RuntimeError(f"{self.name}: already started")
        if self.port is not None and port_in_use(self.port, self.host):
            raise PortInUseError(
                f"tenant {self.name}: port {self.port} on {self.host} is already in use"
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_start = self._log.tell()
        header = f"# cotenant: starting {self.name}: {' '.join(self.argv)}\n"
        self._log.write(header.encode())
        self._log.flush()
        try:
            self._proc = subprocess.Popen(
                _with_parent_death_signal(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as e:
            self._log.close()
            self._log = None
            raise ServerStartError(f"tenant {self.name}: cannot run {self.argv[0]}: {e}") from e
        self.started_at = time.monotonic()
        self.start_ticks = proc_start_ticks(self._proc.pid)
        _register(self)
        return self

    def wait_healthy(
        self,
        timeout_s: float | None = None,
        *,
        deadline: float | None = None,
        poll_s: float = 0.25,
    ) -> float:
        """Poll ``GET health_url`` until it answers 200; return seconds since start.

        ``deadline`` is an absolute ``time.monotonic()`` value, ``timeout_s`` a duration from
        now (one of them; default 300 s). An exit before that, or the deadline passing,
        raises ServerStartError (PortInUseError when the log says the port was taken)
        with the log's last lines; the process is stopped on a missed deadline.
        """
        if self._proc is None:
            raise RuntimeError(f"{self.name}: not started")
        if deadline is None:
            deadline = time.monotonic() + (300.0 if timeout_s is None else timeout_s)
        last_err = "no answer yet"
        with httpx.Client(timeout=httpx.Timeout(5.0, connect=1.0), trust_env=False) as client:
            while True:
                rc = self._poll()
                if rc is not None:
                    self._raise_exited(rc)
                try:
                    r = client.get(self.health_url)
                    if r.status_code == 200:
                        self.healthy_at = time.monotonic()
                        return self.healthy_at - (self.started_at or self.healthy_at)
                    last_err = f"HTTP {r.status_code}"
                except httpx.HTTPError as e:
                    last_err = type(e).__name__
                now = time.monotonic()
                if now >= deadline:
                    break
                time.sleep(min(poll_s, max(0.0, deadline - now)))
        tail = self.log_tail()
        waited = time.monotonic() - (self.started_at or 0.0)
        self.stop()
        raise ServerStartError(
            f"tenant {self.name} not healthy after {waited:.0f} s at {self.health_url} "
            f"(last: {last_err}); stopped it. Last lines of {self.log_path}:\n{tail}"
        )

    def _raise_exited(self, rc: int) -> None:
        self._close_log()
        tail = self.log_tail()
        how = f"signal {-rc}" if rc < 0 else f"code {rc}"
        if any(p in tail.lower() for p in _BUSY_PATTERNS):
            raise PortInUseError(
                f"tenant {self.name}: port {self.port} is already in use (the server exited "
                f"with {how}). Last lines of {self.log_path}:\n{tail}"
            )
        raise ServerStartError(
            f"tenant {self.name} exited with {how} before it was healthy. "
            f"Last lines of {self.log_path}:\n{tail}"
        )

    def check_alive(self) -> None:
        """Raise ServerDiedError (with the log tail) if the process is gone."""
        if self._proc is None:
            raise RuntimeError(f"{self.name}: not started")
        rc = self._poll()
        if rc is not None:
            how = f"signal {-rc}" if rc < 0 else f"code {rc}"
            raise ServerDiedError(
                f"tenant {self.name} died (exited with {how}). Last lines of {self.log_path}:\n"
                f"{self.log_tail()}"
            )

    def send_signal(self, sig: int) -> None:
        """Signal the whole process group (while the leader is not reaped), else each process
        left of it (see the module's note on recycled group ids)."""
        if self._proc is None:
            return
        if self._poll() is None:  # not reaped: the group id is still this server's
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, sig)
            return
        for pid, st in (self._left or {}).items():
            signal_process(pid, st, sig)

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM the group, wait ``grace_s``, then SIGKILL it; reap; return the exit code.

        Safe to call twice and on a process that already exited (its group may still hold
        children, which are killed too).
        """
        if self._proc is None:
            return None
        proc = self._proc
        if self.group_alive():
            if self._term_sent_at is None:
                self._term_sent_at = time.monotonic()
                self.send_signal(signal.SIGTERM)
                self.send_signal(signal.SIGCONT)  # a stopped (SIGSTOP) server acts on it now
            # the grace counts from the first SIGTERM: an interrupted stop() resumes
            deadline = self._term_sent_at + grace_s
            while time.monotonic() < deadline:
                if not self.group_alive():
                    break
                time.sleep(0.05)
            if self.group_alive():
                self.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)
        self._wait_gone(5.0)
        self._close_log()
        _unregister(self)
        return self._poll()

    def _wait_gone(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.group_alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def _close_log(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "alive" if self.alive() else f"exited {self.returncode}"
        return f"ServerProcess({self.name!r}, pid={self.pid}, {state})"


# ---- registry and clean-up ---------------------------------------------------------------

_registry: dict[int, ServerProcess] = {}


def _register(p: ServerProcess) -> None:
    _registry[id(p)] = p


def _unregister(p: ServerProcess) -> None:
    _registry.pop(id(p), None)


def running_servers() -> list[ServerProcess]:
    return list(_registry.values())


def stop_all(grace_s: float = 5.0) -> None:
    """Stop every ServerProcess this interpreter started: SIGTERM all groups at once, wait
    up to ``grace_s`` for all, then SIGKILL what is left. Idempotent, no locks, safe from a
    signal handler or atexit."""
    procs = list(_registry.values())
    if not procs:
        return
    now = time.monotonic()
    for p in procs:
        if p._term_sent_at is None:
            p._term_sent_at = now
        p.send_signal(signal.SIGTERM)
        p.send_signal(signal.SIGCONT)  # a stopped (SIGSTOP) server acts on it now
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(p.group_alive() for p in procs):
        time.sleep(0.05)
    for p in procs:
        if p.group_alive():
            p.send_signal(signal.SIGKILL)
    for p in procs:
        p.stop(grace_s=0)  # reaps, closes the log, unregisters


atexit.register(stop_all)

_previous_handlers: dict[int, Any] = {}


def _on_signal(signum: int, frame: FrameType | None) -> None:
    stop_all()
    prev = _previous_handlers.get(signum)
    if callable(prev):
        prev(signum, frame)
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    # default action: die of the same signal
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install_signal_handlers(signals: Sequence[int] = (signal.SIGTERM, signal.SIGHUP)) -> None:
    """Stop every server on these signals, then run the previous handler (or die of the
    signal). Call from the main thread; Ctrl-C (SIGINT) already ends in ``atexit``."""
    for sig in signals:
        prev = signal.getsignal(sig)
        if prev is _on_signal:
            continue
        _previous_handlers[sig] = prev
        signal.signal(sig, _on_signal)


def _with_parent_death_signal(argv: Sequence[str]) -> list[str]:
    """Prefix argv so the server gets SIGTERM when the process (thread) that started it dies.

    A conductor killed with SIGKILL runs no clean-up; without this its servers, which live in
    their own sessions, would outlive it. Linux's PR_SET_PDEATHSIG, set by util-linux's
    ``setpriv`` right before it execs the server (no preexec_fn: that is unsafe with threads).
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.environ.get("COTENANT_NO_PDEATHSIG"):
        return list(argv)
    return [setpriv, "--pdeathsig", "TERM", "--", *argv]
