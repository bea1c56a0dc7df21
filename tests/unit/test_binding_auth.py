"""Binding and auth: tenants listen on 127.0.0.1 unless a spec says otherwise, and an API key
reaches the server through its environment (never the process table, never inherited)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.spec import load_spec
from servers import launch, vllm
from servers.launch import encoder_argv_env, launch_tenant
from servers.presets import ResolvedModel
from servers.spec import EncoderTenant, VllmTenant
from servers.vllm import vllm_argv_env

HERE = str(Path(__file__).parent)
LOCAL = ResolvedModel(HERE, HERE, True, None, "tiny-llama")  # any folder: a local model
MINILM = ResolvedModel(HERE, HERE, False, None, "all-minilm-l6-v2")


def flag(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, (name, argv)
    return argv[argv.index(name) + 1]


def _spec(tmp_path: Path, **tenant_extra: Any) -> Any:
    data = {
        "name": "bind",
        "tenants": [
            {"name": "llm", "kind": "vllm", "model": "tiny-llama", **tenant_extra},
            {"name": "enc", "kind": "encoder", "model": "all-minilm-l6-v2", **tenant_extra},
        ],
    }
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(data))
    return load_spec(p)[0]


def test_tenants_from_a_spec_bind_to_loopback_by_default(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    llm, enc = spec.tenants
    assert llm.host == enc.host == "127.0.0.1"
    argv, _ = vllm_argv_env(llm, LOCAL, 0.3, 8100, tmp_path, backend="cpu", vllm_port=21000)
    assert flag(argv, "--host") == "127.0.0.1"
    argv, _ = encoder_argv_env(enc, MINILM, 0.2, 8101)
    assert flag(argv, "--host") == "127.0.0.1"


def test_a_spec_can_ask_for_another_address(tmp_path: Path) -> None:
    llm, enc = _spec(tmp_path, host="0.0.0.0").tenants
    argv, _ = vllm_argv_env(llm, LOCAL, 0.3, 8100, tmp_path, backend="cpu", vllm_port=21000)
    assert flag(argv, "--host") == "0.0.0.0"
    assert flag(encoder_argv_env(enc, MINILM, 0.2, 8101)[0], "--host") == "0.0.0.0"


def test_the_encoder_cli_defaults_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    from servers.encoder.__main__ import parse_args

    monkeypatch.delenv("COTENANT_ENCODER_API_KEY", raising=False)
    args = parse_args(["--model", "/m", "--served-name", "e", "--port", "9000"])
    assert args.host == "127.0.0.1" and args.api_key is None
    monkeypatch.setenv("COTENANT_ENCODER_API_KEY", "k")
    assert parse_args(["--model", "/m", "--served-name", "e", "--port", "9000"]).api_key == "k"


def test_api_keys_go_through_the_environment(tmp_path: Path) -> None:
    """vLLM takes VLLM_API_KEY as it takes --api-key; the encoder COTENANT_ENCODER_API_KEY.
    On the command line a key would show in `ps` to every user of the machine."""
    llm, enc = _spec(tmp_path, api_key="s3cret-k3y").tenants
    argv, env = vllm_argv_env(llm, LOCAL, 0.3, 8100, tmp_path, backend="cpu", vllm_port=21000)
    assert env["VLLM_API_KEY"] == "s3cret-k3y"
    assert "--api-key" not in argv and not any("s3cret" in a for a in argv)
    argv, env = encoder_argv_env(enc, MINILM, 0.2, 8101)
    assert env["COTENANT_ENCODER_API_KEY"] == "s3cret-k3y"
    assert "--api-key" not in argv and not any("s3cret" in a for a in argv)


def test_the_installed_vllm_reads_its_key_from_the_environment() -> None:
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vLLM is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    assert '"VLLM_API_KEY"' in (root / "envs.py").read_text()
    # the server turns it into its auth middleware, next to --api-key
    hits = [
        p
        for p in (root / "entrypoints").rglob("*.py")
        if "envs.VLLM_API_KEY" in p.read_text(errors="replace")
    ]
    assert hits, "vLLM no longer reads VLLM_API_KEY: pass --api-key instead"


def test_a_key_in_this_process_environment_is_not_inherited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "parent")
    monkeypatch.setenv("COTENANT_ENCODER_API_KEY", "parent")
    llm, enc = _spec(tmp_path).tenants
    _, env = vllm_argv_env(llm, LOCAL, 0.3, 8100, tmp_path, backend="cpu", vllm_port=21000)
    assert "VLLM_API_KEY" not in env
    _, env = encoder_argv_env(enc, MINILM, 0.2, 8101)
    assert "COTENANT_ENCODER_API_KEY" not in env


class _FakeProcess:
    """Records what launch_tenant would start (no server is started)."""

    started: list[_FakeProcess] = []

    def __init__(self, name: str, argv: list[str], **kw: Any) -> None:
        self.name, self.argv, self.kw = name, argv, kw

    def start(self) -> None:
        _FakeProcess.started.append(self)


@pytest.mark.parametrize("kind", ["vllm", "encoder"])
def test_launching_a_tenant_binds_loopback_and_clients_carry_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The path `cotenant up` and `run` take (ResidentSet -> start_tenant -> launch_tenant)."""
    monkeypatch.setattr(launch, "ServerProcess", _FakeProcess)
    monkeypatch.setattr(vllm, "vllm_module", lambda: "vllm.entrypoints.openai.api_server")
    tenant: VllmTenant | EncoderTenant
    if kind == "vllm":
        tenant = VllmTenant(name="llm", model="tiny-llama", api_key="k")
        resolved = LOCAL
    else:
        tenant = EncoderTenant(name="enc", model="all-minilm-l6-v2", api_key="k")
        resolved = MINILM
    running = launch_tenant(
        tenant, share=0.3, log_path=tmp_path / "t.log", cache_root=tmp_path, port=8123,
        resolved=resolved,
    )  # fmt: skip
    proc = _FakeProcess.started[-1]
    assert flag(proc.argv, "--host") == "127.0.0.1"
    assert proc.kw["host"] == "127.0.0.1"
    assert running.base_url == "http://127.0.0.1:8123"
    assert running.headers() == {"Authorization": "Bearer k"}
    assert "k" not in proc.argv


def test_api_keys_are_masked_in_every_dump_and_survive_overrides(tmp_path: Path) -> None:
    import json

    from orchestrator.cli.campaign import override_spec

    spec = _spec(tmp_path, api_key="s3cret-k3y")
    dumped = json.dumps(spec.model_dump(mode="json"))  # what campaign.json and resume compare
    assert "s3cret-k3y" not in dumped and "**********" in dumped
    assert "s3cret-k3y" not in repr(spec)
    o = override_spec(spec, tmp_path / "spec.yaml", sharing="mps")
    assert [t.key for t in o.tenants] == ["s3cret-k3y", "s3cret-k3y"]
    _, env = vllm_argv_env(o.tenants[0], LOCAL, 0.3, 8100, tmp_path, backend="cpu", vllm_port=21000)
    assert env["VLLM_API_KEY"] == "s3cret-k3y"
