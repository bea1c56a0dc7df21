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
                         strategies, bottleneck, failures, ...)
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
