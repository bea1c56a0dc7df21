"""The orchestrator's errors, and the set of errors the CLI shows as one clean message.

Each package owns the root of its own errors (``ServerError``, ``WorkloadError``,
``ReportError``) so that the package borders hold; ``USER_ERRORS`` gathers them for
the CLI, which turns any of them into one line and a non-zero exit code.
"""

from __future__ import annotations

from reports.errors import ReportError
from servers.errors import ServerError
from workloads.errors import WorkloadError


class OrchestratorError(Exception):
    """Root of the orchestrator's errors."""


class SpecError(OrchestratorError):
    """A campaign spec that cannot be used; the message names the file and field."""


class PlanError(OrchestratorError):
    """The memory planner refuses the tenants (over-commit), with its table."""


class CampaignError(OrchestratorError):
    """A campaign cannot go on (a broken run directory, a resume that does not match)."""


USER_ERRORS: tuple[type[Exception], ...] = (
    OrchestratorError,
    ServerError,
    WorkloadError,
    ReportError,
)
