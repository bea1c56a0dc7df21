"""ServerProcess against a tiny real HTTP server (a python script), no mocks."""

from __future__ import annotations

import os
import signal
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from servers import process as sp
from servers.errors import PortInUseError, ServerDiedError, ServerStartError
from servers.process import ServerProcess, free_port, port_in_use
from servers.proctable import group_members, proc_start_ticks, process_state, signal_process

SERVER = textwrap.dedent(
    """
    import argparse, http.server, os, signal, subprocess, sys, time
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int)
    p.add_argument("--delay", type=float, default=0)
    p.add_argument("--exit-early", action="store_true")
    p.add_argument("--ignore-term", action="store_true")
    p.add_argument("--child", action="store_true")
    p.add_argument("--unhealthy", action="store_true")
    a = p.parse_args()
    print("helper server starting", flush=True)
    if a.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if a.child:
        c = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"child pid {c.pid}", flush=True)
    if a.exit_early:
        print("boom: the model folder is broken", flush=True)
        sys.exit(3)
    time.sleep(a.delay)

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            code = 500 if a.unhealthy else 200
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"ok")
        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", a.port), H).serve_forever()
    """
)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "helper_server.py"
    path.write_text(SERVER)
    return path


def make(script: Path, tmp_path: Path, *extra: str, name: str = "helper") -> ServerProcess:
    port = free_port()
    return ServerProcess(
        name,
        [sys.executable, str(script), "--port", str(port), *extra],
        log_path=tmp_path / f"{name}.log",
        health_url=f"http://127.0.0.1:{port}/health",
        port=port,
    )


def _pid_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_start_health_stop(script: Path, tmp_path: Path) -> None:
    p = make(script, tmp_path, "--delay", "0.3")
    with p:
        secs = p.wait_healthy(timeout_s=20)
        assert 0.2 < secs < 20
        assert p.alive() and p.pid is not None and p.returncode is None
        assert os.getpgid(p.pid) == p.pid  # leads its own group
        assert p in sp.running_servers()
        assert "helper server starting" in p.log_tail()
        assert p.log_tail().startswith("# cotenant: starting helper")
    assert not p.alive()
    assert p.returncode is not None
    assert p not in sp.running_servers()
    p.stop()  # twice is fine


def test_early_exit_quotes_log_tail(script: Path, tmp_path: Path) -> None:
    p = make(script, tmp_path, "--exit-early", name="broken")
    p.start()
    with pytest.raises(ServerStartError) as e:
        p.wait_healthy(timeout_s=20)
    msg = str(e.value)
    assert "broken" in msg and "code 3" in msg
    assert "boom: the model folder is broken" in msg
    p.stop()


def test_deadline_stops_the_process(script: Path, tmp_path: Path) -> None:
    p = make(script, tmp_path, "--unhealthy", name="slow")
    p.start()
    t0 = time.monotonic()
    with pytest.raises(ServerStartError) as e:
        p.wait_healthy(timeout_s=1.5)
    assert time.monotonic() - t0 < 15
    assert "slow not healthy" in str(e.value) and "HTTP 500" in str(e.value)
    assert not p.alive()


def test_log_is_appended_and_tail_is_this_start(script: Path, tmp_path: Path) -> None:
    log = tmp_path / "helper.log"
    log.write_text("old line from an earlier start\n")
    p = make(script, tmp_path, "--exit-early")
    p.start()
    with pytest.raises(ServerStartError):
        p.wait_healthy(timeout_s=20)
    assert "old line" in log.read_text()
    assert "old line" not in p.log_tail()


def test_stop_kills_the_whole_group(script: Path, tmp_path: Path) -> None:
    p = make(script, tmp_path, "--child")
    p.start()
    p.wait_healthy(timeout_s=20)
    assert p.pid is not None
    pgid = p.pid
    deadline = time.monotonic() + 10
    while len(group_members(pgid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    members = group_members(pgid)
    assert len(members) >= 2  # the server and its child
    p.stop(grace_s=5)
    assert not any(_pid_running(m) for m in members)
    assert group_members(pgid) == []


def test_sigterm_ignored_escalates_to_sigkill(script: Path, tmp_path: Path) -> None:
    p = make(script, tmp_path, "--ignore-term", "--child")
    p.start()
    p.wait_healthy(timeout_s=20)
    t0 = time.monotonic()
    rc = p.stop(grace_s=0.5)
    assert rc == -signal.SIGKILL
    assert time.monotonic() - t0 < 10
    assert p.pid is not None and group_members(p.pid) == []


def test_killed_server_is_reported_by_name(script: Path, tmp_path: Path) -> None:
    p = make(script, tmp_path, "--child", name="victim")
    p.start()
    p.wait_healthy(timeout_s=20)
    assert p.pid is not None
    os.kill(p.pid, signal.SIGKILL)  # only the leader: its child stays in the group
    deadline = time.monotonic() + 5
    while p.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not p.alive()
    with pytest.raises(ServerDiedError, match="victim.*signal 9"):
        p.check_alive()
    p.stop(grace_s=1)
    assert group_members(p.pid) == []


def test_busy_port_is_refused(script: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert port_in_use(port)
        p = ServerProcess(
            "squatter-victim",
            [sys.executable, str(script), "--port", str(port)],
            log_path=tmp_path / "x.log",
            health_url=f"http://127.0.0.1:{port}/health",
            port=port,
        )
        with pytest.raises(PortInUseError, match=rf"squatter-victim.*{port}"):
            p.start()
        assert p.pid is None


def test_port_taken_after_the_check_is_named(script: Path, tmp_path: Path) -> None:
    """The server itself fails to bind (the check passed): PortInUseError from the log."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = ServerProcess(
            "late",
            [sys.executable, str(script), "--port", str(port)],
            log_path=tmp_path / "late.log",
            health_url=f"http://127.0.0.1:{port + 0}/nothing",
        )  # no port given: no check before the start
        p.start()
        with pytest.raises((PortInUseError, ServerStartError)) as e:
            p.wait_healthy(timeout_s=20)
        assert isinstance(e.value, PortInUseError) or "Address already in use" in str(e.value)
        p.stop()


def test_free_port_is_free_and_unique() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    assert not any(port_in_use(p) for p in ports)


def test_stop_all_stops_everything(script: Path, tmp_path: Path, monkeypatch) -> None:
    # a registry of this test's own: in a full run the e2e session's tenants are registered
    # in this interpreter too, and stop_all() would stop them (SIGTERM) under the later tests
    monkeypatch.setattr(sp, "_registry", {})
    procs = [make(script, tmp_path, "--child", name=f"s{i}") for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.wait_healthy(timeout_s=20)
    sp.stop_all(grace_s=2)
    for p in procs:
        assert not p.alive()
        assert p.pid is not None and group_members(p.pid) == []
    assert not any(p in sp.running_servers() for p in procs)


def test_sigterm_to_the_conductor_stops_servers(script: Path, tmp_path: Path) -> None:
    """A conductor process that installed the handlers and gets SIGTERM leaves no orphan."""
    port = free_port()
    conductor = tmp_path / "conductor.py"
    conductor.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
            from servers.process import ServerProcess, install_signal_handlers
            install_signal_handlers()
            p = ServerProcess("child-server", [sys.executable, {str(script)!r}, "--port",
                              "{port}"], log_path={str(tmp_path / "c.log")!r},
                              health_url="http://127.0.0.1:{port}/health", port={port})
            p.start()
            p.wait_healthy(timeout_s=20)
            print("PID", p.pid, flush=True)
            time.sleep(600)
            """
        )
    )
    import subprocess

    c = subprocess.Popen([sys.executable, str(conductor)], stdout=subprocess.PIPE, text=True)
    try:
        assert c.stdout is not None
        line = c.stdout.readline()
        assert line.startswith("PID"), line
        server_pid = int(line.split()[1])
        assert _pid_running(server_pid)
        c.send_signal(signal.SIGTERM)
        assert c.wait(timeout=20) == -signal.SIGTERM
        deadline = time.monotonic() + 5
        while _pid_running(server_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _pid_running(server_pid)
    finally:
        if c.poll() is None:
            c.kill()
            c.wait()


def test_a_recycled_group_id_is_never_signalled(script: Path, tmp_path: Path, monkeypatch) -> None:
    """Once the leader is reaped and its group is empty, the number may name a stranger's
    group (pids are recycled; pid_max is often 32768 and threads take pids too): stop(),
    send_signal() and stop_all() leave that group alone."""
    import subprocess

    monkeypatch.setattr(sp, "_registry", {})
    p = make(script, tmp_path, "--child", name="gone")
    p.start()
    p.wait_healthy(timeout_s=20)
    assert p.pid is not None and p.start_ticks == proc_start_ticks(p.pid)
    os.killpg(p.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (p.alive() or p.members()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not p.alive() and p.members() == []
    stranger = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        assert p._proc is not None
        p._proc.pid = stranger.pid  # as if the kernel had given the old number to the stranger
        assert group_members(stranger.pid) == [stranger.pid]  # a live group under "our" id
        assert not p.group_alive()
        p.send_signal(signal.SIGTERM)
        sp.stop_all(grace_s=0.5)
        p.stop(grace_s=0.5)
        time.sleep(0.3)
        assert stranger.poll() is None, "a recycled process group was signalled"
    finally:
        stranger.kill()
        stranger.wait()


def test_orphans_of_a_reaped_leader_are_still_stopped(script: Path, tmp_path: Path) -> None:
    """The leader reaped, its child left in the group: stop() still finds and kills it (by
    pid and start time, not by the group id)."""
    p = make(script, tmp_path, "--child", name="leader")
    p.start()
    p.wait_healthy(timeout_s=20)
    assert p.pid is not None
    deadline = time.monotonic() + 10
    while len(group_members(p.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    child = next(m for m in group_members(p.pid) if m != p.pid)
    os.kill(p.pid, signal.SIGKILL)
    while p.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert p.members() == [child] and p.group_alive()
    p.stop(grace_s=2)
    assert not _pid_running(child)


def test_signal_process_checks_the_start_time() -> None:
    import subprocess

    c = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        st = proc_start_ticks(c.pid)
        assert st is not None
        assert not signal_process(c.pid, st - 1, signal.SIGTERM)  # another process, same pid
        time.sleep(0.2)
        assert c.poll() is None
        assert signal_process(c.pid, st, signal.SIGTERM)
        assert c.wait(timeout=10) == -signal.SIGTERM
        assert not signal_process(c.pid, st, signal.SIGTERM)  # gone (a zombie, then reaped)
    finally:
        c.kill()
        c.wait()


def test_stop_continues_a_stopped_server(script: Path, tmp_path: Path) -> None:
    """A server frozen with SIGSTOP (a hung tenant) stops at once on SIGTERM: stop() sends
    SIGCONT after it instead of waiting out the grace for SIGKILL."""
    p = make(script, tmp_path, name="frozen")
    p.start()
    p.wait_healthy(timeout_s=20)
    assert p.pid is not None
    os.killpg(p.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    rc = p.stop(grace_s=8)
    assert rc == -signal.SIGTERM and time.monotonic() - t0 < 5


def test_start_ticks_are_the_guards_unit() -> None:
    """The orphan guard (orchestrator.executors) reads a group leader's start time from
    /proc/<pid>/stat itself (field 22, clock ticks since boot) and compares it with ours."""
    import subprocess

    if not os.path.isdir("/proc"):
        pytest.skip("no /proc")
    c = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (os.getpid(), c.pid):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            assert proc_start_ticks(pid) == int(fields[19])
    finally:
        c.kill()
        c.wait()
    assert proc_start_ticks(c.pid) is None


def test_process_state_names_a_stopped_process() -> None:
    import subprocess

    c = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_state(c.pid) in ("running", "sleeping")
        os.kill(c.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while process_state(c.pid) != "stopped (SIGSTOP?)" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process_state(c.pid) == "stopped (SIGSTOP?)"
        c.kill()
        c.wait()
        assert process_state(c.pid) == "state unknown"
        assert process_state(None) == "state unknown"
    finally:
        c.kill()
        c.wait()
