"""The run directory (docs/run-directory.md): campaign.json, manifests, statuses. All atomic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.envelope import SCHEMA_VERSION, utc_now
from orchestrator.errors import CampaignError
from workloads.fileio import atomic_write_json, read_json

STATUSES = ("running", "completed", "failed", "interrupted")


def experiment_status(exp_dir: Path) -> str | None:
    m = exp_dir / "manifest.json"
    if not m.exists():
        return None
    try:
        return str(read_json(m).get("status"))
    except (OSError, json.JSONDecodeError):
        return None


class Manifest:
    """One experiment's manifest.json, rewritten whole at each change of status."""

    def __init__(self, exp_dir: Path, data: dict[str, Any]) -> None:
        self.path = exp_dir / "manifest.json"
        self.data = {"schema_version": SCHEMA_VERSION, **data}

    def update(self, **kw: Any) -> None:
        self.data.update(kw)
        atomic_write_json(self.path, self.data)

    def start(self) -> None:
        self.update(status="running", started_at=utc_now(), reason=None)

    def finish(self, status: str, reason: str | None = None, **kw: Any) -> None:
        assert status in STATUSES
        self.update(status=status, reason=reason, ended_at=utc_now(), **kw)


def write_campaign(run_dir: Path, data: dict[str, Any]) -> None:
    atomic_write_json(run_dir / "campaign.json", {"schema_version": SCHEMA_VERSION, **data})


def read_campaign(run_dir: Path) -> dict[str, Any] | None:
    p = run_dir / "campaign.json"
    if not p.exists():
        return None
    try:
        data = read_json(p)
    except (OSError, json.JSONDecodeError) as e:
        raise CampaignError(f"{p}: unreadable ({e})") from None
    if data.get("schema_version") != SCHEMA_VERSION:
        raise CampaignError(
            f"{p}: schema_version {data.get('schema_version')!r}, this cotenant reads {SCHEMA_VERSION}"
        )
    return dict(data)


def tail(path: Path, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
