"""The whole report from a synthetic run directory (tests/unit/runfixtures.py)."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from reports import ReportError, analyze, build_report, compare_runs, summary_markdown
from reports.build import ReportPaths
from tests.unit.runfixtures import DEFAULT_HARM, DEFAULT_TENANTS, RunSpec, write_run

FIGURES = ("strategy_map", "interference_heatmap", "throughput_goodput", "cdf_e2e", "cdf_ttft")
TABLES = ("experiments", "device", "groups", "device_groups", "interference", "interference_pairs",
          "strategies", "bottleneck", "failures")


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("runs"), RunSpec(name="gpu-fixture"))


@pytest.fixture(scope="module")
def built(gpu_run: Path) -> ReportPaths:
    return build_report(gpu_run)


def test_every_output_is_written(built: ReportPaths, gpu_run: Path) -> None:
    assert built.html == gpu_run / "report.html" and built.html.is_file()
    assert built.summary_md == gpu_run / "summary.md" and built.summary_md.is_file()
    for t in TABLES:
        assert (built.tables_dir / f"{t}.parquet").is_file()
        assert (built.tables_dir / f"{t}.csv").is_file()
    for f in FIGURES:
        for ext in ("svg", "png"):
            assert (built.figures_dir / f"{f}.{ext}").stat().st_size > 1000
    timelines = sorted(p.name for p in built.figures_dir.glob("timeline_*.svg"))
    assert len(timelines) == 13  # every completed experiment
    assert not list(gpu_run.rglob("*.tmp"))  # atomic writes leave nothing behind


def test_tables_follow_the_campaign(built: ReportPaths) -> None:
    exp = pl.read_parquet(built.tables_dir / "experiments.parquet")
    assert exp["experiment_id"].n_unique() == 13
    assert "llama-b+minilm__all__x1__r1" not in set(exp["experiment_id"])
    fails = pl.read_csv(built.tables_dir / "failures.csv")
    assert fails["experiment_id"].to_list() == ["llama-b+minilm__all__x1__r1"]
    assert "exited with code 1" in fails["reason"][0]
    strat = pl.read_parquet(built.tables_dir / "strategies.parquet")
    assert strat.height == 7  # 3 alone + 3 pairs + all
    assert strat.filter(pl.col("group_id") == "llama-b+minilm__all__x1")["repetitions"][0] == 1


def test_known_interference_is_found(gpu_run: Path) -> None:
    a = analyze(gpu_run)
    m = a.matrix
    hurt = m.filter((pl.col("victim") == "llama-a") & (pl.col("co_tenant") == "llama-b")).row(0, named=True)
    assert hurt["significant"] and hurt["slowdown"] > 1.3  # the fixture slows llama-a by 1.6x
    enc = m.filter((pl.col("victim") == "minilm") & (pl.col("co_tenant") == "llama-a")).row(0, named=True)
    assert enc["slowdown"] < 1.2  # and leaves the encoder alone
    s = a.strategies.filter(pl.col("group_id") == "llama-a+llama-b__all__x1").row(0, named=True)
    assert s["classification"] == "hurts"
    assert s["gain"] == pytest.approx(2.0, rel=0.1)
    # alone, no fixture tenant reaches a limit (DRAM 70% < 80%, GPU busy 65-70% < 95%)
    assert set(a.bottleneck["binding"]) == {"nothing saturated"}
    assert a.bottleneck.filter(pl.col("tenant") == "llama-a")["nearest"][0] == "memory bandwidth"


def test_html_is_self_contained(built: ReportPaths) -> None:
    html = built.html.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert 'id="summary-table"' in html
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    for f in FIGURES:
        assert f'data-figure="{f}"' in html
    assert html.count("<svg") >= len(FIGURES) + 7  # and one timeline per set
    ids = re.findall(r'\sid="([^"]+)"', html)
    dup = {i for i in ids if ids.count(i) > 1}
    assert not dup, f"ids repeated across inline SVGs: {sorted(dup)[:5]}"


def test_html_reads_top_down(built: ReportPaths) -> None:
    html = built.html.read_text()
    order = [html.index(s) for s in ('id="summary"', 'id="sets"', 'id="interference"', 'id="tenants"',
                                      'id="failures"', 'id="environment"')]
    assert order == sorted(order)
    assert "What was run." in html and "NVIDIA H100 80GB HBM3" in html
    assert "running them apart" in html
    assert "llama-b+minilm__all__x1__r1" in html  # the failure is listed
    assert "580.65.06" in html  # the driver, in the environment


def test_summary_markdown(built: ReportPaths, gpu_run: Path) -> None:
    md = built.summary_md.read_text()
    assert md.startswith("# cotenant report: gpu-fixture")
    assert "| # | set | verdict |" in md
    assert "Hurts —" in md and "llama-a + llama-b" in md
    assert "## Did not complete" in md
    assert summary_markdown(gpu_run) == md


def test_report_into_another_folder(tmp_path: Path) -> None:
    from orchestrator.cli.reports import report

    small = write_run(tmp_path, RunSpec(name="small", strategy=("isolated",), repetitions=1, failed={}))
    out = tmp_path / "elsewhere"
    res = CliRunner().invoke(report, [str(small), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"report:   {out / 'report.html'}" in res.output
    assert (out / "summary.md").is_file() and (out / "tables" / "strategies.csv").is_file()


def test_cli_user_errors_are_one_line(tmp_path: Path) -> None:
    from orchestrator.cli import main

    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path)])
    assert e.value.code == 2


def test_nothing_completed(tmp_path: Path) -> None:
    rs = RunSpec(name="dead", strategy=("isolated",), repetitions=1,
                 failed={f"{t}__all__x1__r0": "boom" for t in ("llama-a", "llama-b", "minilm")})
    run = write_run(tmp_path, rs)
    with pytest.raises(ReportError, match="no completed experiment"):
        build_report(run)


def test_host_run_has_no_gpm_and_draws_cpu(tmp_path: Path) -> None:
    rs = RunSpec(name="cpu-fixture", gpu=False, tenants=DEFAULT_TENANTS[::2], strategy=("isolated", "all"),
                 repetitions=2, failed={})
    paths = build_report(write_run(tmp_path, rs))
    b = pl.read_parquet(paths.tables_dir / "bottleneck.parquet")
    # the fixture's decoder engine uses 0.9 core alone (it binds); the encoder's batcher is
    # not one thread, and the host is at 30%: nothing saturated
    assert dict(zip(b["tenant"], b["binding"], strict=True)) == {
        "llama-a": "engine CPU", "minilm": "nothing saturated"}
    assert all("GPU" not in r for r in b["reading"])
    html = paths.html.read_text()
    assert "host CPU" in html and "engine CPU binds (engine CPU 0.9 core" in html
    assert 'data-figure="interference_heatmap"' in html  # "all" of two tenants is a pair
    assert (paths.figures_dir / "timeline_llama-a__all__x1__r0.png").is_file()
    assert "llama-b" not in paths.summary_md.read_text()


def test_compare_runs(gpu_run: Path, tmp_path: Path) -> None:
    calm = {k: 1.0 for k in DEFAULT_HARM}
    b = write_run(tmp_path, RunSpec(name="mps-fixture", sharing="mps", harm=calm, seed=1))
    html = compare_runs(gpu_run, b, tmp_path / "cmp")
    assert html == tmp_path / "cmp" / "compare.html"
    t = pl.read_parquet(tmp_path / "cmp" / "tables" / "compare.parquet")
    r = t.filter((pl.col("group_id") == "llama-a+llama-b__all__x1") & (pl.col("tenant") == "llama-a")
                 & (pl.col("metric") == "ttft_p99_s")).row(0, named=True)
    assert r["ratio_b_a"] < 0.8 and r["change"] == "better in B"
    page = html.read_text()
    assert 'id="compare-table"' in page and "mps" in page and "time-slice" in page
    assert (tmp_path / "cmp" / "compare.md").read_text().startswith("# cotenant compare")
