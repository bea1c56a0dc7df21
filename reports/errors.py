"""Errors of the reports."""

from __future__ import annotations


class ReportError(Exception):
    """Root of the report errors (a run directory that cannot be read, an unknown schema)."""
