"""`cotenant trace stats | synth | import` and `cotenant replay`: traces and the replayer.

Heavy imports (polars, httpx, numpy) happen inside the commands so that ``--help`` stays
instant. Errors of the workloads package (``WorkloadError``) propagate to the CLI's
main, which prints them as one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

_CTX = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


_HEADERS = {
    "requests": "n",
    "duration_s": "span s",
    "rate": "req/s",
    "burstiness": "cv gaps",
    "achieved_rate": "req/s",
    "timeouts": "time\nouts",
    "dropped": "drop\nped",
}


def _header(col: str) -> str:
    """Short, two-line headers so that tables fit an 80-column terminal."""
    if col in _HEADERS:
        return _HEADERS[col]
    for long, short in (("input_", "in "), ("output_", "out "), ("_ms", " ms")):
        col = col.replace(long, short)
    return col.replace("_", "\n", 1)


def _table(title: str, df: Any) -> Table:
    t = Table(title=title, title_justify="left")
    for col in df.columns:
        t.add_column(_header(col), justify="left" if col == "tenant" else "right")
    for row in df.iter_rows():
        t.add_row(*(_fmt(v) for v in row))
    return t


def _pair(text: str, what: str) -> tuple[float, float]:
    a, sep, b = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return float(a), float(b)
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected FROM:TO seconds", param_hint=what) from None


@click.group(context_settings=_CTX)
def trace() -> None:
    """Make, import and inspect request traces.

    A trace is one row a request: arrival_s, tenant, kind, input_tokens, output_tokens
    (and optionally prompt, batch_size), saved as .parquet or .jsonl.

    \b
    Examples:
      cotenant trace import azure_conv.csv --out conv.parquet --time-scale 0.5
      cotenant trace synth --process poisson --rate 5 --duration 60 --out p.parquet
      cotenant trace stats conv.parquet
    """


@trace.command(context_settings=_CTX)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "cotenant", "azure", "burstgpt", "mooncake", "sharegpt"]),
    help="Trace format; auto reads the suffix, the CSV header or the first record.",
)
@click.option("--skip-bad-rows", is_flag=True, help="Skip and count malformed rows.")
def stats(file: Path, fmt: str, skip_bad_rows: bool) -> None:
    """Per-tenant statistics of FILE: requests, duration, rate, burstiness, lengths.

    Burstiness is the coefficient of variation of the gaps between arrivals: 1 for a
    Poisson process, above 1 for bursts, 0 for a constant rate.

    \b
    Examples:
      cotenant trace stats examples/traces/azure_llm_2023_conv_head.csv
      cotenant trace stats runs/my-trace.parquet
    """
    from workloads.importers import import_trace
    from workloads.trace import trace_stats

    res = import_trace(file, fmt, skip_bad_rows=skip_bad_rows)
    Console().print(_table(f"{file} ({res.format})", trace_stats(res.trace)))
    _report_skips(res)


def _report_skips(res: Any) -> None:
    if res.bad_rows:
        click.secho(
            f"skipped {res.bad_rows} malformed row(s); first: {res.first_error}",
            fg="yellow",
            err=True,
        )
    if res.filtered_rows:
        click.echo(f"left out {res.filtered_rows} row(s) (failed requests / no reply)", err=True)


@trace.command(context_settings=_CTX)
@click.option(
    "--process",
    type=click.Choice(["constant", "poisson", "gamma", "onoff", "ramp"]),
    default="poisson",
    show_default=True,
    help="Arrival process.",
)
@click.option(
    "--rate", type=float, help="Requests per second for each tenant (ramp: the end rate)."
)
@click.option("--start-rate", type=float, default=0.0, show_default=True, help="ramp: first rate.")
@click.option(
    "--cv", type=float, default=2.0, show_default=True, help="gamma: burstiness (CV of gaps)."
)
@click.option("--on-s", type=float, default=5.0, show_default=True, help="onoff: seconds on.")
@click.option("--off-s", type=float, default=5.0, show_default=True, help="onoff: seconds off.")
@click.option("--duration", type=float, required=True, help="Seconds of trace.")
@click.option("--input-tokens", default="128", show_default=True, metavar="SPEC",
              help="Input length: N, uniform:LO:HI, normal:MEAN:STD, lognormal:MEDIAN:SIGMA, "
              "empirical:FILE:input_tokens.")  # fmt: skip
@click.option(
    "--output-tokens",
    default="64",
    show_default=True,
    metavar="SPEC",
    help="Output length, as above.",
)
@click.option(
    "--kind",
    type=click.Choice(["completion", "embedding"]),
    default="completion",
    show_default=True,
)
@click.option(
    "--batch-size",
    default="1",
    show_default=True,
    metavar="SPEC",
    help="embedding: items a request.",
)
@click.option(
    "--tenants", default="", metavar="A,B", help="Tenant names; each gets its own stream at --rate."
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed (0 is a seed like any other)."
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write: .parquet or .jsonl.")  # fmt: skip
def synth(
    process: str,
    rate: float | None,
    start_rate: float,
    cv: float,
    on_s: float,
    off_s: float,
    duration: float,
    input_tokens: str,
    output_tokens: str,
    kind: str,
    batch_size: str,
    tenants: str,
    seed: int,
    out: Path,
) -> None:
    """Generate a synthetic trace from an arrival process and length distributions.

    \b
    Examples:
      cotenant trace synth --process poisson --rate 4 --duration 60 \\
          --input-tokens lognormal:300:0.8 --output-tokens uniform:16:128 \\
          --tenants chat,code --seed 0 --out mix.parquet
      cotenant trace synth --process ramp --start-rate 1 --rate 20 --duration 120 --out ramp.jsonl
      cotenant trace synth --process gamma --rate 10 --cv 3 --duration 30 --out bursty.parquet
    """
    import polars as pl
    from pydantic import TypeAdapter, ValidationError

    from workloads.generators import parse_length, synthesize
    from workloads.spec import Arrivals, SyntheticWorkload
    from workloads.trace import save_trace, trace_stats

    if rate is None:
        raise click.BadParameter("is required", param_hint="--rate")
    fields: dict[str, Any] = {"process": process}
    if process == "ramp":
        fields.update(start_rate=start_rate, end_rate=rate)
    else:
        fields["rate"] = rate
    if process == "gamma":
        fields["cv"] = cv
    if process == "onoff":
        fields.update(on_s=on_s, off_s=off_s)
    try:
        arrival = TypeAdapter(Arrivals).validate_python(fields)
    except ValidationError as e:
        raise click.UsageError("; ".join(err["msg"] for err in e.errors())) from None
    w = SyntheticWorkload(
        arrival=arrival,
        input_tokens=parse_length(input_tokens),
        output_tokens=parse_length(output_tokens),
        batch_size=parse_length(batch_size),
    )
    names: list[str | None] = [t.strip() for t in tenants.split(",") if t.strip()] or [None]
    parts = [
        synthesize(w, duration_s=duration, seed=seed, tenant=n, kind=kind, base_dir=Path.cwd())
        for n in names
    ]
    df = pl.concat(parts).sort("arrival_s", maintain_order=True)
    save_trace(df, out)
    Console().print(_table(f"{out}: {df.height} requests", trace_stats(df)))


@trace.command("import", context_settings=_CTX)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "cotenant", "azure", "burstgpt", "mooncake", "sharegpt"]),
              help="Source format; auto reads the suffix, the CSV header or the first record.")  # fmt: skip
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write: .parquet or .jsonl.")  # fmt: skip
@click.option(
    "--window",
    metavar="FROM:TO",
    help="Keep arrivals in [FROM, TO) source seconds (applied first).",
)
@click.option("--time-scale", type=float, default=1.0, show_default=True,
              help="Multiply arrival times (0.5 = twice as fast).")  # fmt: skip
@click.option("--rate", type=float, help="Then rescale times to this mean rate (req/s).")
@click.option("--max-input-tokens", type=int, help="Clip input lengths.")
@click.option("--max-output-tokens", type=int, help="Clip output lengths.")
@click.option("--assign", metavar="RULE",
              help="Tenants: round-robin (with --tenants), column:NAME (e.g. column:Model), "
              "or weights:a=1,b=2.")  # fmt: skip
@click.option("--tenants", default="", metavar="A,B", help="Names for --assign round-robin.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --assign weights.")
@click.option(
    "--skip-bad-rows", is_flag=True, help="Skip and count malformed rows instead of failing."
)
@click.option(
    "--keep-failed", is_flag=True, help="BurstGPT: keep failed requests (0 response tokens)."
)
@click.option("--tokenizer", type=click.Path(file_okay=False, path_type=Path),
              help="ShareGPT: count tokens with this model folder's tokenizer (else characters / 4).")  # fmt: skip
def import_(
    file: Path,
    fmt: str,
    out: Path,
    window: str | None,
    time_scale: float,
    rate: float | None,
    max_input_tokens: int | None,
    max_output_tokens: int | None,
    assign: str | None,
    tenants: str,
    seed: int,
    skip_bad_rows: bool,
    keep_failed: bool,
    tokenizer: Path | None,
) -> None:
    """Import a public trace (Azure, BurstGPT, Mooncake, ShareGPT) into a cotenant trace.

    A malformed row stops the import with its file, line and column, unless
    --skip-bad-rows. Transforms run in order: window, time scale, rate, length clips.

    \b
    Examples:
      cotenant trace import AzureLLMInferenceTrace_conv.csv --out conv.parquet \\
          --window 0:600 --time-scale 0.25
      cotenant trace import BurstGPT_1.csv --out burst.parquet --assign column:Model
      cotenant trace import mooncake.jsonl --out mc.parquet --rate 5 --assign weights:a=3,b=1
      cotenant trace import sharegpt.json --out sg.parquet --tokenizer models/tiny-llama
    """
    from pydantic import ValidationError

    from workloads.importers import import_trace
    from workloads.spec import TraceTransforms
    from workloads.trace import save_trace, trace_stats
    from workloads.transforms import apply_transforms, assign_tenants, parse_assignment

    try:
        t = TraceTransforms(
            time_scale=time_scale,
            window=_pair(window, "--window") if window else None,
            rate=rate,
            max_input_tokens=max_input_tokens,
            max_output_tokens=max_output_tokens,
        )
    except ValidationError as e:
        raise click.UsageError(
            "; ".join(f"{err['loc'][0]}: {err['msg']}" for err in e.errors())
        ) from None
    rule = (
        parse_assignment(assign, [n.strip() for n in tenants.split(",") if n.strip()])
        if assign
        else None
    )
    res = import_trace(
        file, fmt, skip_bad_rows=skip_bad_rows, skip_failed=not keep_failed, tokenizer=tokenizer
    )
    df = apply_transforms(res.trace, t)
    if rule is not None:
        df = assign_tenants(df, rule, seed=seed)
    save_trace(df, out)
    Console().print(
        _table(f"{out}: {df.height} requests from {file} ({res.format})", trace_stats(df))
    )
    _report_skips(res)


# ---- replay ----------------------------------------------------------------------------------


def _target(text: str, timeout_s: float) -> Any:
    """TENANT=URL[,api=chat][,model=NAME][,tokenizer=DIR][,key=API_KEY]"""
    from workloads.replayer import Target, served_model

    head, *opts = text.split(",")
    tenant, sep, url = head.partition("=")
    if not sep or not tenant or not url.startswith(("http://", "https://")):
        raise click.BadParameter(
            f"{text!r}: expected TENANT=http://HOST:PORT[,api=...]", param_hint="--target"
        )
    kv: dict[str, str] = {}
    for o in opts:
        k, sep, v = o.partition("=")
        if not sep or k not in ("api", "model", "tokenizer", "key"):
            raise click.BadParameter(
                f"{o!r}: options are api=, model=, tokenizer=, key=", param_hint="--target"
            )
        kv[k] = v
    api = kv.get("api", "completions")
    if api not in ("completions", "chat", "embeddings"):
        raise click.BadParameter(
            f"api={api}: completions, chat or embeddings", param_hint="--target"
        )
    model = kv.get("model") or served_model(url, kv.get("key"))
    return Target(tenant, url, api, model, kv.get("tokenizer"), kv.get("key"), timeout_s=timeout_s)  # type: ignore[arg-type]


@click.command(context_settings=_CTX)
@click.argument("trace_file", metavar="TRACE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--target", "targets", multiple=True, required=True, metavar="SPEC",
              help="TENANT=URL[,api=completions|chat|embeddings][,model=NAME][,tokenizer=DIR][,key=KEY]; "
              "repeat for each tenant. model defaults to the server's first /v1/models entry.")  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for requests.jsonl and requests.parquet.")  # fmt: skip
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "cotenant", "azure", "burstgpt", "mooncake", "sharegpt"]),
              help="TRACE's format.")  # fmt: skip
@click.option("--warmup", type=float, default=0.0, show_default=True,
              help="Seconds at the start whose requests are flagged warm-up.")  # fmt: skip
@click.option("--duration", type=float, help="Measure this many seconds after the warm-up and send "
              "nothing due later (default: the whole trace).")  # fmt: skip
@click.option("--drain", type=float, default=30.0, show_default=True,
              help="Seconds to wait for requests in flight after the last one is sent.")  # fmt: skip
@click.option(
    "--timeout", type=float, default=120.0, show_default=True, help="Per-request deadline (s)."
)
@click.option("--max-concurrency", "caps", multiple=True, metavar="TENANT=N",
              help="Closed loop: at most N in flight for TENANT (repeatable).")  # fmt: skip
@click.option(
    "--prompt-seed", type=int, default=0, show_default=True, help="Seed of the synthetic prompts."
)
@click.option("--experiment-id", default="replay", show_default=True, help="Goes into every row.")
@click.option("--force", is_flag=True, help="Overwrite --out's requests.jsonl if there is one.")
@click.option("--quiet", is_flag=True, help="No live progress line.")
def replay(
    trace_file: Path,
    targets: tuple[str, ...],
    out: Path,
    fmt: str,
    warmup: float,
    duration: float | None,
    drain: float,
    timeout: float,
    caps: tuple[str, ...],
    prompt_seed: int,
    experiment_id: str,
    force: bool,
    quiet: bool,
) -> None:
    """Replay TRACE against endpoints that are already running; one row a request.

    Requests go out at their arrival times (open loop, absolute schedule) with prompts
    of exactly input_tokens tokens (token ids when a tokenizer folder is given) and
    max_tokens = min_tokens = output_tokens with ignore_eos. Rows are appended to
    OUT/requests.jsonl as requests finish, then compacted into OUT/requests.parquet.
    Ctrl-C stops sending; what was not sent is recorded as dropped.

    \b
    Examples:
      cotenant replay conv.parquet --target llama=http://127.0.0.1:8001,tokenizer=models/tiny-llama \\
          --out runs/replay-1 --warmup 5 --duration 60
      cotenant replay mix.parquet --out runs/mix \\
          --target chat=http://127.0.0.1:8001,api=chat,model=tiny-a \\
          --target code=http://127.0.0.1:8002,model=tiny-b --max-concurrency code=8
    """
    import polars as pl

    from workloads.importers import import_trace
    from workloads.progress import RichProgress
    from workloads.replayer import replay_to_dir

    res = import_trace(trace_file, fmt)
    df = res.trace
    if duration is not None:
        df = df.filter(pl.col("arrival_s") < warmup + duration)
    tlist = [_target(t, timeout) for t in targets]
    cap = _caps(caps)
    console = Console(stderr=True)
    summary_df = replay_to_dir(
        df,
        tlist,
        out,
        experiment_id=experiment_id,
        warmup_s=warmup,
        window_s=duration,
        drain_s=drain,
        prompt_seed=prompt_seed,
        max_concurrency=cap or None,
        progress=None if quiet else RichProgress(console),
        overwrite=force,
    )
    Console().print(_table(f"{trace_file} → {out}", summary_df))
    _echo_totals(out / "requests.parquet")


def _caps(caps: tuple[str, ...]) -> dict[str, int]:
    """``--max-concurrency TENANT=N`` options -> {tenant: N}."""
    cap: dict[str, int] = {}
    for c in caps:
        name, _, n = c.partition("=")
        if not n.isdigit() or int(n) < 1:
            raise click.BadParameter(
                f"{c!r}: expected TENANT=N (N >= 1)", param_hint="--max-concurrency"
            )
        cap[name] = int(n)
    return cap


def _echo_totals(requests_parquet: Path) -> None:
    """One line: sent, ok, errors, timeouts, dropped, and the dispatch lag."""
    import polars as pl

    from workloads.summary import replay_totals

    t = replay_totals(pl.read_parquet(requests_parquet))
    lag = (
        f"dispatch lag p50 {t['lag_p50_s'] * 1e3:.3f} ms, p99 {t['lag_p99_s'] * 1e3:.3f} ms, "
        f"max {t['lag_max_s'] * 1e3:.2f} ms"
        if t["lag_p50_s"] is not None and t["lag_p99_s"] is not None and t["lag_max_s"] is not None
        else "nothing sent"
    )
    click.echo(
        f"{t['sent']}/{t['scheduled']} sent, {t['ok']} ok, {t['error']} errors, "
        f"{t['timeout']} timeouts, {t['dropped']} dropped; {lag}"
    )
