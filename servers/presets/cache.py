"""Where built presets live, and building one safely: the stamp, the lock, the swap.

Built folders live in ``$COTENANT_CACHE/models/<name>`` (default
``~/.cache/cotenant/models/<name>``, honouring ``XDG_CACHE_HOME``). A folder is built in a
temporary folder beside it and renamed into place under a file lock, so a crash or two
concurrent builders never leave a half-built model; a stamp file records the recipe hash
and a changed recipe rebuilds. ``resolve_model`` turns a tenant's ``model`` into a folder,
building a preset on first use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from servers.errors import PresetError
from servers.presets.build import (
    build_decoder,
    build_shape_encoder,
    corpus_digest,
    encoder_tokenizer_source,
)
from servers.presets.catalog import PRESETS, get_preset, preset_info, read_json, real_encoder_path
from servers.presets.recipes import DEFAULT_SEED, DecoderPreset, EncoderPreset
from servers.spec import EncoderTenant, VllmTenant

RECIPE_VERSION = 1
STAMP_FILE = "cotenant-preset.json"


@dataclass(frozen=True)
class ResolvedModel:
    """What a tenant's ``model`` string means on this machine."""

    path: str
    tokenizer_path: str | None
    random_weights: bool
    load_format: str | None  # "dummy" for shape-only decoders, else None
    preset: str | None


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


def preset_path(name: str) -> Path:
    """Where a built preset lives (whether or not it is built yet)."""
    p = get_preset(name)
    if isinstance(p, EncoderPreset) and p.config is None:
        return real_encoder_path(p.name)
    return models_dir() / name


def is_built(name: str) -> bool:
    p = get_preset(name)
    if isinstance(p, EncoderPreset) and p.config is None:
        return True
    return _stamp_ok(models_dir() / name, p)


def build_preset(name: str, *, force: bool = False) -> Path:
    """Build a preset's folder if it is missing or stale; return its path."""
    p = get_preset(name)
    if isinstance(p, EncoderPreset) and p.config is None:
        return real_encoder_path(p.name)
    final = models_dir() / name
    if not force and _stamp_ok(final, p):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _lock(final.parent / f".{name}.lock"):
        if not force and _stamp_ok(final, p):  # another builder finished meanwhile
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.build-", dir=final.parent))
        try:
            if isinstance(p, DecoderPreset):
                build_decoder(p, tmp)
            else:
                build_shape_encoder(p, tmp)
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
    if model in PRESETS:
        p = PRESETS[model]
        if p.kind != tenant.kind:
            raise PresetError(
                f"tenant {tenant.name}: preset {model!r} is a {p.kind} model, the tenant is "
                f"kind {tenant.kind!r}; {tenant.kind} presets: "
                + ", ".join(n for n, q in PRESETS.items() if q.kind == tenant.kind)
            )
        path = str(build_preset(model))
        info = preset_info(model)
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
        f"(org/name). Presets: {', '.join(PRESETS)}"
    )


_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _looks_like_hf_id(s: str) -> bool:
    return bool(_HF_ID.match(s)) and not s.startswith(("./", "../"))


def _recipe_hash(p: DecoderPreset | EncoderPreset) -> str:
    recipe = {
        "version": RECIPE_VERSION,
        "name": p.name,
        "config": p.config,
        "tokenizer": dataclasses.asdict(p.tokenizer) if isinstance(p, DecoderPreset) else None,
        "weights": p.weights,
        "seed": DEFAULT_SEED,
        "max_seq_length": p.max_seq_length if isinstance(p, EncoderPreset) else None,
        "encoder_tokenizer": encoder_tokenizer_source() if isinstance(p, EncoderPreset) else None,
        "corpus": corpus_digest(),
    }
    blob = json.dumps(recipe, sort_keys=True, default=list).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _stamp_ok(folder: Path, p: DecoderPreset | EncoderPreset) -> bool:
    stamp = folder / STAMP_FILE
    if not stamp.is_file():
        return False
    try:
        return bool(read_json(stamp).get("recipe_hash") == _recipe_hash(p))
    except (OSError, ValueError, PresetError):
        return False


def _write_stamp(folder: Path, p: DecoderPreset | EncoderPreset) -> None:
    stamp = {
        "preset": p.name,
        "kind": p.kind,
        "recipe_version": RECIPE_VERSION,
        "recipe_hash": _recipe_hash(p),
        "random_weights": p.weights != "real",
        "weights": p.weights,
        "seed": DEFAULT_SEED,
        "tokenizer": encoder_tokenizer_source() if isinstance(p, EncoderPreset) else "trained-bpe",
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": "token ids are synthetic: the tokenizer was trained locally, not the model's own"
        if isinstance(p, DecoderPreset) and p.weights == "dummy"
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
