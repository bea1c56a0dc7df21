"""What the encoder server costs: embeddings per second through HTTP vs in-process.

Starts the real encoder tenant (all-MiniLM-L6-v2 on the CPU by default) with
``servers.launch.start_tenant``, drives it with httpx async clients at several request
batch sizes and concurrencies, and runs ``SentenceTransformer.encode`` in this process on
the same sentences with the same batch sizes. Prints a table and, last, one line of JSON.

    .venv/bin/python benchmarks/encoder_overhead.py [--items 256] [--repeat 3]
        [--batch-sizes 1,8,64] [--concurrency 1,32] [--window-ms 5] [--threads N]
        [--model all-minilm-l6-v2]

Throughput is items (sentences) per second: closed-loop clients send a fixed amount of
work after one warm-up request each, timed from the first request to the last answer.
The client runs on the same machine as the server (its HTTP and JSON work is part of the
cost measured). Each figure is the best of ``--repeat`` interleaved repetitions (the
machine may be shared). The ratio is server / in-process at the same request batch size;
above 1 means the server's micro-batching (requests of many clients encoded together)
beat one caller alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WORDS = [
    "the",
    "model",
    "serves",
    "requests",
    "from",
    "many",
    "tenants",
    "sharing",
    "one",
    "accelerator",
    "while",
    "the",
    "scheduler",
    "batches",
    "prompts",
    "and",
    "the",
    "cache",
    "holds",
    "keys",
    "and",
    "values",
    "for",
    "every",
    "token",
    "of",
    "each",
    "sequence",
    "in",
    "flight",
    "latency",
    "throughput",
    "memory",
    "share",
    "interference",
    "baseline",
]


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24))) for _ in range(n)]


async def drive(
    url: str, name: str, texts: list[str], batch: int, concurrency: int, min_items: int
) -> dict[str, Any]:
    """``concurrency`` closed-loop clients send requests of ``batch`` items until together
    they sent at least ``min_items`` (every client at least one request), after one
    untimed warm-up request each. Throughput is items over the wall time of the whole."""
    import httpx

    rounds = max(1, math.ceil(min_items / (batch * concurrency)))
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    errors = 0

    async def client(c: httpx.AsyncClient, k: int, n: int, timed: bool) -> None:
        nonlocal errors
        i = k * batch
        for _ in range(n):
            items = [texts[(i + j) % len(texts)] for j in range(batch)]
            i += batch * concurrency
            t0 = time.perf_counter()
            r = await c.post(url, json={"model": name, "input": items})
            if r.status_code != 200:
                errors += 1
            elif timed:
                latencies.append(time.perf_counter() - t0)

    async with httpx.AsyncClient(limits=limits, timeout=600, trust_env=False) as c:
        await asyncio.gather(*[client(c, k, 1, False) for k in range(concurrency)])
        start = time.perf_counter()
        await asyncio.gather(*[client(c, k, rounds, True) for k in range(concurrency)])
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "items_per_s": len(latencies) * batch / elapsed,
        "items": len(latencies) * batch,
        "errors": errors,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else float("nan"),
    }


def in_process(st: Any, texts: list[str], batch: int, min_items: int) -> float:
    """Items per second of SentenceTransformer.encode, one caller, this batch size."""
    st.encode(texts[:batch], batch_size=batch)  # warm-up
    done, i = 0, 0
    start = time.perf_counter()
    while done < min_items:
        chunk = [texts[(i + j) % len(texts)] for j in range(batch)]
        i += batch
        st.encode(chunk, batch_size=batch, show_progress_bar=False)
        done += batch
    return done / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="all-minilm-l6-v2")
    ap.add_argument("--batch-sizes", default="1,8,64")
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument(
        "--items",
        type=int,
        default=256,
        help="at least this many items per cell (each client sends one request)",
    )
    ap.add_argument(
        "--repeat", type=int, default=3, help="repetitions; each figure is the best of them"
    )
    ap.add_argument("--window-ms", type=float, default=5.0, help="server batch window")
    ap.add_argument("--max-batch", type=int, default=64, help="server micro-batch limit")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the server and of the in-process run "
        "(default: torch's, one per core)",
    )
    args = ap.parse_args(argv)
    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    concurrencies = [int(x) for x in args.concurrency.split(",")]

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rich.console import Console
    from rich.table import Table

    from servers.launch import start_tenant
    from servers.process import install_signal_handlers
    from servers.spec import EncoderTenant

    console = Console(stderr=False)
    install_signal_handlers()
    texts = sentences(4096)
    tenant = EncoderTenant(
        name="bench-encoder",
        model=args.model,
        max_batch=args.max_batch,
        batch_window_ms=args.window_ms,
        device="cpu",
        max_queue=1 << 20,
        env={"OMP_NUM_THREADS": str(args.threads)} if args.threads else {},
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    logdir = Path(tempfile.mkdtemp(prefix="encoder-bench-"))
    t0 = time.monotonic()
    running = start_tenant(tenant, share=0.1, log_path=logdir / "encoder.log", cache_root=logdir)
    startup_s = time.monotonic() - t0
    console.print(f"encoder healthy after {startup_s:.1f} s at {running.base_url}")
    server: dict[tuple[int, int], dict[str, Any]] = {}
    local: dict[int, float] = {}
    load_start = os.getloadavg()
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(running.resolved.path, device="cpu")
        url = f"{running.openai_url}/embeddings"
        # interleaved: the in-process figure of a batch size is taken right before its server
        # figures (the server idles meanwhile), so both see the same machine
        for rep in range(args.repeat):
            for b in batch_sizes:
                x = in_process(st, texts, b, args.items)
                local[b] = max(local.get(b, 0.0), x)
                console.print(f"  [{rep}] in-process batch {b:>3}:           {x:8.1f} items/s")
                for c in concurrencies:
                    r = asyncio.run(drive(url, running.served_name, texts, b, c, args.items))
                    if (b, c) not in server or r["items_per_s"] > server[(b, c)]["items_per_s"]:
                        server[(b, c)] = r
                    console.print(
                        f"  [{rep}] server batch {b:>3} x {c:>2} clients: "
                        f"{r['items_per_s']:8.1f} items/s"
                    )
    finally:
        running.stop()
    load_end = os.getloadavg()

    threads = f", {args.threads} torch threads" if args.threads else ""
    table = Table(
        title=f"Encoder overhead: {args.model} on CPU ({os.cpu_count()} cores{threads}), "
        f"window {args.window_ms:g} ms"
    )
    table.add_column("batch", justify="right")
    table.add_column("clients", justify="right")
    table.add_column("server items/s", justify="right")
    table.add_column("p50 latency ms", justify="right")
    table.add_column("in-process items/s", justify="right")
    table.add_column("server / in-process", justify="right")
    rows = []
    for b in batch_sizes:
        for c in concurrencies:
            s = server[(b, c)]
            ratio = s["items_per_s"] / local[b] if local[b] else float("nan")
            table.add_row(
                str(b),
                str(c),
                f"{s['items_per_s']:.1f}",
                f"{s['p50_ms']:.1f}",
                f"{local[b]:.1f}",
                f"{ratio:.2f}",
            )
            rows.append(
                {
                    "batch": b,
                    "clients": c,
                    "server_items_per_s": round(s["items_per_s"], 1),
                    "server_p50_ms": round(s["p50_ms"], 2),
                    "errors": s["errors"],
                    "in_process_items_per_s": round(local[b], 1),
                    "ratio": round(ratio, 3),
                }
            )
    console.print(table)
    result = {
        "benchmark": "encoder_overhead",
        "model": args.model,
        "device": "cpu",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "min_items_per_cell": args.items,
        "repeat": args.repeat,
        "statistic": "best of repeats",
        "batch_window_ms": args.window_ms,
        "max_batch": args.max_batch,
        "threads": args.threads,
        "startup_s": round(startup_s, 2),
        "loadavg_1m": [round(load_start[0], 2), round(load_end[0], 2)],
        "rows": rows,
    }
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
