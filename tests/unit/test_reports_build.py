"""The whole report from a synthetic run directory (tests/unit/runfixtures.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from reports import ReportError, analyze, build_report, compare_runs, summary_markdown
from reports.analysis import paired_half_widths
from reports.build import ReportPaths
from tests.unit.runfixtures import DEFAULT_HARM, DEFAULT_TENANTS, RunSpec, write_run

FIGURES = ("strategy_map", "interference_heatmap", "throughput_goodput", "cdf_e2e", "cdf_ttft")
TABLES = ("experiments", "device", "groups", "device_groups", "interference", "interference_pairs",
          "strategies", "bottleneck", "failures", "batch_limits", "conditions", "precision")
# "(lo–hi)" as the reports print an interval
INTERVAL = re.compile(r"\(([\d.,]+)–([\d.,]+)\)")


def assert_no_interval_wider_than_x4(text: str) -> int:
    """Every interval printed as numbers has hi / lo <= 4; returns how many there are."""
    found = INTERVAL.findall(text)
    for lo, hi in found:
        lo_f, hi_f = float(lo.replace(",", "")), float(hi.replace(",", ""))
        assert lo_f > 0 and hi_f / lo_f <= 4.0, f"interval ({lo}–{hi}) printed as numbers"
    return len(found)


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
    assert hurt["tenant_verdict"] == "hurts" and hurt["slowdown"] > 1.3  # the fixture slows llama-a 1.6x
    tpot = a.interference.filter((pl.col("group_id") == "llama-a+llama-b__all__x1")
                                 & (pl.col("tenant") == "llama-a") & (pl.col("metric") == "tpot_p50_s")).row(0, named=True)
    assert tpot["verdict"] == "hurts" and tpot["n"] == 2 and tpot["slowdown"] == pytest.approx(1.6, rel=0.1)
    assert tpot["method"] == "paired t, pooled variance"  # two blocks: the residual variance is pooled
    # two blocks are too few for a tail figure: those stay not established
    tail = a.interference.filter(pl.col("metric").is_in(["ttft_p99_s", "e2e_p99_s"]) & pl.col("headline"))
    assert set(tail["verdict"]) == {"not established"}
    enc = m.filter((pl.col("victim") == "minilm") & (pl.col("co_tenant") == "llama-a")).row(0, named=True)
    assert enc["tenant_verdict"] == "not established"  # the encoder is left alone, but 2 blocks cannot show it
    s = a.strategies.filter(pl.col("group_id") == "llama-a+llama-b__all__x1").row(0, named=True)
    assert s["classification"] == "hurts" and s["rank"] is not None
    unranked = a.strategies.filter((pl.col("n_active") > 1) & (pl.col("classification") == "not established"))
    assert unranked.height and unranked["rank"].null_count() == unranked.height
    assert a.family_size == a.interference.filter(pl.col("in_family")).height > 0
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
    assert not re.search(r"\bgain\b", html) and "running them apart" not in html
    assert "Holm correction" in html and "margin 10.0%" in html and "MDE" in html
    assert 'id="unranked-table"' in html and "Not established (not ranked)" in html
    assert assert_no_interval_wider_than_x4(html) > 0
    assert "llama-b+minilm__all__x1__r1" in html  # the failure is listed
    assert "580.65.06" in html  # the driver, in the environment


def test_summary_markdown(built: ReportPaths, gpu_run: Path) -> None:
    md = built.summary_md.read_text()
    assert md.startswith("# cotenant report: gpu-fixture")
    assert "| # | set | verdict |" in md
    assert "Hurts —" in md and "llama-a + llama-b" in md
    assert "## Not established (not ranked)" in md and not re.search(r"\bgain\b", md)
    assert "Holm correction" in md and "headline figures tested" in md
    assert "## Did not complete" in md
    assert_no_interval_wider_than_x4(md)
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


def test_compare_runs(tmp_path: Path) -> None:
    calm = {k: 1.0 for k in DEFAULT_HARM}
    pairs = ("isolated", "pairs")
    a = write_run(tmp_path, RunSpec(name="ts", repetitions=5, error_share=0.002, failed={}, strategy=pairs))
    b = write_run(tmp_path, RunSpec(name="mps", sharing="mps", harm=calm, seed=1, repetitions=5,
                                    error_share=0.002, failed={}, strategy=pairs))
    html = compare_runs(a, b, tmp_path / "cmp")
    assert html == tmp_path / "cmp" / "compare.html"
    t = pl.read_parquet(tmp_path / "cmp" / "tables" / "compare.parquet")

    def row(tbl: pl.DataFrame, m: str) -> dict[str, object]:
        return tbl.filter((pl.col("group_id") == "llama-a+llama-b__all__x1") & (pl.col("tenant") == "llama-a")
                          & (pl.col("metric") == m)).row(0, named=True)

    r = row(t, "tpot_p50_s")
    assert r["method"] == "paired t"  # the same spec seed and ids: the same arrivals in both
    assert r["ratio_b_a"] < 0.8 and r["change"] == "better in B"
    page = html.read_text()
    assert 'id="compare-table"' in page and "mps" in page and "time-slice" in page
    assert not re.search(r"\bgain\b", page)
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert md.startswith("# cotenant compare") and "Holm correction" in md
    assert_no_interval_wider_than_x4(page + md)
    # another order seed: independent campaigns, Welch on the log figures
    c = json.loads((b / "campaign.json").read_text())
    c["spec"]["experiment"]["seed"] = 5
    (b / "campaign.json").write_text(json.dumps(c))
    compare_runs(a, b, tmp_path / "cmp2")
    u = row(pl.read_parquet(tmp_path / "cmp2" / "tables" / "compare.parquet"), "tpot_p50_s")
    assert u["method"].startswith("Welch") and u["ratio_lo"] < u["ratio_b_a"] < u["ratio_hi"]
    assert "unpaired (independent campaigns)" in (tmp_path / "cmp2" / "compare.md").read_text()


def test_compare_never_prints_a_wide_interval(tmp_path: Path) -> None:
    a = write_run(tmp_path, RunSpec(name="n1", repetitions=2, noise=0.8, failed={}, strategy=("isolated", "pairs")))
    b = write_run(tmp_path, RunSpec(name="n2", repetitions=2, noise=0.8, failed={}, seed=4, strategy=("isolated", "pairs")))
    c = json.loads((b / "campaign.json").read_text())
    c["spec"]["experiment"]["seed"] = 9
    (b / "campaign.json").write_text(json.dumps(c))
    compare_runs(a, b, tmp_path / "cmp")
    text = (tmp_path / "cmp" / "compare.html").read_text() + (tmp_path / "cmp" / "compare.md").read_text()
    assert "not estimable with 2 blocks" in text
    assert_no_interval_wider_than_x4(text)
    t = pl.read_parquet(tmp_path / "cmp" / "tables" / "compare.parquet")
    assert set(t.filter(pl.col("ratio_hi") / pl.col("ratio_lo") > 4)["change"]) <= {"not established"}
    # 2% of requests fail: many per-run p99s are infinite (censored), and get no interval
    cens = t.filter(pl.col("method").str.starts_with("censored"))
    assert cens.height and cens["ratio_lo"].null_count() == cens.height
    assert set(cens["change"]) == {"not established"}


def test_report_settings_and_precision_come_from_the_spec(tmp_path: Path) -> None:
    run = write_run(tmp_path, RunSpec(name="prec", repetitions=3, error_share=0.0, failed={},
                                      strategy=("isolated", "pairs")))
    c = json.loads((run / "campaign.json").read_text())
    c["spec"]["report"] = {"margin": 0.2, "multiplicity": "bh", "pool_variance": "never"}
    c["spec"]["experiment"]["precision"] = {"half_width": 0.05, "max_repetitions": 40}
    (run / "campaign.json").write_text(json.dumps(c))
    paths = build_report(run)
    a = analyze(run)
    assert a.settings.margin == 0.2 and a.settings.multiplicity == "bh"
    assert set(a.interference.filter(pl.col("n") > 0)["method"]) <= {"paired t", "too few blocks for a tail"}
    html = paths.html.read_text()
    assert "Benjamini-Hochberg correction" in html and "margin 20.0%" in html
    assert 'id="precision-table"' in html and "primary figures reached the target" in html
    p = pl.read_parquet(paths.tables_dir / "precision.parquet")
    assert set(p["figure"]) == {"tpot_p50_s", "e2e_p50_s"} and p.height == 6  # 3 pairs x 2 tenants
    assert p["reached"].to_list() == (p["log_half_width"] <= 0.05).to_list()
    hw = paired_half_widths(run)
    assert hw.select("group_id", "tenant", "figure", "n", "log_half_width").sort("group_id", "tenant").equals(
        p.select("group_id", "tenant", "figure", "n", "log_half_width").sort("group_id", "tenant"))


def test_conditions_from_the_manifests(tmp_path: Path) -> None:
    from reports.conditions import conditions_frame, summary
    from rundir.reader import ExperimentRecord, RunDir

    def rec(eid: str, **m: object) -> ExperimentRecord:
        return ExperimentRecord(eid, tmp_path / eid, {"experiment_id": eid, "repetition": 0, **m}, "completed", None)

    run = RunDir(tmp_path, {}, [
        rec("a__all__x1__r0", server_lifetime=0, idle_gate={"idle": True, "waited_s": 0.4, "busy": {}},
            warmup={"a": {"settled": True}}),
        rec("a__all__x1__r1", server_lifetime=1, idle_gate={"idle": False, "waited_s": 30.0,
                                                           "busy": {"a": "2 running"}},
            warmup={"a": {"settled": False}}),
        rec("a__all__x1__r2"),  # an older manifest: nothing recorded
    ])
    c = conditions_frame(run)
    assert c["idle"].to_list() == [True, False, None] and c["server_lifetime"].to_list() == [0, 1, None]
    assert c["busy"].to_list() == [None, "a: 2 running", None]
    text = " ".join(summary(c))
    assert "2 server lifetimes" in text and "1 of 2 experiments did not start idle" in text
    assert "a__all__x1__r1" in text and "warm-up did not settle" in text
    assert summary(conditions_frame(RunDir(tmp_path, {}, [rec("b__all__x1__r0")]))) == []
