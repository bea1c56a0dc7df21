"""A loop on its own thread at absolute times (``Periodic``), and the clocks it and its users read.

Two clocks, two jobs. ``Clock`` is the experiment's (``now_s()``, seconds since its anchor,
e.g. ``workloads.clock.ExperimentClock``): it stamps rows (``t_s``) so that samples join
request rows. ``TickClock`` says when ticks are due and waits for them: ``SYSTEM_CLOCK``
(``time.perf_counter`` and ``threading.Event.wait``) unless a caller injects another, as
tests do with a clock they advance themselves instead of sleeping on wall time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class Clock(Protocol):
    """The experiment's clock: seconds since its anchor (``workloads.clock.ExperimentClock``)."""

    def now_s(self) -> float: ...


class TickClock(Protocol):
    """When ticks are due: ``now()`` in seconds (any origin), and a wait that a stop cuts short."""

    def now(self) -> float: ...

    def wait(self, stop: threading.Event, timeout_s: float) -> bool:
        """Wait ``timeout_s`` seconds of this clock, or until ``stop`` is set (then at once);
        True when ``stop`` is set (as ``threading.Event.wait``)."""
        ...


class SystemClock:
    """The real one: ``time.perf_counter``; waits on the stop event, so a stop wakes it."""

    def now(self) -> float:
        return time.perf_counter()

    def wait(self, stop: threading.Event, timeout_s: float) -> bool:
        return stop.wait(timeout_s)


SYSTEM_CLOCK = SystemClock()


class Periodic:
    """Calls ``fn()`` on its own daemon thread at absolute times ``anchor + k * interval_s``.

    A call that overruns skips the ticks it missed (``missed``) rather than bursting.
    ``stop()`` wakes the thread at once and joins it. An exception in ``fn`` is logged and
    counted (``errors``); the thread goes on. ``clock`` says when ticks are due (the anchor
    is its ``now()`` when the thread starts); ``thread_cpu_s`` is real CPU time whatever it is.
    """

    def __init__(self, name: str, interval_s: float, fn: Callable[[], None],
                 clock: TickClock = SYSTEM_CLOCK) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self._fn = fn
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.ticks = 0
        self.missed = 0
        self.errors = 0
        self.last_error: str | None = None
        self.thread_cpu_s = 0.0  # CPU time of this thread so far (time.thread_time)

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to stop without waiting (see ``stop``)."""
        self._stop.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread: it wakes at once, finishes a tick in progress, and is joined."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("%s did not stop within %.1f s", self._thread.name, timeout_s)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        clock = self._clock
        cpu0 = time.thread_time()
        anchor = clock.now()
        k = 0
        while True:
            delay = anchor + k * self.interval_s - clock.now()
            if (delay > 0 and clock.wait(self._stop, delay)) or self._stop.is_set():
                break
            try:
                self._fn()
            except Exception as e:  # a sampler must outlive any one bad sample
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
                if self.errors <= 3:
                    log.exception("%s: tick failed", self._thread.name)
            self.ticks += 1
            self.thread_cpu_s = time.thread_time() - cpu0
            k += 1
            due_now = int((clock.now() - anchor) / self.interval_s) + 1
            if due_now > k + 1:
                self.missed += due_now - 1 - k
                k = due_now - 1
        self.thread_cpu_s = time.thread_time() - cpu0
