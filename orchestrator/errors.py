"""The orchestrator's errors.

Each package owns the root of its own errors (``ServerError``, ``WorkloadError``,
``ReportError``, ``OrchestratorError``, and ``RunDirError`` for the run directory) so that
the package borders hold; all derive from ``rundir.errors.CotenantError``, which the CLI
turns into one line and a non-zero exit code.
"""

from __future__ import annotations

from rundir.errors import CotenantError


class OrchestratorError(CotenantError):
    """Root of the orchestrator's errors."""


class SpecError(OrchestratorError):
    """A campaign spec that cannot be used; the message names the file and field."""


class PlanError(OrchestratorError):
    """The memory planner refuses the tenants (over-commit), with its table."""


class CampaignError(OrchestratorError):
    """A campaign cannot go on (a run directory in the way, a resume that does not match, a
    full disk); a run directory that breaks the contract is a ``rundir.errors.RunDirError``."""
