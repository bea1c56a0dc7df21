"""Does the encoder answer slower after a pause than back to back? Where does the time go?

The H200 campaigns of 2026-12-02 saw the encoder's batches take 30-65 ms in the server at
sparse (Poisson) arrivals against 10-15 ms a request in back-to-back warm-up rounds, with the
GPU 0.5-3% busy. This benchmark isolates the pause: the same batch (``--batch`` texts of
``--tokens`` tokens) is embedded ``--n`` times after each gap in ``--gaps`` (seconds of
sleep before each call), three ways:

* ``direct``  ``embed`` in this process, on the calling thread;
* ``thread``  the same through a one-worker thread pool (how the server's batcher calls it);
* ``server``  the real encoder server (``servers.launch.start_tenant``), one request at a
  time over HTTP (token ids in, ``--format`` out: base64 as cotenant's replayer asks, or
  float, whose JSON costs the server's event loop more than the forward pass on a GPU); the
  server's own batch time comes from its ``/metrics``.

For ``direct`` and ``thread`` each call is split into stages: ``features`` (padding and the
host-to-device copy), ``launch`` (the forward pass's Python, which on a GPU only queues
kernels) and ``sync`` (waiting for the device and the copy back). On a GPU the SM clock and
performance state are read before each call (NVML). A stage that grows with the gap names
the cause: ``launch`` the host CPU (clock, sleep states, scheduling), ``sync`` the device.

    .venv/bin/python benchmarks/encoder_idle.py [--model minilm-l6-shape] [--batch 16]
        [--tokens 128] [--gaps 0,0.005,0.02,0.05,0.1,0.3] [--n 20] [--modes direct,thread,server]
        [--device cuda] [--share 0.01] [--format base64]

Prints a table (medians in ms, and each median over the gap-0 median of its mode) and, last,
one line of JSON.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def token_batches(
    folder: Path, batch: int, widths: list[int], seed: int = 0
) -> list[list[list[int]]]:
    """One batch of ``batch`` token-id sequences per width (ids drawn from the model's
    vocabulary): the same work in every mode, and no tokenizer in the measurement."""
    vocab = int(json.loads((folder / "config.json").read_text()).get("vocab_size", 30522))
    rng = random.Random(seed)
    return [[[rng.randrange(1000, vocab) for _ in range(w)] for _ in range(batch)] for w in widths]


class Clock:
    """SM clock (MHz) and performance state of GPU 0 through NVML; empty without one."""

    def __init__(self, enabled: bool) -> None:
        self.handle: Any = None
        if not enabled:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml: Any = pynvml
        except Exception:
            self.handle = None

    def read(self) -> tuple[float, float] | None:
        if self.handle is None:
            return None
        n = self._nvml
        return (
            float(n.nvmlDeviceGetClockInfo(self.handle, n.NVML_CLOCK_SM)),
            float(n.nvmlDeviceGetPerformanceState(self.handle)),
        )


def staged(model: Any, batch: list[list[int]]) -> dict[str, float]:
    """One embed, timed by stage (the body of ``_TorchEncoder.embed``)."""
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode():
        feats = model.features(batch)
        t1 = time.perf_counter()
        out = model._forward(feats)
        t2 = time.perf_counter()
        out.float().cpu().numpy()
        t3 = time.perf_counter()
    return {"features": t1 - t0, "launch": t2 - t1, "sync": t3 - t2, "total": t3 - t0}


def series(
    call: Callable[[], dict[str, float]], gaps: list[float], n: int, clock: Clock
) -> dict[float, dict[str, Any]]:
    out: dict[float, dict[str, Any]] = {}
    for gap in gaps:
        call()  # one untimed call after the previous series' gap pattern
        rows: list[dict[str, float]] = []
        clocks: list[tuple[float, float]] = []
        for _ in range(n):
            if gap:
                time.sleep(gap)
            c = clock.read()
            if c:
                clocks.append(c)
            rows.append(call())
        med = {k: statistics.median(r[k] for r in rows) * 1000 for k in rows[0]}
        med["p90_total"] = sorted(r["total"] for r in rows)[int(0.9 * (len(rows) - 1))] * 1000
        if clocks:
            med["sm_mhz"] = statistics.median(c[0] for c in clocks)
            med["pstate_max"] = max(c[1] for c in clocks)
        out[gap] = med
    return out


def server_series(
    model: str,
    device: str | None,
    share: float,
    batches: list[list[list[int]]],
    fmt: str,
    gaps: list[float],
    n: int,
) -> tuple[dict[float, dict[str, Any]], float]:
    import httpx

    from orchestrator.telemetry.scrape import parse_metrics
    from servers.launch import start_tenant
    from servers.process import stop_all
    from servers.spec import EncoderTenant

    tmp = Path(tempfile.mkdtemp(prefix="encoder-idle-"))
    tenant = EncoderTenant(name="enc", model=model, max_batch=64, device=device)
    t0 = time.monotonic()
    running = start_tenant(tenant, share=share, log_path=tmp / "encoder.log", cache_root=tmp)
    startup = time.monotonic() - t0
    bodies = itertools.cycle(
        [{"model": running.served_name, "input": b, "encoding_format": fmt} for b in batches]
    )
    url = f"{running.base_url}/v1/embeddings"

    def scrape(c: httpx.Client) -> dict[str, float]:
        rows = parse_metrics(c.get(f"{running.base_url}/metrics").text)
        return {
            name: value
            for name, labels, value in rows
            if name.startswith("encoder_") and not labels
        }

    out: dict[float, dict[str, Any]] = {}
    try:
        with httpx.Client(timeout=60, trust_env=False) as c:
            for _ in range(3):
                c.post(url, json=next(bodies)).raise_for_status()
            for gap in gaps:
                c.post(url, json=next(bodies)).raise_for_status()
                before = scrape(c)
                e2e: list[float] = []
                for _ in range(n):
                    if gap:
                        time.sleep(gap)
                    s = time.perf_counter()
                    c.post(url, json=next(bodies)).raise_for_status()
                    e2e.append(time.perf_counter() - s)
                after = scrape(c)

                def delta(
                    key: str, a: dict[str, float] = after, b: dict[str, float] = before
                ) -> float:
                    return a.get(key, 0.0) - b.get(key, 0.0)

                batches = delta("encoder_batch_duration_seconds_count") or float("nan")
                e2e.sort()
                out[gap] = {
                    "total": statistics.median(e2e) * 1000,
                    "p90_total": e2e[int(0.9 * (n - 1))] * 1000,
                    "server_batch": delta("encoder_batch_duration_seconds_sum") / batches * 1000,
                    "server_wait": delta("encoder_queue_wait_seconds_sum") / batches * 1000,
                    "cuda_mallocs": delta("encoder_cuda_num_device_alloc"),
                    "cuda_frees": delta("encoder_cuda_num_device_free"),
                    "alloc_retries": delta("encoder_cuda_num_alloc_retries"),
                }
    finally:
        stop_all()
    return out, startup


def print_table(
    results: dict[str, dict[float, dict[str, Any]]], gaps: list[float], title: str
) -> dict[str, float]:
    """The table of every mode and gap; returns each median over its mode's gap-0 median."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    cols = ["mode", "gap ms", "median ms", "p90 ms", "x gap 0", "stages / server (ms)"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("mode", "stages / server (ms)") else "right")
    ratios: dict[str, float] = {}
    for mode, per_gap in results.items():
        base = per_gap[gaps[0]]["total"]
        for gap, m in per_gap.items():
            ratio = m["total"] / base
            ratios[f"{mode}@{gap}"] = round(ratio, 3)
            if mode == "server":
                extra = (
                    f"batch {m['server_batch']:.1f}, wait {m['server_wait']:.1f}, "
                    f"cudaMalloc {m['cuda_mallocs']:.0f}, cudaFree {m['cuda_frees']:.0f}"
                )
            else:
                extra = (
                    f"features {m['features']:.2f}, launch {m['launch']:.2f}, sync {m['sync']:.2f}"
                )
                if "sm_mhz" in m:
                    extra += f", SM {m['sm_mhz']:.0f} MHz, P{m['pstate_max']:.0f}"
            table.add_row(
                mode,
                f"{gap * 1000:g}",
                f"{m['total']:.2f}",
                f"{m['p90_total']:.2f}",
                f"{ratio:.2f}",
                extra,
            )
    Console(width=160).print(table)
    return ratios


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="minilm-l6-shape", help="an encoder preset or folder")
    ap.add_argument("--batch", type=int, default=16, help="texts a call")
    ap.add_argument(
        "--tokens", default="128", help="tokens a text; a list (32,96,256) cycles call by call"
    )
    ap.add_argument("--gaps", default="0,0.005,0.02,0.05,0.1,0.3", help="seconds before each call")
    ap.add_argument("--n", type=int, default=20, help="timed calls a gap")
    ap.add_argument("--modes", default="direct,thread,server")
    ap.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    ap.add_argument(
        "--format",
        default="base64",
        choices=["base64", "float"],
        help="the server's encoding_format (cotenant's replayer asks for base64)",
    )
    ap.add_argument("--share", type=float, default=0.01, help="the server's memory share")
    args = ap.parse_args(argv)
    gaps = [float(g) for g in args.gaps.split(",")]
    widths = [int(t) for t in args.tokens.split(",")]
    modes = args.modes.split(",")

    import torch

    from servers.encoder.model import load_encoder, pick_device, warm_up
    from servers.presets import resolve_model
    from servers.spec import EncoderTenant

    device = pick_device(args.device)
    results: dict[str, dict[float, dict[str, Any]]] = {}
    clock = Clock(enabled=device.startswith("cuda"))
    info: dict[str, Any] = {
        "device": device,
        "model": args.model,
        "torch": torch.__version__,
        "tokens": widths,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    else:
        info["cpu"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    resolved = resolve_model(EncoderTenant(name="enc", model=args.model))
    batches = token_batches(Path(resolved.path), args.batch, widths)
    if {"direct", "thread"} & set(modes):
        model = load_encoder(
            str(resolved.path), device=device, random_weights=resolved.random_weights
        )
        warm_up(model, max_batch=64, full=device.startswith("cuda"))
        cycle = itertools.cycle(batches)
        if "direct" in modes:
            results["direct"] = series(lambda: staged(model, next(cycle)), gaps, args.n, clock)
        if "thread" in modes:
            pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
            results["thread"] = series(
                lambda: pool.submit(staged, model, next(cycle)).result(), gaps, args.n, clock
            )
            pool.shutdown()
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    if "server" in modes:
        results["server"], info["server_startup_s"] = server_series(
            args.model, args.device, args.share, batches, args.format, gaps, args.n
        )

    ratios = print_table(
        results,
        gaps,
        f"encoder {args.model} on {device}: {args.batch} sequences x {args.tokens} tokens",
    )
    worst = max(ratios.items(), key=lambda kv: kv[1]) if ratios else ("", float("nan"))
    print(
        json.dumps(
            {
                "benchmark": "encoder_idle",
                **info,
                "batch": args.batch,
                "gaps_s": gaps,
                "results": {m: {str(g): v for g, v in r.items()} for m, r in results.items()},
                "ratio_to_gap0": ratios,
                "worst": {"case": worst[0], "ratio": worst[1]},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
