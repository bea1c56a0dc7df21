"""Tokenizers from a local folder: what the prompt synthesiser and the importers count with.

A folder with ``tokenizer.json`` is read by the `tokenizers` library (fast, no
transformers import); any other folder goes through ``transformers.AutoTokenizer``.
Nothing is downloaded.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from workloads.errors import TokenizerError


class Tokenizer:
    """The few operations cotenant needs, over either library."""

    def __init__(self, path: Path, backend: Any, kind: str) -> None:
        self.path = path
        self._b = backend
        self._kind = kind
        if kind == "tokenizers":
            self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
            added = backend.get_added_tokens_decoder()
            self.special_ids: frozenset[int] = frozenset(i for i, t in added.items() if t.special)
        else:
            self.vocab_size = len(backend)
            self.special_ids = frozenset(backend.all_special_ids)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (no BOS/EOS, no [CLS]/[SEP])."""
        if self._kind == "tokenizers":
            return list(self._b.encode(text, add_special_tokens=False).ids)
        return list(self._b.encode(text, add_special_tokens=False))

    def count_batch(self, texts: list[str]) -> list[int]:
        if self._kind == "tokenizers":
            return [len(e.ids) for e in self._b.encode_batch(texts, add_special_tokens=False)]
        return [len(self._b.encode(t, add_special_tokens=False)) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return str(self._b.decode(ids, skip_special_tokens=True))


@functools.lru_cache(maxsize=8)
def load_tokenizer(folder: str | Path) -> Tokenizer:
    """Load the tokenizer of a model folder (or a ``tokenizer.json`` file) once per process."""
    path = Path(folder).expanduser()
    file = path if path.is_file() else path / "tokenizer.json"
    if file.is_file():
        try:
            from tokenizers import Tokenizer as _Fast

            return Tokenizer(path, _Fast.from_file(str(file)), "tokenizers")
        except Exception as e:  # the library raises a bare Exception on a broken file
            raise TokenizerError(f"{file}: cannot load the tokenizer: {e}") from None
    if not path.is_dir():
        raise TokenizerError(f"{path}: no such tokenizer folder")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # transformers raises many kinds
        raise TokenizerError(f"{path}: cannot load a tokenizer: {e}") from None
    return Tokenizer(path, tok, "transformers")


def build_tiny_tokenizer(folder: str | Path, *, vocab_size: int = 512) -> Path:
    """Train a small byte-level BPE tokenizer in-process and save it as a model folder's
    ``tokenizer.json`` + ``tokenizer_config.json`` (for tests and benchmarks; no download)."""
    import json

    from tokenizers import Tokenizer as _Fast
    from tokenizers import decoders, models, pre_tokenizers, trainers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = _Fast(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "while",
        "people",
        "walk",
        "home",
        "at",
        "night",
    ]
    corpus = [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(400)]
    tok.train_from_iterator(corpus, trainer)
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 4096,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder
