"""Errors of the tenants (server processes, presets, the encoder)."""

from __future__ import annotations

from rundir.errors import CotenantError


class ServerError(CotenantError):
    """Root of the server errors."""


class ServerStartError(ServerError):
    """A tenant did not become healthy: it exited early or missed its deadline.

    The message quotes the last lines of the tenant's log.
    """


class ServerDiedError(ServerError):
    """A tenant that was healthy is gone (killed, crashed)."""


class PresetError(ServerError):
    """An unknown model preset, or a model folder that cannot be built or read."""


class PortInUseError(ServerError):
    """The port asked for is taken by another process."""
