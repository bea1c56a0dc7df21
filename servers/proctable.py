"""The process table, read through psutil: when a process started, what state it is in,
which processes are in a group, and signalling one process without hitting a recycled pid.

A pid alone may name another process tomorrow (pids are recycled); a pid with its start
time names one process. Start times are in clock ticks since boot, the unit of
``/proc/<pid>/stat`` that the orphan guard (``orchestrator.executors``) compares.
"""

from __future__ import annotations

import os
import signal

import psutil

_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat`` field
    22, the unit the orphan guard compares): with the pid, it names one process, whereas a
    pid alone may be recycled. None when there is no such process."""
    try:
        return _start_ticks(psutil.Process(pid))
    except psutil.Error:
        return None


def _start_ticks(proc: psutil.Process) -> int:
    """psutil's ``create_time()`` is the boot time plus the start ticks over CLK_TCK, the
    boot time read afresh each call; less the boot time, it is exact to the tick."""
    return round((proc.create_time() - psutil.boot_time()) * _CLOCK_TICKS)


def same_process(pid: int, start_ticks: int) -> bool:
    """``pid`` still runs (not a zombie) and is the process that started at ``start_ticks``."""
    try:
        proc = psutil.Process(pid)
        return proc.status() not in _GONE and _start_ticks(proc) == start_ticks
    except psutil.Error:
        return False


_STATES = {
    psutil.STATUS_RUNNING: "running",
    psutil.STATUS_SLEEPING: "sleeping",
    psutil.STATUS_DISK_SLEEP: "in uninterruptible sleep (I/O)",
    psutil.STATUS_STOPPED: "stopped (SIGSTOP?)",
    psutil.STATUS_TRACING_STOP: "stopped by a debugger",
    psutil.STATUS_ZOMBIE: "a zombie",
}


def process_state(pid: int | None) -> str:
    """What the process table says of a process: running, sleeping, stopped (SIGSTOP?), ..."""
    if pid is None:
        return "state unknown"
    try:
        status = psutil.Process(pid).status()
    except psutil.Error:
        return "state unknown"
    return _STATES.get(status, f"state {status}")


def signal_process(pid: int, start_ticks: int, sig: int) -> bool:
    """Send ``sig`` to ``pid`` only if it is the process that started at ``start_ticks``;
    through a pidfd (opened, then checked), so the pid cannot be recycled in between.
    Returns whether the signal was sent."""
    pidfd_open = getattr(os, "pidfd_open", None)
    send = getattr(signal, "pidfd_send_signal", None)
    if pidfd_open is None or send is None:
        if not same_process(pid, start_ticks):
            return False
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    try:
        fd = pidfd_open(pid)
    except OSError:
        return False
    try:
        if not same_process(pid, start_ticks):
            return False
        send(fd, sig)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def group_members(pgid: int, *, zombies: bool = False) -> list[int]:
    """Pids whose process group is ``pgid``; zombies (dead, waiting for a parent to reap
    them) only when asked."""
    out: list[int] = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) != pgid:
                continue
            if zombies or psutil.Process(pid).status() not in _GONE:
                out.append(pid)
        except (OSError, psutil.Error):  # gone meanwhile
            continue
    return out
