"""The executor ``cotenant run --executor NAME [--gpus LIST] [--address ADDR] [--retries N]``
asks for; option errors are ``OrchestratorError`` (one line at the CLI), raised before anything
starts."""

from __future__ import annotations

from orchestrator.device import detect_gpu
from orchestrator.errors import OrchestratorError
from orchestrator.executors.base import Executor, import_ray
from orchestrator.executors.local import LocalParallelExecutor, SerialExecutor
from orchestrator.executors.ray import RayExecutor

EXECUTORS = ("local", "ray")


def parse_gpus(text: str | None) -> list[str] | None:
    """``"0,1,3"`` -> ``["0", "1", "3"]``; None or empty -> None."""
    if text is None or not str(text).strip():
        return None
    out: list[str] = []
    for part in str(text).split(","):
        p = part.strip()
        if not p.isdigit():
            raise OrchestratorError(
                f"--gpus {text!r}: a comma-separated list of GPU indices, e.g. 0,1 (got {p!r})"
            )
        if str(int(p)) in out:
            raise OrchestratorError(f"--gpus {text!r}: GPU {int(p)} is listed twice")
        out.append(str(int(p)))
    return out


def make_executor(
    name: str = "local",
    *,
    gpus: list[str] | str | None = None,
    address: str | None = None,
    retries: int = 0,
) -> Executor:
    """The executor ``cotenant run --executor NAME`` asks for; errors are OrchestratorError."""
    if isinstance(gpus, str):
        gpus = parse_gpus(gpus)
    if retries < 0:
        raise OrchestratorError(f"--retries must be 0 or more, got {retries}")
    if name == "local":
        if address:
            raise OrchestratorError("--address is for --executor ray")
        if gpus:
            return LocalParallelExecutor(check_slots(gpus), retries=retries)
        return SerialExecutor(retries=retries)
    if name == "ray":
        if gpus:
            raise OrchestratorError(
                "--gpus is for --executor local; Ray gives each group one GPU of the cluster"
            )
        import_ray()  # fail now, before anything starts, if Ray is missing
        return RayExecutor(address=address, retries=retries)
    raise OrchestratorError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")


def check_slots(slots: list[str]) -> list[str]:
    """Refuse GPU indices this host does not have; with no GPU at all they are pseudo-slots."""
    if detect_gpu(0) is None:
        return slots  # no NVML GPU: pseudo-slots (documented; what the CPU tests use)
    missing = [s for s in slots if detect_gpu(int(s)) is None]
    if missing:
        raise OrchestratorError(f"--gpus: this host has no GPU {', '.join(missing)}")
    return slots
