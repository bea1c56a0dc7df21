"""Reading a run directory (docs/run-directory.md): campaign.json, the manifests, the files.

Only this module knows where things lie in a run directory; the reports get a ``RunDir``
with the experiments split into those that completed (and have their requests) and those
that did not (failed, interrupted, still running, never started or broken), each with a
reason a person can act on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rundir.envelope import load_campaign, load_manifest
from rundir.errors import RunDirError
from rundir.ids import ExperimentId


@dataclass(frozen=True)
class ExperimentRecord:
    """One experiment as its manifest describes it."""

    id: str
    dir: Path
    manifest: dict[str, Any]
    status: str  # completed | failed | interrupted | running | missing | broken
    reason: str | None

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(self.manifest.get("active") or ())

    @property
    def resident(self) -> tuple[str, ...]:
        return tuple(self.manifest.get("resident") or ())

    @property
    def repetition(self) -> int:
        return int(self.manifest.get("repetition") or 0)

    @property
    def rate_scale(self) -> float:
        return float(self.manifest.get("rate_scale") or 1.0)

    @property
    def warmup_s(self) -> float:
        return float(self.manifest.get("warmup_s") or 0.0)

    @property
    def duration_s(self) -> float:
        return float(self.manifest.get("duration_s") or 0.0)

    @property
    def window(self) -> tuple[float, float]:
        """The measurement window [start, end) in seconds from the experiment's zero."""
        return self.warmup_s, self.warmup_s + self.duration_s

    @property
    def group_id(self) -> str:
        """The id without its repetition: experiments that differ only by repetition share it."""
        return ExperimentId.parse(self.id).group_id

    @property
    def tenants(self) -> dict[str, dict[str, Any]]:
        return dict(self.manifest.get("tenants") or {})

    @property
    def slo(self) -> dict[str, dict[str, Any]]:
        return dict(self.manifest.get("slo") or {})

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def file(self, name: str) -> Path:
        return self.dir / name


@dataclass(frozen=True)
class RunDir:
    path: Path
    campaign: dict[str, Any]
    experiments: list[ExperimentRecord] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.campaign.get("name") or self.path.name)

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.campaign.get("spec") or {})

    @property
    def completed(self) -> list[ExperimentRecord]:
        return [e for e in self.experiments if e.completed]

    @property
    def not_completed(self) -> list[ExperimentRecord]:
        return [e for e in self.experiments if not e.completed]

    @property
    def tenant_names(self) -> list[str]:
        """Tenants in spec order (then any a manifest names that the spec does not)."""
        names = [t.get("name") for t in self.spec.get("tenants") or [] if t.get("name")]
        for e in self.experiments:
            for n in list(e.resident) + list(e.active) + list(e.tenants):
                if n not in names:
                    names.append(n)
        return [str(n) for n in names]

    def tenant_info(self, name: str) -> dict[str, Any]:
        """Kind, model, ... of a tenant: from a manifest, else from the spec."""
        for e in self.completed + self.not_completed:
            if name in e.tenants:
                return dict(e.tenants[name])
        for t in self.spec.get("tenants") or []:
            if t.get("name") == name:
                return dict(t)
        return {}

    def tenant_kind(self, name: str) -> str:
        return str(self.tenant_info(name).get("kind") or "vllm")

    @property
    def residency(self) -> str:
        return str((self.spec.get("experiment") or {}).get("residency") or "shared")

    @property
    def sharing(self) -> str:
        for e in self.experiments:
            if e.manifest.get("sharing"):
                return str(e.manifest["sharing"])
        return str((self.spec.get("sharing") or {}).get("mode") or "time-slice")

    @property
    def gpu(self) -> dict[str, Any] | None:
        g = self.campaign.get("gpu")
        if g:
            return dict(g)
        for e in self.experiments:
            if e.manifest.get("gpu"):
                return dict(e.manifest["gpu"])
        return None

    def files(self, name: str) -> list[Path]:
        """``name`` of every completed experiment that has it."""
        return [e.file(name) for e in self.completed if e.file(name).is_file()]


def load_run(run_dir: str | Path) -> RunDir:
    """Read campaign.json and every manifest; raise ``RunDirError`` naming what is wrong."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"{path}: no such run directory")
    cpath = path / "campaign.json"
    if not cpath.is_file():
        raise RunDirError(
            f"{path}: not a run directory (no campaign.json); "
            "`cotenant run SPEC` writes one under runs/<campaign>/"
        )
    campaign = load_campaign(cpath)

    planned = [str(x) for x in campaign.get("experiments") or []]
    on_disk = sorted(p.parent.name for p in path.glob("*/manifest.json"))
    order = planned + [x for x in on_disk if x not in planned]
    experiments: list[ExperimentRecord] = []
    for eid in order:
        edir = path / eid
        try:
            ExperimentId.parse(eid)
        except RunDirError as e:
            raise RunDirError(f"{edir}: {e}") from None
        mpath = edir / "manifest.json"
        if not mpath.is_file():
            experiments.append(ExperimentRecord(eid, edir, {"experiment_id": eid}, "missing",
                                                "not run (no manifest.json)"))
            continue
        m = load_manifest(mpath)
        status = str(m.get("status") or "running")
        reason = m.get("reason")
        if status == "completed" and not (edir / "requests.parquet").is_file():
            status, reason = "broken", "completed, but requests.parquet is missing"
        elif status == "running":
            reason = reason or "still running, or the run stopped without marking it"
        experiments.append(
            ExperimentRecord(eid, edir, m, status, None if reason is None else str(reason)))
    return RunDir(path, campaign, experiments)
