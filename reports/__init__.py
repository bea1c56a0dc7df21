"""Reports: read a run directory (docs/run-directory.md), write report.html, summary.md,
tables and figures.

Public API (imported lazily, so ``import reports.errors`` stays cheap):

* ``build_report(run_dir, out_dir=None) -> ReportPaths``
* ``summary_markdown(analysis_or_run_dir) -> str``
* ``compare_runs(run_a, run_b, out_dir) -> Path``
* ``analyze(run_dir) -> Analysis`` (every table, no files written)
* ``ReportError``
"""

from __future__ import annotations

from typing import Any

from reports.errors import ReportError

__all__ = [
    "Analysis",
    "ReportError",
    "ReportPaths",
    "analyze",
    "build_report",
    "compare_runs",
    "summary_markdown",
]

_LAZY = {
    "build_report": "reports.build",
    "ReportPaths": "reports.build",
    "summary_markdown": "reports.markdown",
    "compare_runs": "reports.compare",
    "analyze": "reports.analysis",
    "Analysis": "reports.analysis",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reports' has no attribute {name!r}")
