"""CUDA MPS for `sharing: mps`: start a control daemon, give each tenant its environment, stop it.

The protocol, as verified on the H100 of shared/gpu (driver 580, CUDA 13.0):

- ``nvidia-cuda-mps-control -d`` with ``CUDA_MPS_PIPE_DIRECTORY`` and
  ``CUDA_MPS_LOG_DIRECTORY`` set forks the daemon and returns 0 at once; the daemon writes
  ``nvidia-cuda-mps-control.pid`` and the ``control`` socket into the pipe directory and
  ``control.log`` into the log directory. A second ``-d`` on the same pipe directory prints
  "An instance of this daemon is already running" and exits 1.
- ``echo get_server_list | nvidia-cuda-mps-control`` exits 0 (one server pid a line) while
  the daemon runs, and prints "Cannot find MPS control daemon process" and exits 1 when not.
- ``echo quit | nvidia-cuda-mps-control`` shuts the servers and the daemon down (the pid
  file goes away; the daemon may stay a zombie until its parent reaps it).
- A CUDA client started with the same pipe directory connects through the daemon; NVML then
  lists both the client's pid and the ``nvidia-cuda-mps-server`` pid.

``MpsDaemon`` runs that protocol under monotonic deadlines and turns every failure into an
``MpsError`` that says what is missing or what the daemon said (with its log's tail).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil

from servers.errors import ServerError

MPS_CONTROL = "nvidia-cuda-mps-control"
PID_FILE = "nvidia-cuda-mps-control.pid"
CONTROL_LOG = "control.log"
START_OUTPUT = "cotenant-mps-start.out"
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL (Linux)


class MpsError(ServerError):
    """MPS cannot be used: the binary is missing, a folder is not writable, the daemon fails."""


class MpsDaemon:
    """One MPS control daemon with its own pipe and log folders, as a context manager.

    ``env_for(pct)`` gives the variables a tenant's process needs to run under this daemon.
    Stop the tenants before the daemon: ``quit`` waits for the clients to finish.
    """

    def __init__(
        self,
        pipe_dir: str | Path,
        log_dir: str | Path,
        *,
        binary: str = MPS_CONTROL,
        start_timeout_s: float = 15.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        self.pipe_dir = Path(pipe_dir).absolute()
        self.log_dir = Path(log_dir).absolute()
        self.binary = binary
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.pid: int | None = None
        self.started = False
        self.stopped_cleanly: bool | None = None
        self._exe: str | None = None

    # ---- environment

    def env_for(self, tenant_pct: int | None = None) -> dict[str, str]:
        """Variables for a tenant under this daemon; ``tenant_pct`` caps its share of SMs.

        ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` is set only when ``tenant_pct`` is given (1-100).
        """
        env = {
            "CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_dir),
            "CUDA_MPS_LOG_DIRECTORY": str(self.log_dir),
        }
        if tenant_pct is not None:
            if isinstance(tenant_pct, bool) or not 1 <= int(tenant_pct) <= 100:
                raise MpsError(f"MPS active thread percentage must be 1-100, got {tenant_pct!r}")
            env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(int(tenant_pct))
        return env

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", None)
        env.update(self.env_for(None))
        return env

    # ---- life

    def __enter__(self) -> MpsDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> MpsDaemon:
        """Start the daemon and wait until it answers; ``MpsError`` says why it could not."""
        if self.started:
            raise MpsError("this MPS daemon is already started")
        self._exe = self._find_binary()
        longest = self.pipe_dir / "control_privileged"  # the daemon's longest socket name
        if len(os.fsencode(longest)) > SOCKET_PATH_MAX:
            raise MpsError(
                f"the MPS pipe directory {self.pipe_dir} is too long for the daemon's Unix "
                f"sockets ({len(os.fsencode(longest))} > {SOCKET_PATH_MAX} bytes for {longest}); "
                "use a shorter path (e.g. under /tmp)"
            )
        for what, d in (("pipe", self.pipe_dir), ("log", self.log_dir)):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise MpsError(f"cannot create the MPS {what} directory {d}: {e}") from e
            if not os.access(d, os.W_OK | os.X_OK):
                raise MpsError(f"the MPS {what} directory {d} is not writable")
        if self.answers():
            raise MpsError(
                f"an MPS control daemon already answers on {self.pipe_dir}; stop it with "
                f"`echo quit | CUDA_MPS_PIPE_DIRECTORY={self.pipe_dir} {MPS_CONTROL}`"
            )
        out_path = self.log_dir / START_OUTPUT
        try:
            with open(out_path, "wb") as out:
                # output to a file, not a pipe: the forked daemon may keep inherited pipes open
                rc = subprocess.run(
                    [self._exe, "-d"],
                    env=self._env(),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=self.start_timeout_s,
                    start_new_session=True,  # Ctrl-C in our terminal must not reach it
                ).returncode
        except PermissionError as e:
            raise MpsError(f"permission denied running {self._exe}: {e}") from e
        except subprocess.TimeoutExpired as e:
            raise MpsError(f"`{MPS_CONTROL} -d` did not return in {self.start_timeout_s} s") from e
        except OSError as e:
            raise MpsError(f"cannot run {self._exe}: {e}") from e
        said = _read_text(out_path).strip()
        if rc != 0:
            raise MpsError(
                f"`{MPS_CONTROL} -d` exited {rc}: {said or '(no output)'}{self._log_tail_note()}"
            )
        deadline = time.monotonic() + self.start_timeout_s
        while not self.answers():
            if time.monotonic() > deadline:
                self.pid = self._read_pid()
                self._kill_daemon()
                raise MpsError(
                    f"the MPS control daemon did not answer within {self.start_timeout_s} s"
                    f"{self._log_tail_note()}"
                )
            time.sleep(0.05)
        self.pid = self._read_pid()
        self.started = True
        self.stopped_cleanly = None
        return self

    def stop(self) -> None:
        """``quit`` the daemon and wait until it is gone; kill it if it does not go in time."""
        if not self.started:
            return
        self.started = False
        servers = self._server_pids_or_empty()
        quit_error = None
        try:
            self.control("quit", timeout_s=self.stop_timeout_s)
        except MpsError as e:
            quit_error = e
        deadline = time.monotonic() + self.stop_timeout_s
        while not self._gone():
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.stopped_cleanly = quit_error is None and self._gone()
        if not self._gone():
            self._kill_daemon()
            for pid in servers:
                _kill(pid)

    # ---- talking to it

    def control(self, command: str, timeout_s: float = 5.0) -> str:
        """Send one command to the daemon (``get_server_list``, ``quit``...); its output."""
        exe = self._exe or self._find_binary()
        try:
            r = subprocess.run(
                [exe],
                input=command + "\n",
                env=self._env(),
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired as e:
            raise MpsError(f"MPS control command {command!r} timed out after {timeout_s} s") from e
        except OSError as e:
            raise MpsError(f"cannot run {exe}: {e}") from e
        if r.returncode != 0:
            said = (r.stdout + r.stderr).strip() or "(no output)"
            raise MpsError(f"MPS control command {command!r} failed ({r.returncode}): {said}")
        return r.stdout

    def answers(self) -> bool:
        """Whether a control daemon answers on this pipe directory."""
        try:
            self.control("get_server_list", timeout_s=5.0)
        except MpsError:
            return False
        return True

    def server_pids(self) -> list[int]:
        """Pids of the MPS servers the daemon runs (one per user with clients)."""
        out = self.control("get_server_list")
        return [int(tok) for tok in out.split() if tok.isdigit()]

    def log_tail(self, lines: int = 20) -> str:
        text = _read_text(self.log_dir / CONTROL_LOG)
        return "\n".join(text.splitlines()[-lines:])

    # ---- helpers

    def _find_binary(self) -> str:
        if os.sep in self.binary:
            exe: str | None = self.binary if Path(self.binary).is_file() else None
        else:
            exe = shutil.which(self.binary)
        if exe is None:
            if os.sep not in self.binary and _exists_on_path(self.binary):
                raise MpsError(
                    f"{self.binary} is on PATH but not executable (permission denied): "
                    "check its mode, or use sharing: time-slice"
                )
            raise MpsError(
                f"{self.binary} not found (PATH={os.environ.get('PATH', '')}): sharing: mps needs "
                "the NVIDIA driver's MPS binaries (nvidia-cuda-mps-control, "
                "nvidia-cuda-mps-server) on PATH; install them or use sharing: time-slice"
            )
        if not os.access(exe, os.X_OK):
            raise MpsError(f"{exe} is not executable (permission denied)")
        return exe

    def _read_pid(self) -> int | None:
        try:
            return int((self.pipe_dir / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None

    def _gone(self) -> bool:
        if self.pid is None:
            return not self.answers()
        try:
            return psutil.Process(self.pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            return not self.answers()

    def _kill_daemon(self) -> None:
        if self.pid is not None and not self._gone():
            _kill(self.pid)

    def _server_pids_or_empty(self) -> list[int]:
        try:
            return self.server_pids()
        except MpsError:
            return []

    def _log_tail_note(self) -> str:
        tail = self.log_tail(10)
        return f"\n{CONTROL_LOG} ({self.log_dir}):\n{tail}" if tail else ""


def _exists_on_path(name: str) -> bool:
    return any(
        (Path(d) / name).is_file() for d in os.environ.get("PATH", "").split(os.pathsep) if d
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _dead(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _kill(pid: int, grace_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``: for a daemon or server this module started."""
    try:
        p = psutil.Process(pid)
        p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while not _dead(p) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _dead(p):
            p.kill()
    except psutil.NoSuchProcess:
        return  # it went by itself
    except psutil.Error as e:
        raise MpsError(f"cannot stop MPS process {pid}: {e}") from e
