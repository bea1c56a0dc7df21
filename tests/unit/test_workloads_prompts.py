"""Prompts: exact lengths, no special tokens, different per request and per seed, prefixes."""

from __future__ import annotations

from pathlib import Path

import pytest

from workloads.prompts import PromptSource
from workloads.spec import PrefixSpec
from workloads.tokenizer import build_tiny_tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def test_token_ids_exact_and_not_special(tok_dir: Path) -> None:
    src = PromptSource(tok_dir, prompt_seed=0, tenant="a")
    specials = load_tokenizer(tok_dir).special_ids
    for n in (1, 7, 128, 1000):
        ids = src.token_ids(n)
        assert len(ids) == n
        assert not specials & set(ids)


@pytest.mark.parametrize("n", [1, 2, 5, 17, 64, 300])
def test_text_is_calibrated_to_the_token_count(tok_dir: Path, n: int) -> None:
    src = PromptSource(tok_dir, prompt_seed=3, tenant="a")
    tok = load_tokenizer(tok_dir)
    for _ in range(5):
        assert len(tok.encode(src.text(n))) == n


def test_prompts_differ_between_requests_and_seeds(tok_dir: Path) -> None:
    a = PromptSource(tok_dir, prompt_seed=0, tenant="a")
    first, second = a.token_ids(64), a.token_ids(64)
    assert first != second
    again = PromptSource(tok_dir, prompt_seed=0, tenant="a")
    assert again.token_ids(64) == first
    other_seed = PromptSource(tok_dir, prompt_seed=1, tenant="a")
    other_tenant = PromptSource(tok_dir, prompt_seed=0, tenant="b")
    assert other_seed.token_ids(64) != first and other_tenant.token_ids(64) != first


def test_shared_prefix(tok_dir: Path) -> None:
    src = PromptSource(tok_dir, prompt_seed=0, tenant="a", prefix=PrefixSpec(tokens=16, share=1.0))
    a, b = src.token_ids(40), src.token_ids(40)
    assert a[:16] == b[:16] and a[16:] != b[16:]
    assert len(src.token_ids(8)) == 8  # a prefix longer than the prompt is cut
    half = PromptSource(tok_dir, prompt_seed=0, tenant="a", prefix=PrefixSpec(tokens=16, share=0.5))
    head = src.token_ids(40)[:16]
    shared = sum(half.token_ids(40)[:16] == head for _ in range(400))
    assert 150 < shared < 250
    next_experiment = PromptSource(
        tok_dir, prompt_seed=9, tenant="a", prefix=PrefixSpec(tokens=16, share=1.0)
    )
    assert next_experiment.token_ids(40)[:16] != head


def test_without_tokenizer_words_roughly_tokens() -> None:
    src = PromptSource(None, prompt_seed=0, tenant="a")
    assert not src.exact
    text = src.text(50)
    assert len(text.split()) == 50
    with pytest.raises(ValueError):
        src.token_ids(5)
