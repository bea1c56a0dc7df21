"""MpsDaemon's start/stop protocol, against a stand-in ``nvidia-cuda-mps-control`` on PATH.

``FAKE_CONTROL`` is a test double of the MPS control binary, written to behave as the real
one did on the H100 of shared/gpu: ``-d`` forks a daemon and returns 0 at once, the daemon
writes ``nvidia-cuda-mps-control.pid`` and a ``control`` socket into the pipe directory and
``control.log`` into the log directory; the client form reads commands on stdin and says
"Cannot find MPS control daemon process" (exit 1) when no daemon runs; ``quit`` removes
the pid file and exits. ``FAKE_MPS_MODE`` makes it misbehave (``mute``: never answers;
``fail``: ``-d`` exits 1). The tests are about our protocol, not MPS.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from servers.errors import ServerError
from servers.mps import PID_FILE, MpsDaemon, MpsError

FAKE_CONTROL = r"""#!{python}
import os, socket, sys, time

pipe = os.environ["CUDA_MPS_PIPE_DIRECTORY"]
logd = os.environ["CUDA_MPS_LOG_DIRECTORY"]
mode = os.environ.get("FAKE_MPS_MODE", "")
sock_path = os.path.join(pipe, "control")
pid_path = os.path.join(pipe, "nvidia-cuda-mps-control.pid")


def log(msg):
    with open(os.path.join(logd, "control.log"), "a") as f:
        f.write(f"[fake Control {{os.getpid()}}] {{msg}}\n")


if sys.argv[1:] == ["-d"]:
    if mode == "fail":
        print("An instance of this daemon is already running")
        sys.exit(1)
    if os.path.exists(pid_path):
        print("An instance of this daemon is already running")
        sys.exit(1)
    if os.fork():
        sys.exit(0)  # the parent returns at once, before the daemon is ready
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    with open(pid_path, "w") as f:
        f.write(str(os.getpid()))
    log("Starting control daemon using socket " + sock_path)
    if mode == "mute":
        time.sleep(60)
        os._exit(0)
    time.sleep(0.2)  # not ready at once
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(sock_path)
    srv.listen()
    while True:
        conn, _ = srv.accept()
        cmd = conn.recv(1024).decode().strip()
        log("Cmd:" + cmd)
        if cmd == "quit":
            conn.close()
            os.unlink(pid_path)
            os.unlink(sock_path)
            log("Exit with status 0")
            os._exit(0)
        conn.sendall(b"" if cmd == "get_server_list" else b"unknown command\n")
        conn.close()
else:
    for line in sys.stdin:
        c = socket.socket(socket.AF_UNIX)
        try:
            c.connect(sock_path)
        except OSError:
            print("Cannot find MPS control daemon process")
            sys.exit(1)
        c.sendall(line.strip().encode())
        reply = c.recv(4096)
        sys.stdout.write(reply.decode())
"""


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "nvidia-cuda-mps-control"
    exe.write_text(FAKE_CONTROL.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return exe


@pytest.fixture
def dirs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    pipe, logs = tmp_path / "mps-pipe", tmp_path / "mps-log"
    yield pipe, logs
    # never leave a daemon behind, whatever the test did
    pidfile = pipe / PID_FILE
    if pidfile.exists():
        with contextlib.suppress(psutil.Error, ValueError):
            psutil.Process(int(pidfile.read_text())).kill()


def _dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_missing_binary_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dirs: tuple[Path, Path]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(MpsError, match="nvidia-cuda-mps-control not found") as e, MpsDaemon(*dirs):
        pass
    assert "time-slice" in str(e.value)
    assert isinstance(e.value, ServerError)


def test_binary_without_execute_permission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dirs: tuple[Path, Path]
) -> None:
    bindir = tmp_path / "noexec"
    bindir.mkdir()
    (bindir / "nvidia-cuda-mps-control").write_text("#!/bin/sh\n")
    monkeypatch.setenv("PATH", str(bindir))
    with pytest.raises(MpsError, match="not executable"):
        MpsDaemon(*dirs).start()


def test_start_env_stop_protocol(fake_bin: Path, dirs: tuple[Path, Path]) -> None:
    pipe, logs = dirs
    with MpsDaemon(pipe, logs, start_timeout_s=10) as mps:
        assert mps.started and mps.answers()
        assert mps.pid is not None and not _dead(mps.pid)
        assert (pipe / PID_FILE).read_text().strip() == str(mps.pid)
        assert mps.server_pids() == []
        assert mps.env_for(None) == {
            "CUDA_MPS_PIPE_DIRECTORY": str(pipe.absolute()),
            "CUDA_MPS_LOG_DIRECTORY": str(logs.absolute()),
        }
        assert mps.env_for(30)["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "30"
        # a second daemon on the same pipe directory is refused, clearly
        with pytest.raises(MpsError, match="already answers"):
            MpsDaemon(pipe, logs).start()
        pid = mps.pid
    assert mps.stopped_cleanly is True
    assert _dead(pid)
    assert not (pipe / PID_FILE).exists()
    assert not mps.answers()
    log = (logs / "control.log").read_text()
    assert "Cmd:get_server_list" in log and "Cmd:quit" in log


def test_env_for_rejects_bad_percentages(dirs: tuple[Path, Path]) -> None:
    mps = MpsDaemon(*dirs)
    for bad in (0, 101, -5):
        with pytest.raises(MpsError, match="1-100"):
            mps.env_for(bad)
    assert mps.env_for(100)["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "100"


def test_daemon_that_refuses_to_start(
    fake_bin: Path, dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MPS_MODE", "fail")
    with pytest.raises(MpsError, match="exited 1: An instance of this daemon is already running"):
        MpsDaemon(*dirs).start()


def test_daemon_that_never_answers_is_killed(
    fake_bin: Path, dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MPS_MODE", "mute")
    mps = MpsDaemon(*dirs, start_timeout_s=1.0)
    t = time.monotonic()
    with pytest.raises(MpsError, match="did not answer") as e:
        mps.start()
    assert time.monotonic() - t < 10
    assert "Starting control daemon" in str(e.value)  # the log's tail comes with it
    assert mps.pid is not None and _dead(mps.pid)


def test_a_pipe_directory_too_long_for_a_socket(fake_bin: Path, tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    with pytest.raises(MpsError, match="too long"):
        MpsDaemon(deep, tmp_path / "log").start()


def test_stop_without_start_is_a_no_op(dirs: tuple[Path, Path]) -> None:
    MpsDaemon(*dirs).stop()
