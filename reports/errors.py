"""Errors of the reports."""

from __future__ import annotations

from rundir.errors import CotenantError


class ReportError(CotenantError):
    """Root of the report errors (nothing completed to report on, a result file that cannot be
    read); a run directory that breaks the contract is a ``rundir.errors.RunDirError``."""
