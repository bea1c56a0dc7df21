"""The host: its CPU% and memory, and the CPU% and RSS of each tenant's process tree (psutil),
for the sampler (``sampler.py``), with or without a GPU."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import psutil

TREE_REFRESH_S = 1.0  # rescan tenants' process trees at least this often


def ppid_map() -> dict[int, int]:
    """pid -> parent pid for every visible process (one pass over /proc on Linux)."""
    # By hand rather than psutil.process_iter(["ppid"]), which gives the same map: psutil
    # builds a Process object a pid and took 4.8 ms a scan of 91 processes where this takes
    # 2.7 ms (timeit on the 2-core box, psutil 7.2). The sampler's thread rescans every
    # TREE_REFRESH_S and whenever a tree changes, so it keeps the faster path; psutil serves
    # where there is no /proc.
    out: dict[int, int] = {}
    if os.path.isdir("/proc/self"):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            fields = data[data.rfind(b")") + 2 :].split()
            if len(fields) > 1:
                out[int(entry.name)] = int(fields[1])
        return out
    for p in psutil.process_iter(["ppid"]):
        out[p.pid] = p.info["ppid"]
    return out


def process_tree(root: int, ppids: Mapping[int, int]) -> list[int]:
    """``root`` and all its descendants that appear in ``ppids`` (root first)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


class HostSource:
    """Host CPU% and memory, and CPU% and RSS summed over each tenant's process tree.

    Trees are rescanned every ``TREE_REFRESH_S``, when the tenants change, when a process
    of a tree exits, or on request (an NVML pid that matches no tenant).
    """

    name = "host"

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        self._cpu_s: dict[int, float] = {}  # pid -> its CPU seconds at the last tenant sample
        self._last_mono: float | None = None
        self._last_wall: float | None = None
        self._trees: dict[str, list[int]] = {}
        self._tree_roots: dict[str, int] = {}
        self._tree_at = -1e18
        self.errors = 0

    def open(self) -> None:
        psutil.cpu_percent(interval=None)  # primes the host CPU% counter

    def device(self) -> dict[str, Any]:
        row: dict[str, Any] = {}
        try:
            row["host_cpu_pct"] = float(psutil.cpu_percent(interval=None))
            vm = psutil.virtual_memory()
            row["host_mem_used_bytes"] = int(vm.total - vm.available)
        except (OSError, psutil.Error):
            self.errors += 1
        return row

    def trees(self, roots: Mapping[str, int], force: bool = False) -> dict[str, list[int]]:
        """tenant -> pids of its tree (the root alone when the root has exited)."""
        now = time.monotonic()
        if force or dict(roots) != self._tree_roots or now - self._tree_at > TREE_REFRESH_S:
            ppids = ppid_map()
            self._trees = {
                t: process_tree(root, ppids) if root in ppids else [root]
                for t, root in roots.items()
            }
            self._tree_roots = dict(roots)
            self._tree_at = now
        return self._trees

    def tree_usage(
        self, trees: Mapping[str, list[int]]
    ) -> dict[str, tuple[float | None, int | None]]:
        """tenant -> (CPU% since the last call, RSS bytes) over its tree.

        A process first seen now counts with all its CPU time if it started after the last
        call, else from now on. CPU% is None on the first call (no interval yet); both are
        None when no process of the tree exists.
        """
        mono, wall = time.monotonic(), time.time()
        dt = None if self._last_mono is None else mono - self._last_mono
        seen: set[int] = set()
        out: dict[str, tuple[float | None, int | None]] = {}
        for tenant, pids in trees.items():
            cpu_s, rss, alive = 0.0, 0, 0
            for pid in pids:
                got = self._read_proc(pid)
                if got is None:
                    continue
                cpu_now, rss_now, created = got
                alive += 1
                rss += rss_now
                seen.add(pid)
                before = self._cpu_s.get(pid)
                if before is None and self._last_wall is not None and created >= self._last_wall:
                    before = 0.0
                if before is not None:
                    cpu_s += max(0.0, cpu_now - before)
                self._cpu_s[pid] = cpu_now
            if alive == 0:
                out[tenant] = (None, None)
            else:
                out[tenant] = (None if not dt else 100.0 * cpu_s / dt, rss)
        for pid in set(self._cpu_s) - seen:
            self._cpu_s.pop(pid, None)
            self._procs.pop(pid, None)
        if any(pid not in seen for pids in trees.values() for pid in pids):
            self._tree_at = -1e18  # a process exited (or is new): rescan next time
        self._last_mono, self._last_wall = mono, wall
        return out

    def _read_proc(self, pid: int) -> tuple[float, int, float] | None:
        try:
            p = self._procs.get(pid)
            if p is None:
                p = self._procs[pid] = psutil.Process(pid)
            with p.oneshot():
                ct = p.cpu_times()
                rss = p.memory_info().rss
                created = p.create_time()
            return ct.user + ct.system, int(rss), created
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            self._procs.pop(pid, None)
            return None
        except (psutil.AccessDenied, OSError):
            self.errors += 1
            return None
