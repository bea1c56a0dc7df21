"""What every package shares: the one strict pydantic base and the one error root.

``StrictModel`` is the base of the specs (campaign, tenants, workloads) and of the run
directory's envelopes: a misspelled key is an error, not a silently ignored one.
``CotenantError`` is the root of every error a person can act on; each package derives its
own root from it (``ServerError``, ``WorkloadError``, ``ReportError``,
``OrchestratorError``, and ``RunDirError`` here), and the CLI turns any of them into one
line and a non-zero exit code.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CotenantError(Exception):
    """Root of cotenant's errors: the CLI shows any of them as one clean message."""


class RunDirError(CotenantError):
    """A run directory (or one of its files) that breaks the contract: unreadable JSON, an
    unknown schema version, an envelope that does not validate, an id that does not parse.
    The message names the file."""
