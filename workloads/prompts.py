"""Prompts of exact lengths, different for every request and every experiment.

- ``/v1/completions`` with a tokenizer: a list of token ids, exactly ``n`` long, drawn
  from the tokenizer's vocabulary without its special tokens. The server takes the
  ids as they are, so the prompt is exactly ``n`` tokens.
- chat and the encoder, or no tokenizer: text. With a tokenizer, it is made of
  vocabulary entries that are one token each (" word"), then counted with the
  tokenizer and corrected until it is ``n`` tokens (the chat template adds the server's
  own tokens on top). Without a tokenizer, ``n`` common English words: about one token
  each in the usual BPE vocabularies, so the count is approximate.

Randomness is one numpy ``Generator`` from ``SeedSequence([prompt_seed, crc32(tenant)])``,
drawn in request order: the same seed gives the same prompts; a new ``prompt_seed`` (one
per experiment and repetition) gives new ones, so a server's prefix cache carries
nothing from one experiment to the next. A `PrefixSpec` makes a share of the requests
start with the same ``tokens`` tokens (one prefix per tenant and prompt seed).
"""

from __future__ import annotations

import functools
import zlib
from pathlib import Path

import numpy as np

from workloads.spec import PrefixSpec
from workloads.tokenizer import Tokenizer, load_tokenizer

# Common English words; each is one token in the usual BPE vocabularies (GPT-2, Llama).
_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "as",
    "with",
    "by",
    "at",
    "from",
    "that",
    "this",
    "are",
    "be",
    "or",
    "an",
    "it",
    "not",
    "have",
    "has",
    "had",
    "one",
    "all",
    "were",
    "we",
    "when",
    "there",
    "can",
    "more",
    "if",
    "out",
    "so",
    "up",
    "into",
    "time",
    "some",
    "its",
    "two",
    "may",
    "first",
    "then",
    "do",
    "any",
    "like",
    "my",
    "now",
    "over",
    "such",
    "our",
    "man",
    "me",
    "even",
    "most",
    "made",
    "after",
    "also",
    "did",
    "many",
    "off",
    "before",
    "must",
    "well",
    "back",
    "through",
    "years",
    "much",
    "where",
    "your",
    "way",
    "down",
    "should",
    "because",
    "long",
    "each",
    "just",
    "state",
    "people",
    "high",
    "very",
    "little",
    "world",
    "part",
    "while",
    "since",
    "new",
    "same",
    "great",
    "old",
    "year",
    "under",
    "last",
    "might",
    "both",
    "work",
    "never",
    "those",
    "being",
    "good",
    "life",
    "here",
    "still",
    "own",
    "small",
    "place",
    "three",
    "found",
    "home",
    "house",
    "water",
    "light",
    "sound",
    "day",
    "night",
    "city",
    "game",
    "music",
    "hand",
    "food",
    "power",
    "line",
    "land",
    "end",
    "point",
    "field",
    "book",
    "head",
]


@functools.lru_cache(maxsize=8)
def _one_token_words(tok: Tokenizer) -> tuple[str, ...]:
    """Vocabulary entries that decode to " word" and encode back to exactly one token."""
    rng = np.random.default_rng(0)
    ids = np.arange(tok.vocab_size)
    if ids.size > 30_000:
        ids = rng.choice(ids, 30_000, replace=False)
    words: list[str] = []
    for i in ids.tolist():
        if i in tok.special_ids:
            continue
        s = tok.decode([i])
        if len(s) > 2 and s[0] == " " and s[1:].isalpha() and s[1:].isascii():
            words.append(s)
    counts = tok.count_batch(words) if words else []
    good = tuple(w for w, c in zip(words, counts, strict=True) if c == 1)
    return good if len(good) >= 4 else tuple(" " + w for w in _WORDS)


@functools.lru_cache(maxsize=8)
def _vocab_ids(tok: Tokenizer) -> np.ndarray:
    ids = np.setdiff1d(np.arange(tok.vocab_size), np.fromiter(tok.special_ids, dtype=np.int64))
    return ids.astype(np.int64)


class PromptSource:
    """Prompts for one tenant; call in request order for reproducible prompts."""

    def __init__(
        self,
        tokenizer_path: str | Path | None,
        *,
        prompt_seed: int,
        tenant: str,
        prefix: PrefixSpec | None = None,
    ) -> None:
        self.tok = load_tokenizer(tokenizer_path) if tokenizer_path is not None else None
        entropy = [prompt_seed, zlib.crc32(tenant.encode())]
        self._rng = np.random.default_rng(np.random.SeedSequence(entropy))
        self._prefix = prefix or PrefixSpec()
        self._words = _one_token_words(self.tok) if self.tok else tuple(" " + w for w in _WORDS)
        self._word_arr = np.asarray(self._words, dtype=object)
        self._ids = _vocab_ids(self.tok) if self.tok else None
        prefix_rng = np.random.default_rng(np.random.SeedSequence([*entropy, 1]))
        n = self._prefix.tokens
        self._prefix_ids = (
            self._ids[prefix_rng.integers(0, self._ids.size, n)].tolist()
            if self._ids is not None
            else []
        )
        self._prefix_words = list(self._word_arr[prefix_rng.integers(0, len(self._words), n)])

    @property
    def exact(self) -> bool:
        """Whether lengths are exact (a tokenizer is known)."""
        return self.tok is not None

    def _shared(self) -> int:
        p = self._prefix
        if p.tokens and p.share and self._rng.random() < p.share:
            return p.tokens
        return 0

    def token_ids(self, n: int) -> list[int]:
        """Exactly ``n`` token ids (needs a tokenizer)."""
        if self._ids is None:
            raise ValueError("token ids need a tokenizer")
        k = min(self._shared(), n)
        rest = self._ids[self._rng.integers(0, self._ids.size, n - k)].tolist()
        return self._prefix_ids[:k] + rest if k else rest

    def text(self, n: int) -> str:
        """Text of ``n`` tokens (exact with a tokenizer, about ``n`` without)."""
        k = min(self._shared(), n)
        words = self._prefix_words[:k] + list(
            self._word_arr[self._rng.integers(0, len(self._words), n - k)]
        )
        if self.tok is None:
            return "".join(words).lstrip()
        return self._calibrate(words, n)

    def _calibrate(self, words: list[str], n: int) -> str:
        """Count with the tokenizer; cut by tokens when long, add words when short."""
        assert self.tok is not None
        text = "".join(words)
        for _ in range(10):
            ids = self.tok.encode(text)
            if len(ids) == n:
                break
            if len(ids) > n:
                text = self.tok.decode(ids[:n])
            else:
                extra = self._rng.integers(0, len(self._words), n - len(ids))
                text += "".join(self._word_arr[extra])
        return text
