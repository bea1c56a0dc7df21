"""What every tenant's process gets, vLLM and encoder alike: cotenant's environment
variables, the repository on ``PYTHONPATH``, an offline Hugging Face hub for local folders,
and the memory share as a command-line number."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from servers.presets import ResolvedModel

REPO_ROOT = Path(__file__).resolve().parent.parent

COMMON_ENV = {
    "PYTHONUNBUFFERED": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def _is_local(resolved: ResolvedModel) -> bool:
    return Path(resolved.path).is_dir()


def base_env(resolved: ResolvedModel, extra_env: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    # legacy knob that silently overrides --kv-cache-memory-bytes; only a tenant may set it
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    env.update(COMMON_ENV)
    if _is_local(resolved):
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
    pp = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + pp if pp else "")
    if extra_env:
        env.update(extra_env)
    return env


def share_arg(share: float) -> str:
    if not 0 < share <= 1:
        raise ValueError(f"memory share must be in (0, 1], got {share}")
    return f"{share:.4f}".rstrip("0").rstrip(".")
