"""What a preset is made of: tokenizer recipes, chat templates and the Hugging Face
``config.json`` of each shape (the real public configs of the shape-only decoders).

``DecoderPreset`` and ``EncoderPreset`` are the catalog's entries (``catalog.py`` lists
them); ``build.py`` turns one into a model folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

DEFAULT_SEED = 0

PresetKind = Literal["vllm", "encoder"]
Weights = Literal["built", "dummy", "real", "random-init"]


@dataclass(frozen=True)
class TokenizerRecipe:
    vocab_size: int  # ids 0..vocab_size-1 of the tokenizer (specials included)
    specials: tuple[str, ...]  # the last ids, in order
    bos: str | None
    eos: str
    pad: str | None
    add_bos: bool
    chat_template: str
    trained_size: int  # BPE vocabulary to train; the rest up to the specials is filler
    model_max_length: int


@dataclass(frozen=True)
class DecoderPreset:
    name: str
    description: str
    config: dict[str, Any]
    tokenizer: TokenizerRecipe
    weights: Literal["built", "dummy"]

    @property
    def kind(self) -> PresetKind:
        return "vllm"


@dataclass(frozen=True)
class EncoderPreset:
    name: str
    description: str
    config: dict[str, Any] | None  # None: a real model folder from a package
    max_seq_length: int

    @property
    def kind(self) -> PresetKind:
        return "encoder"

    @property
    def weights(self) -> Weights:
        return "real" if self.config is None else "random-init"


_TINY_CHAT = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
_LLAMA3_CHAT = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
    "'<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
_CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)


def tiny_tokenizer(max_len: int) -> TokenizerRecipe:
    return TokenizerRecipe(
        vocab_size=512,
        specials=("<s>", "</s>"),
        bos="<s>",
        eos="</s>",
        pad="</s>",
        add_bos=True,
        chat_template=_TINY_CHAT,
        trained_size=510,
        model_max_length=max_len,
    )


def llama3_tokenizer() -> TokenizerRecipe:
    named = {
        0: "<|begin_of_text|>",
        1: "<|end_of_text|>",
        6: "<|start_header_id|>",
        7: "<|end_header_id|>",
        9: "<|eot_id|>",
    }
    specials = tuple(named.get(i, f"<|reserved_special_token_{i}|>") for i in range(256))
    return TokenizerRecipe(
        vocab_size=128256,
        specials=specials,
        bos="<|begin_of_text|>",
        eos="<|end_of_text|>",
        pad=None,
        add_bos=True,
        chat_template=_LLAMA3_CHAT,
        trained_size=8192,
        model_max_length=131072,
    )


def qwen2_tokenizer() -> TokenizerRecipe:
    named = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    specials = tuple(named + [f"<|reserved_special_token_{i}|>" for i in range(3, 22)])
    return TokenizerRecipe(
        vocab_size=151665,  # as the real Qwen2.5 tokenizer; the config pads to 151936/152064
        specials=specials,
        bos=None,
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        add_bos=False,
        chat_template=_CHATML,
        trained_size=8192,
        model_max_length=131072,
    )


def tiny_llama_config(
    *, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int
) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": 512,
        "bos_token_id": 510,
        "eos_token_id": 511,
        "pad_token_id": 511,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.46.0",
        "use_cache": True,
    }


def llama3_config(
    *,
    hidden: int,
    inter: int,
    layers: int,
    heads: int,
    kv: int,
    factor: float,
    tie: bool,
    tf_version: str,
) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "head_dim": hidden // heads,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": inter,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": factor,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": tie,
        "torch_dtype": "bfloat16",
        "transformers_version": tf_version,
        "use_cache": True,
        "vocab_size": 128256,
    }


def qwen2_config(
    *,
    hidden: int,
    inter: int,
    layers: int,
    heads: int,
    kv: int,
    max_pos: int,
    vocab: int,
    tie: bool,
    tf_version: str,
) -> dict[str, Any]:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": inter,
        "max_position_embeddings": max_pos,
        "max_window_layers": layers,
        "model_type": "qwen2",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": max_pos,
        "tie_word_embeddings": tie,
        "torch_dtype": "bfloat16",
        "transformers_version": tf_version,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab,
    }


def bert_config(*, hidden: int, layers: int, heads: int, inter: int) -> dict[str, Any]:
    return {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": inter,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "type_vocab_size": 2,
        "use_cache": True,
        "vocab_size": 30522,
    }
