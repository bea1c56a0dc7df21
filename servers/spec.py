"""Tenant specs: what one model server is (kind, model, memory share, port, engine args).

Strict pydantic models (``extra="forbid"``, frozen); ``kind`` picks the subtype.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator

from rundir.base import StrictModel as _Strict

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")


class _TenantBase(_Strict):
    name: Annotated[str, Field(description="Unique tenant name: lower case, digits, '-', '_', '.'")]
    model: Annotated[
        str,
        Field(
            description="A model preset (`cotenant presets`), a Hugging Face id, or a local folder"
        ),
    ]
    memory_share: Annotated[
        float | None,
        Field(
            gt=0,
            le=1,
            description="Pinned fraction of GPU memory (of host memory on the CPU); "
            "unset: the planner assigns one",
        ),
    ] = None
    port: Annotated[int | None, Field(ge=1, le=65535, description="Port; unset: a free one")] = None
    host: Annotated[str, Field(description="Address to bind")] = "127.0.0.1"
    env: Annotated[dict[str, str], Field(description="Extra environment variables")] = {}
    start_timeout_s: Annotated[float, Field(gt=0, description="Deadline to become healthy")] = 300.0

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(
                f"tenant name {v!r} must match {_NAME.pattern} (lower case, digits, '-', '_', '.')"
            )
        return v


class VllmTenant(_TenantBase):
    kind: Literal["vllm"] = "vllm"
    served_name: Annotated[str | None, Field(description="Name in the API; default: tenant name")] = None
    max_model_len: Annotated[int, Field(gt=0)] = 2048
    max_num_seqs: Annotated[int, Field(gt=0)] = 64
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    kv_cache_memory_bytes: Annotated[
        int | None, Field(gt=0, description="Fixed KV cache size (vLLM --kv-cache-memory-bytes)")
    ] = None
    enforce_eager: bool = False
    load_format: Annotated[
        str | None, Field(description="vLLM --load-format; presets of shape only imply 'dummy'")
    ] = None
    engine_args: Annotated[
        list[str], Field(description="Extra vLLM arguments, passed through untouched")
    ] = []
    api_key: Annotated[
        SecretStr | None,
        Field(description="Bearer key the tenant requires; written as '**********' in results"),
    ] = None

    @property
    def api_name(self) -> str:
        return self.served_name or self.name

    @property
    def key(self) -> str | None:
        """The API key's value (``api_key`` is a secret: dumps show it masked)."""
        return self.api_key.get_secret_value() if self.api_key else None


class EncoderTenant(_TenantBase):
    kind: Literal["encoder"] = "encoder"
    max_batch: Annotated[int, Field(gt=0, description="Largest micro-batch")] = 64
    batch_window_ms: Annotated[
        float, Field(ge=0, description="How long to wait for more requests to batch")
    ] = 5.0
    max_queue: Annotated[int, Field(gt=0, description="Queued items before 503")] = 4096
    max_items: Annotated[int, Field(gt=0, description="Items per request")] = 2048
    device: Annotated[str | None, Field(description="torch device; default: cuda if present")] = None
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    api_key: Annotated[
        SecretStr | None,
        Field(description="Bearer key the tenant requires; written as '**********' in results"),
    ] = None

    @property
    def api_name(self) -> str:
        return self.name

    @property
    def key(self) -> str | None:
        """The API key's value (``api_key`` is a secret: dumps show it masked)."""
        return self.api_key.get_secret_value() if self.api_key else None


TenantSpec = Annotated[VllmTenant | EncoderTenant, Field(discriminator="kind")]
