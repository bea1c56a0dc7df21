"""Building a preset's folder: a trained tokenizer, random weights, the encoder layout.

Everything is seeded (the corpus, the BPE and WordPiece training, the weights), so every
build of a recipe is byte-identical; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from servers.errors import PresetError
from servers.presets.catalog import read_json, real_encoder_path
from servers.presets.recipes import DEFAULT_SEED, DecoderPreset, EncoderPreset, TokenizerRecipe


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


def corpus_digest() -> str:
    """A short hash of the corpus' words: part of every recipe hash (a new corpus rebuilds)."""
    return hashlib.sha256((" ".join(_WORDS + _PUNCT)).encode()).hexdigest()[:16]


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


def _build_tokenizer(folder: Path, recipe: TokenizerRecipe, seed: int = DEFAULT_SEED) -> None:
    """Train a byte-level BPE in-process and save it as a Hugging Face tokenizer folder.

    Ids ``0..n-1`` are the trained vocabulary (the 256 byte symbols first, then merges),
    then filler tokens (never produced by encoding, decodable) up to the special tokens,
    which take the last ids, as in Llama 3 and Qwen2.5.
    """
    from tokenizers import Tokenizer, processors

    first_special = recipe.vocab_size - len(recipe.specials)
    data = _train_bpe(min(recipe.trained_size, first_special), seed)
    _fill_to_specials(data, first_special, recipe.specials)
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
    _write_tokenizer_config(folder, recipe)


def _train_bpe(vocab_size: int, seed: int) -> dict[str, Any]:
    """A byte-level BPE of ``vocab_size`` ids trained on the corpus, as tokenizer.json data."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(_corpus(seed, 20000), trainer=trainer)
    data: dict[str, Any] = json.loads(tok.to_str())
    return data


def _fill_to_specials(data: dict[str, Any], first_special: int, specials: tuple[str, ...]) -> None:
    """Filler tokens after the trained ids up to ``first_special``, then the special tokens."""
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
        for k, s in enumerate(specials)
    ]


def _write_tokenizer_config(folder: Path, recipe: TokenizerRecipe) -> None:
    """tokenizer_config.json (with the chat template) and special_tokens_map.json."""
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


def build_decoder(p: DecoderPreset, folder: Path) -> None:
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


def minilm_folder() -> Path | None:
    """The all-MiniLM-L6-v2 folder when its package is installed (not on the GPU machine)."""
    try:
        return real_encoder_path("all-minilm-l6-v2")
    except PresetError:
        return None


def encoder_tokenizer_source() -> str:
    return "minilm" if minilm_folder() is not None else "synthetic-wordpiece"


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


def build_shape_encoder(p: EncoderPreset, folder: Path) -> None:
    """config.json, a tokenizer and the sentence-transformers layout (mean pooling, L2
    normalisation), no weights. The tokenizer is all-MiniLM-L6-v2's (bert-base-uncased
    vocabulary) when its package is installed, else a synthetic WordPiece of the same size
    and special ids (the GPU machine has no such package)."""
    assert p.config is not None
    src = minilm_folder()
    if src is not None:
        for f in _MINILM_TOKENIZER_FILES:
            if (src / f).is_file():
                shutil.copyfile(src / f, folder / f)
        tok_cfg = read_json(folder / "tokenizer_config.json")
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
