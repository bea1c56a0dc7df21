"""`cotenant report` and `cotenant compare`: the reports' commands (reports/ does the work)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Write the report here instead of into RUN_DIR.",
)
def report(run_dir: Path, out: Path | None) -> None:
    """(Re)build the report of a run directory: which tenants share a GPU well, which hurt
    each other, by how much and why.

    \b
    RUN_DIR is what `cotenant run` wrote, e.g. runs/cpu-demo. Only experiments whose
    manifest says completed are measured; failed and interrupted ones are listed apart.
    It reads nothing but the run directory, so it can run anywhere, any number of times.

    \b
    Writes (into RUN_DIR, or --out):
      report.html        one self-contained page: summary and ranking first, then each
                         set, interference, tenants, timelines, failures, environment
      summary.md         the headline and ranking, for a terminal or a pull request
      tables/*.parquet   every figure, also as .csv (experiments, groups, interference,
                         strategies, failures, profiles: each tenant alone by offered
                         rate, bottleneck: what binds per tenant and load, attribution:
                         what grew in co-located sets, prediction_scores / _mape: the
                         leave-one-out errors of the predictions, ...)
      figures/*.svg      the figures, also as .png

    \b
    Reading it: goodput = requests/s that met every SLO; "running them apart" = each
    tenant alone on its own GPU, so gain = goodput per GPU shared / apart; slowdown =
    a tenant's p99 latency co-located / alone, with a 95% interval over repetitions.

    \b
    Examples:
      cotenant report runs/cpu-demo
      cotenant report runs/h100-pairs --out /tmp/h100-report
    """
    from reports.build import build_report

    paths = build_report(run_dir, out)
    click.echo(f"report:   {paths.html}")
    click.echo(f"summary:  {paths.summary_md}")
    click.echo(f"tables:   {paths.tables_dir}/ ({len(paths.tables)} files)")
    click.echo(f"figures:  {paths.figures_dir}/ ({len(paths.figures)} files)")


@click.command("compare")
@click.argument("run_a", type=click.Path(path_type=Path, file_okay=False))
@click.argument("run_b", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder for the comparison; default: compare__<A>__<B> beside RUN_A.",
)
def compare(run_a: Path, run_b: Path, out: Path | None) -> None:
    """Put two campaigns side by side, e.g. the same spec under time-slice (A) and MPS (B).

    \b
    Experiments are matched by id (stable for the same spec); each set x tenant x figure
    gets B / A with a 95% interval, and is called better or worse in B only where the
    interval excludes 1.0. Sets are compared on goodput per GPU, gain over running apart
    and worst slowdown.

    \b
    Writes compare.html, compare.md and tables/compare.parquet|csv.

    \b
    Example:
      cotenant compare runs/h100-timeslice runs/h100-mps --out runs/ts-vs-mps
    """
    from reports.compare import compare_runs

    dest = out if out is not None else run_a.parent / f"compare__{run_a.name}__{run_b.name}"
    html = compare_runs(run_a, run_b, dest)
    click.echo(f"compare:  {html}")
    click.echo(f"summary:  {html.parent / 'compare.md'}")
    click.echo(f"tables:   {html.parent / 'tables'}/compare.csv")


def pairs(text: str | None, option: str) -> dict[str, float]:
    """``a=40,b=60`` -> {"a": 40.0, "b": 60.0}."""
    out: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, eq, val = part.partition("=")
        try:
            if not eq:
                raise ValueError
            out[name.strip()] = float(val)
        except ValueError:
            raise click.BadParameter(f"{part!r}: expected TENANT=NUMBER, e.g. a=40,b=60",
                                     param_hint=option) from None
    return out


@click.command("predict")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--set", "set_", required=True, metavar="A+B",
              help="The tenants to put together, e.g. llama-a+minilm.")
@click.option("--rates", default=None, metavar="A=R,B=R",
              help="Offered req/s per tenant; without it: the co-located capacity and W.")
@click.option("--mix", default=None, metavar="A=W,B=W",
              help="Capacity along this mix of rates (default: each tenant the same fraction "
              "of its solo capacity).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def predict(run_dir: Path, set_: str, rates: str | None, mix: str | None, as_json: bool) -> None:
    """Predict a set nobody ran from the tenants' solo profiles in RUN_DIR.

    \b
    With --rates: each tenant's TPOT p50, TTFT p99 (E2E p99 for the encoder) and SLO
    attainment when the set runs together at those rates. Without: the set's co-located
    capacity (the largest scale of the mix at which every tenant meets its SLO target)
    and its weighted capacity W = sum of rate / solo capacity. Every figure has an
    interval, from the leave-one-out errors of the run's measured sets when there are
    any, else from the profile's repetition spread; the model and why are printed too.

    \b
    Examples:
      cotenant predict runs/cpu-predict --set llama-a+minilm
      cotenant predict runs/cpu-predict --set llama-a+llama-b --rates llama-a=3,llama-b=4
      cotenant predict runs/h100-pairs --set llama+qwen --mix llama=2,qwen=1 --json
    """
    from reports.predict_cli import run_predict

    text = run_predict(run_dir, set_.split("+"), pairs(rates, "--rates") if rates else None,
                       pairs(mix, "--mix") if mix else None, as_json)
    click.echo(text)
