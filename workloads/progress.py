"""Progress of a replay, as an object passed in (a quiet default; rich for the CLI).

The replayer calls ``update`` about twice a second with a `ProgressSnapshot`; nothing
is printed by the replayer itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class ProgressSnapshot:
    elapsed_s: float
    total: int
    sent: int
    done: int
    errors: int
    in_flight: int
    dispatch_lag_s: float  # the largest lag since the last snapshot


class Progress(Protocol):
    """What the replayer reports while it runs (about twice a second)."""

    def start(self, total: int) -> None: ...
    def update(self, snap: ProgressSnapshot) -> None: ...
    def stop(self) -> None: ...


class QuietProgress:
    """The default: reports nothing."""

    def start(self, total: int) -> None:
        pass

    def update(self, snap: ProgressSnapshot) -> None:
        pass

    def stop(self) -> None:
        pass


class RichProgress:
    """A one-line live display on a rich Console (shared with logging, if you pass it)."""

    def __init__(self, console: Any = None, label: str = "replay") -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.label = label
        self._live: Any = None

    def start(self, total: int) -> None:
        from rich.live import Live

        self._live = Live("", console=self.console, auto_refresh=False, transient=True)
        self._live.start()

    def update(self, s: ProgressSnapshot) -> None:
        if self._live is None:
            return
        line = (
            f"[bold]{self.label}[/] {s.elapsed_s:6.1f}s  sent {s.sent}/{s.total}  "
            f"done {s.done}  errors {s.errors}  in flight {s.in_flight}  "
            f"lag {s.dispatch_lag_s * 1e3:.2f} ms"
        )
        self._live.update(line, refresh=True)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
