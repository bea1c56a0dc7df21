"""Errors of traces, importers and the replayer."""

from __future__ import annotations

from pathlib import Path

from rundir.errors import CotenantError


class WorkloadError(CotenantError):
    """Root of the workload errors."""


class TraceFormatError(WorkloadError):
    """A trace file that cannot be read; names the file, the line and the column."""

    def __init__(
        self,
        path: str | Path,
        message: str,
        *,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.column = column
        where = self.path
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {message}")


class TokenizerError(WorkloadError):
    """A tokenizer folder that cannot be used."""


class ReplayError(WorkloadError):
    """A replay that cannot start: targets that do not match the trace, an output folder in use."""
