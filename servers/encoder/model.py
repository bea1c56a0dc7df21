"""The encoder model behind the server: token ids in, normalised sentence embeddings out.

Two loaders, one interface (``EncoderModel``):

* a sentence-transformers folder with weights (all-MiniLM-L6-v2): ``SentenceTransformer``
  runs the forward pass, so its modules (pooling, normalisation, dense layers) are the
  model's own;
* a shape-only folder (``--random-weights``): a transformers ``AutoModel`` built from
  ``config.json`` with seeded random weights, mean pooling and L2 normalisation, as the
  folder's ``modules.json`` describes. No weight file is needed.

Tokenisation uses a private copy of the fast tokenizer with truncation and padding off,
so it only reads shared state and is safe to call from its own thread.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

log = logging.getLogger("servers.encoder")


class EncoderModel(Protocol):
    """What the server needs from a model."""

    max_seq_length: int  # longest item, in tokens (special tokens included)
    dim: int
    vocab_size: int
    device: str
    dtype: str

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids with the model's special tokens, untruncated."""
        ...

    def embed(self, batch: list[list[int]]) -> np.ndarray:
        """float32 array [len(batch), dim] for token-id sequences."""
        ...


def pick_device(device: str | None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]


class _Tokenizer:
    """Fast tokenizer, untruncated, unpadded, with its special tokens."""

    def __init__(self, hf_tokenizer: Any) -> None:
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        self._hf = hf_tokenizer
        self._lock = threading.Lock()
        if backend is not None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(backend.to_str())
            tok.no_truncation()
            tok.no_padding()
            self._fast: Any = tok
        else:
            self._fast = None
        pad = getattr(hf_tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        self.vocab_size = len(hf_tokenizer)
        names = getattr(hf_tokenizer, "model_input_names", None) or []
        self.wants_token_type_ids = "token_type_ids" in names

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if self._fast is not None:
            return [list(e.ids) for e in self._fast.encode_batch(texts, add_special_tokens=True)]
        with self._lock:  # slow tokenizers keep state: one caller at a time
            out = self._hf(texts, add_special_tokens=True, truncation=False)["input_ids"]
            return [list(x) for x in out]


class _TorchEncoder:
    """Shared by both loaders: padding, the forward pass, the output array."""

    def __init__(
        self,
        forward: Any,
        tokenizer: _Tokenizer,
        *,
        max_seq_length: int,
        dim: int,
        device: str,
        dtype: str,
    ) -> None:
        self._forward = forward
        self._tok = tokenizer
        self.max_seq_length = max_seq_length
        self.dim = dim
        self.vocab_size = tokenizer.vocab_size
        self.device = device
        self.dtype = dtype

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self._tok(texts)

    def features(self, batch: list[list[int]]) -> dict[str, Any]:
        import torch

        n = len(batch)
        width = max(len(x) for x in batch)
        ids = torch.full((n, width), self._tok.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, x in enumerate(batch):
            ids[i, : len(x)] = torch.as_tensor(x, dtype=torch.long)
            mask[i, : len(x)] = 1
        feats = {"input_ids": ids, "attention_mask": mask}
        if self._tok.wants_token_type_ids:
            feats["token_type_ids"] = torch.zeros_like(ids)
        return {k: v.to(self.device, non_blocking=True) for k, v in feats.items()}

    def embed(self, batch: list[list[int]]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self._forward(self.features(batch))
            return np.ascontiguousarray(out.float().cpu().numpy(), dtype=np.float32)


def _read_json(path: Path) -> dict[str, Any]:
    with open(path) as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


def load_sentence_transformer(path: str, device: str, dtype: str) -> _TorchEncoder:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(path), device=device)
    td = _torch_dtype(dtype, device)
    st = st.to(td)
    st.eval()

    def forward(features: dict[str, Any]) -> Any:
        return st(features)["sentence_embedding"]

    dim_fn = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
    dim, max_len = dim_fn(), st.max_seq_length
    if dim is None or max_len is None:
        raise ValueError(f"{path}: the model does not say its dimension or max_seq_length")
    return _TorchEncoder(
        forward,
        _Tokenizer(st.tokenizer),
        max_seq_length=int(max_len),
        dim=int(dim),
        device=device,
        dtype=str(td).replace("torch.", ""),
    )


def load_random_bert(path: str, device: str, dtype: str, seed: int = 0) -> _TorchEncoder:
    """A BERT-like encoder from ``config.json`` with seeded random weights, mean pooling and
    L2 normalisation (what the shape presets' sentence-transformers layout says)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder = Path(path)
    config = AutoConfig.from_pretrained(str(folder))
    td = _torch_dtype(dtype, device)
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    model = model.to(device=device, dtype=td).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    sbert = folder / "sentence_bert_config.json"
    declared = _read_json(sbert).get("max_seq_length") if sbert.is_file() else None
    max_len = int(declared or getattr(config, "max_position_embeddings", None) or 512)

    def forward(features: dict[str, Any]) -> Any:
        hidden = model(**features).last_hidden_state
        mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    return _TorchEncoder(
        forward,
        _Tokenizer(tokenizer),
        max_seq_length=max_len,
        dim=int(config.hidden_size),
        device=device,
        dtype=str(td).replace("torch.", ""),
    )


def load_encoder(
    path: str,
    *,
    device: str | None = None,
    dtype: str = "auto",
    random_weights: bool = False,
    seed: int = 0,
) -> _TorchEncoder:
    dev = pick_device(device)
    if random_weights:
        return load_random_bert(path, dev, dtype, seed)
    return load_sentence_transformer(path, dev, dtype)


def limit_cuda_memory(share: float, device: str) -> bool:
    """``torch.cuda.set_per_process_memory_fraction(share)`` on a CUDA device; False on CPU."""
    import torch

    if not device.startswith("cuda"):
        return False
    dev = torch.device(device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    torch.cuda.set_per_process_memory_fraction(share, index)
    return True


# torch.cuda.memory_stats() keys: cudaMalloc / cudaFree calls, and how often an allocation
# found the cache full (at the share's cap) and freed every cached block to retry
CUDA_ALLOCATOR_STATS = {
    "num_alloc_retries": "Allocations that freed the whole cache and retried (the share's cap)",
    "num_device_alloc": "cudaMalloc calls by the caching allocator",
    "num_device_free": "cudaFree calls by the caching allocator",
    "reserved_bytes.all.current": "Bytes the caching allocator holds",
}


def cuda_allocator_stats(device: str) -> dict[str, float] | None:
    """The caching allocator's ``CUDA_ALLOCATOR_STATS`` on a CUDA device; None elsewhere.
    Cumulative counts: their growth per batch tells an allocator that churns under the
    memory share's cap (each cudaFree synchronises the device) from one that reuses."""
    if not device.startswith("cuda"):
        return None
    import torch

    stats = torch.cuda.memory_stats(torch.device(device))
    return {k: float(stats.get(k, 0)) for k in CUDA_ALLOCATOR_STATS}


def warm_up(model: EncoderModel, *, max_batch: int, full: bool) -> None:
    """One forward pass: a short item, or with ``full`` the largest batch of the longest
    items (so the CUDA allocator holds its peak from the start)."""
    if full:
        n, length = max_batch, model.max_seq_length
    else:
        n, length = min(max_batch, 8), min(model.max_seq_length, 16)
    model.embed([[1] * length for _ in range(n)])
