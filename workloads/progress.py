"""Progress of a replay, as an object passed in (a quiet default; rich for the CLI).

The replayer calls ``update`` about twice a second with a `ProgressSnapshot`; nothing
is printed by the replayer itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class TenantSnapshot:
    """One tenant's live figures: counts so far, the completion rate over the last few
    seconds, and the median latency of its recent successful requests (TTFT for streams,
    the whole request for embeddings; None before the first)."""

    tenant: str
    kind: str  # completion | chat | embedding
    sent: int
    done: int
    errors: int
    rate_rps: float
    p50_s: float | None
    window: int = 0  # requests due in the measurement window (planned)
    missed: int = 0  # of those, certain misses of the target's SLO so far (with an SLO)


@dataclass(frozen=True)
class ProgressSnapshot:
    elapsed_s: float
    total: int
    sent: int
    done: int
    errors: int
    in_flight: int
    dispatch_lag_s: float  # the largest lag since the last snapshot
    tenants: tuple[TenantSnapshot, ...] = ()


def tenant_line(t: TenantSnapshot) -> str:
    """``name  4.0 req/s  errors 0  TTFT p50 12.3 ms`` (rich markup)."""
    label = "latency" if t.kind == "embedding" else "TTFT"
    p50 = "-" if t.p50_s is None else f"{t.p50_s * 1e3:.1f} ms"
    err = f"[red]{t.errors}[/]" if t.errors else "0"
    return (f"[cyan]{t.tenant}[/] {t.rate_rps:6.1f} req/s  done {t.done}/{t.sent}  "
            f"errors {err}  {label} p50 {p50}")


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
        if len(s.tenants) > 1:
            line += "".join("\n  " + tenant_line(t) for t in s.tenants)
        self._live.update(line, refresh=True)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
