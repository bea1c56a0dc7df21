"""The experiment clock: one (wall clock, monotonic) anchor pair per experiment.

Request rows, telemetry samples and scraped metrics all stamp ``clock.now_s()``: seconds
from the same monotonic zero, so they join without a wall-clock skew. The wall clock
is read once, at the anchor, and goes into the manifest (``anchor_wall_s``).

``time.perf_counter_ns`` is ``CLOCK_MONOTONIC`` on Linux: one clock for every process
of the host, which is what lets a stub server's own stamps be compared with ours.
"""

from __future__ import annotations

import time


class ExperimentClock:
    """Zero of an experiment: ``anchor_wall_s`` (Unix seconds) and ``anchor_ns``
    (``time.perf_counter_ns``), read together when the clock is made.

    ``ExperimentClock(delay_s=2.0)`` puts zero two seconds ahead (``now_s()`` is negative
    until then): time for the replayer to prepare prompts, so that the first request is
    due at zero and ``scheduled_s`` equals the trace's ``arrival_s``.
    """

    __slots__ = ("anchor_wall_s", "anchor_ns")

    def __init__(self, delay_s: float = 0.0) -> None:
        if not delay_s >= 0:
            raise ValueError(f"delay_s must be >= 0, not {delay_s}")
        mono = time.perf_counter_ns()
        wall = time.time()
        delay_ns = round(delay_s * 1e9)
        self.anchor_ns = mono + delay_ns
        self.anchor_wall_s = wall + delay_ns / 1e9

    def now_s(self) -> float:
        """Seconds since zero on the monotonic clock."""
        return (time.perf_counter_ns() - self.anchor_ns) / 1e9

    def to_s(self, perf_ns: int) -> float:
        """A ``time.perf_counter_ns()`` reading in seconds since zero."""
        return (perf_ns - self.anchor_ns) / 1e9

    def to_ns(self, t_s: float) -> int:
        """Seconds since zero as a ``time.perf_counter_ns()`` reading."""
        return self.anchor_ns + round(t_s * 1e9)

    def wall_at(self, t_s: float) -> float:
        """Unix time of ``t_s`` seconds since zero (for display; do not join on it)."""
        return self.anchor_wall_s + t_s

    def __repr__(self) -> str:
        return (
            f"ExperimentClock(anchor_wall_s={self.anchor_wall_s:.6f}, anchor_ns={self.anchor_ns})"
        )
