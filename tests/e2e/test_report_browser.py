"""report.html in a real browser: headless Chromium renders it, as a person would open it.

Needs Debian's ``chromium`` (``apt-get install -y chromium``); without it the tests skip
and say so. Screenshots go to test-artifacts/ (report-top.png, report-full.png).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest

from reports.build import ReportPaths, build_report
from tests.unit.runfixtures import write_run

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not found: install Debian's package with "
    "`apt-get update && apt-get install -y chromium` to render report.html",
)

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    # the page must need nothing from the network: make every host name fail to resolve
    "--host-resolver-rules=MAP * ~NOTFOUND",
]


def chromium(
    url: str, user_data: Path, *extra: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={user_data}", *extra, url],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> ReportPaths:
    run = write_run(tmp_path_factory.mktemp("browser"))
    return build_report(run)


@pytest.fixture(scope="module")
def rendered(report: ReportPaths, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(DOM after rendering, Chromium's log) for report.html."""
    p = chromium(
        report.html.as_uri(),
        tmp_path_factory.mktemp("chromium-profile"),
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout, p.stderr


def test_summary_tables_are_rendered(rendered: tuple[str, str], report: ReportPaths) -> None:
    dom, _ = rendered
    strategies = pl.read_parquet(report.tables_dir / "strategies.parquet")
    rows = {}
    for name in ("summary-table", "unranked-table", "baselines-table"):
        m = re.search(rf'<table id="{name}">(.*?)</table>', dom, re.S)
        rows[name] = m.group(1).count("<tr>") - 1 if m else 0  # less the header
    ranked = strategies.filter(pl.col("rank").is_not_null()).height
    unranked = strategies.filter(pl.col("rank").is_null() & (pl.col("n_active") > 1)).height
    assert rows == {"summary-table": ranked, "unranked-table": unranked,
                    "baselines-table": strategies.filter(pl.col("n_active") == 1).height}
    assert ranked and unranked  # the fixture has both: sets established and sets not
    assert dom.index('id="summary"') < dom.index('id="sets"')  # the summary comes first


def test_every_figure_is_on_the_page(rendered: tuple[str, str], report: ReportPaths) -> None:
    dom, _ = rendered
    on_page = set(re.findall(r'data-figure="([^"]+)"', dom))
    for name in (
        "strategy_map",
        "interference_heatmap",
        "throughput_goodput",
        "cdf_e2e",
        "cdf_ttft",
    ):
        assert name in on_page, f"{name} is not on the page"
        assert (report.figures_dir / f"{name}.svg").is_file()
    groups = {
        p.stem.removeprefix("timeline_").rsplit("__r", 1)[0]
        for p in report.figures_dir.glob("timeline_*.svg")
    }
    shown = {
        n.removeprefix("timeline_").rsplit("__r", 1)[0]
        for n in on_page
        if n.startswith("timeline_")
    }
    assert shown == groups  # at least one timeline of every set


def test_no_console_errors_and_no_network(rendered: tuple[str, str]) -> None:
    _, log = rendered
    bad = [
        line
        for line in log.splitlines()
        if re.search(r"Uncaught|CONSOLE[:(]|Failed to load resource|net::ERR_", line)
    ]
    assert not bad, "\n".join(bad[:10])


def test_screenshots(report: ReportPaths, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    for name, size in (("report-top.png", "1280,2000"), ("report-full.png", "1280,14000")):
        out = ARTIFACTS / name
        out.unlink(missing_ok=True)
        p = chromium(
            report.html.as_uri(), tmp_path / name, f"--window-size={size}", f"--screenshot={out}"
        )
        assert p.returncode == 0, p.stderr[-2000:]
        data = out.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
