"""A tick clock the test drives (``orchestrator.telemetry.periodic.TickClock``), so that sampler
and scraper tests count ticks of a clock they advance instead of sleeping on wall time.

Each thread that waits on it has a time of its own, which jumps to each deadline at once as
long as the deadline is within the horizon; ``run_until(h, threads=n)`` moves the horizon to
``h`` and returns once ``n`` threads wait for a deadline beyond it, i.e. every tick due by
``h`` has run. A loop anchored at ``start`` with interval ``i`` has then ticked
``floor((h - start) / i) + 1`` times (choose ``h`` between ticks: ``start + (k + 0.5) * i``).
It is also an experiment clock (``now_s()``: seconds since ``start`` on the calling thread),
so rows stamped from the loop's thread carry their tick's time.
"""

from __future__ import annotations

import threading


class FakeTickClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.start = start
        self.horizon = start
        self._cond = threading.Condition()
        self._local = threading.local()
        self._waiting: dict[int, float] = {}  # thread -> the deadline it waits for

    def now(self) -> float:
        return float(getattr(self._local, "t", self.start))

    def now_s(self) -> float:
        return self.now() - self.start

    def spend(self, seconds: float) -> None:
        """The calling thread's work takes ``seconds`` (a tick that overruns)."""
        self._local.t = self.now() + seconds

    def wait(self, stop: threading.Event, timeout_s: float) -> bool:
        deadline = self.now() + timeout_s
        me = threading.get_ident()
        with self._cond:
            while deadline > self.horizon and not stop.is_set():
                self._waiting[me] = deadline
                self._cond.notify_all()
                self._cond.wait(0.01)  # a stop sets only the event: look again soon
            self._waiting.pop(me, None)
        if stop.is_set():
            return True
        self._local.t = deadline
        return False

    def run_until(self, horizon: float, threads: int = 1, timeout_s: float = 60.0) -> None:
        with self._cond:
            self.horizon = horizon
            self._cond.notify_all()
            ok = self._cond.wait_for(
                lambda: sum(d > horizon for d in self._waiting.values()) >= threads, timeout_s)
        assert ok, f"{threads} loop(s) did not reach {horizon} within {timeout_s} s"

    def ticks(self, n: int, interval_s: float, threads: int = 1) -> None:
        """Run until ``n`` ticks of a loop with this interval have run (from its start)."""
        self.run_until(self.start + (n - 0.5) * interval_s, threads)
