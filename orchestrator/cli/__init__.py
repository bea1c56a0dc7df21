"""The `cotenant` command line. Commands load lazily so `--help` is instant.

This module holds the group, its help and `main` (one clean line for a user's error); the
commands live beside it, each module imported only when its command runs:
`orchestrator.cli.campaign` (validate, plan, up, run, presets), `orchestrator.cli.workloads`
(trace, replay) and `orchestrator.cli.reports` (report, compare, predict).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

# command name -> (module, attribute)
_COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("orchestrator.cli.campaign", "validate"),
    "plan": ("orchestrator.cli.campaign", "plan"),
    "up": ("orchestrator.cli.campaign", "up"),
    "run": ("orchestrator.cli.campaign", "run"),
    "capacity": ("orchestrator.cli.campaign", "capacity"),
    "presets": ("orchestrator.cli.campaign", "presets"),
    "trace": ("orchestrator.cli.workloads", "trace"),
    "replay": ("orchestrator.cli.workloads", "replay"),
    "report": ("orchestrator.cli.reports", "report"),
    "compare": ("orchestrator.cli.reports", "compare"),
    "predict": ("orchestrator.cli.reports", "predict"),
}

_HELP = {
    "validate": "Check a campaign spec without running anything.",
    "plan": "Show the memory plan: each tenant's share, bytes and KV capacity.",
    "up": "Start a spec's tenants and keep them up for requests by hand (live mode).",
    "run": "Run a campaign: experiments, telemetry, results, report.",
    "capacity": "Search each tenant's and set's capacity under its SLO, or print a run's (and W).",
    "presets": "List or build model presets (tiny CPU models, GPU shapes, encoders).",
    "trace": "Make, import and inspect request traces.",
    "replay": "Replay a trace against endpoints that are already running.",
    "report": "(Re)build the report of a run directory.",
    "compare": "Put two campaigns side by side (e.g. time-slice vs MPS).",
    "predict": "Predict a set nobody ran from the tenants' solo profiles.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS:
            return None
        mod, attr = _COMMANDS[name]
        cmd = getattr(importlib.import_module(mod), attr)
        assert isinstance(cmd, click.Command)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(n, _HELP.get(n, "")) for n in _COMMANDS])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cotenant")
def cli() -> None:
    """cotenant: what happens when several models share one GPU.

    \b
    Typical use:
      cotenant validate examples/cpu-demo.yaml     check a spec
      cotenant plan examples/cpu-demo.yaml         memory shares and KV capacity
      cotenant run examples/cpu-demo.yaml          run the campaign, write runs/<name>/
      cotenant capacity examples/cpu-capacity.yaml capacity alone and together, W
      cotenant report runs/cpu-demo                rebuild report.html and summary.md
      cotenant up examples/cpu-demo.yaml           leave the tenants up for requests by hand
    """


def main(argv: list[str] | None = None) -> Any:
    from rundir.errors import CotenantError

    try:
        return cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except CotenantError as e:  # every package's errors: one line, exit code 2
        click.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except OSError as e:
        import errno

        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # a full disk wherever it hit (a parallel worker's run directory, a report): one line
        click.secho(f"error: disk full: {e}; make room, then run again with --resume",
                    fg="red", err=True)
        sys.exit(2)
