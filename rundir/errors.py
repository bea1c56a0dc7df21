"""The one error root, and the run directory's own errors.

``CotenantError`` is the root of every error a person can act on; each package derives its
own root from it (``ServerError``, ``WorkloadError``, ``ReportError``,
``OrchestratorError``, and ``RunDirError`` here), and the CLI turns any of them into one
line and a non-zero exit code. Nothing is imported here, so the CLI's start stays instant.
"""

from __future__ import annotations


class CotenantError(Exception):
    """Root of cotenant's errors: the CLI shows any of them as one clean message."""


class RunDirError(CotenantError):
    """A run directory (or one of its files) that breaks the contract: unreadable JSON, an
    unknown schema version, an envelope that does not validate, an id that does not parse.
    The message names the file."""
