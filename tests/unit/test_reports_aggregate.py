"""Per experiment x tenant figures of a small run built row by row, checked by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from reports.aggregate import experiment_table
from reports.request_figures import latency_cdf
from rundir.errors import RunDirError
from rundir.reader import load_run
from tests.unit.runfixtures import manifest, request_row, write_campaign, write_experiment

TENANTS = {
    "dec": {"kind": "vllm", "model": "tiny-llama"},
    "enc": {"kind": "encoder", "model": "all-minilm-l6-v2"},
}
SPEC = {
    "name": "hand",
    "tenants": [{"name": "dec", "kind": "vllm", "model": "tiny-llama"},
                {"name": "enc", "kind": "encoder", "model": "all-minilm-l6-v2"}],
    "experiment": {"warmup_s": 2.0, "duration_s": 10.0, "repetitions": 2, "residency": "shared"},
}
SLO = {"dec": {"ttft_ms": 250.0, "tpot_ms": 150.0}, "enc": {"e2e_ms": 25.0}}


def _m(eid: str, active: list[str], rep: int = 0, status: str = "completed", **kw: Any) -> dict[str, Any]:
    return manifest(eid, "hand", resident=["dec", "enc"], active=active, tenants=TENANTS,
                    repetition=rep, status=status, slo={t: SLO[t] for t in active}, **kw)


def dec_rows() -> list[dict[str, Any]]:
    """Window [2, 12). In-window ok rows: TTFT .1 .2 .3 .2, E2E .5 1.0 .7 2.0, outputs 5 5 3 1."""
    return [
        request_row("dec", 0, scheduled_s=1.0, ttft_s=9.0, e2e_s=9.5, output_tokens=5, itl_s=[9] * 4),  # warm-up
        request_row("dec", 1, scheduled_s=2.0, sent_s=2.05, ttft_s=0.1, e2e_s=0.5, output_tokens=5, itl_s=[0.1] * 4),
        request_row("dec", 2, scheduled_s=3.0, ttft_s=0.2, e2e_s=1.0, output_tokens=5, itl_s=[0.2] * 4),
        request_row("dec", 3, scheduled_s=4.0, ttft_s=0.3, e2e_s=0.7, output_tokens=3, itl_s=[0.2] * 2),
        request_row("dec", 4, scheduled_s=5.0, ttft_s=0.2, e2e_s=2.0, output_tokens=1, itl_s=[]),
        request_row("dec", 5, scheduled_s=6.0, e2e_s=0.01, status="error"),
        request_row("dec", 6, scheduled_s=12.5, ttft_s=9.0, e2e_s=9.5, output_tokens=5, itl_s=[9] * 4),  # after
    ]


def enc_rows() -> list[dict[str, Any]]:
    return [
        request_row("enc", i, scheduled_s=3.0 + i, e2e_s=e2e, kind="embedding", batch_size=b)
        for i, (e2e, b) in enumerate([(0.01, 4), (0.02, 4), (0.03, 2)])
    ]


def telemetry_rows() -> list[dict[str, Any]]:
    dev = [(1.0, 10.0, 50.0), (2.0, 20.0, 100.0), (4.0, 40.0, 150.0), (6.0, 60.0, 220.0), (12.0, 99.0, 900.0)]
    rows = [{"t_s": t, "scope": "device", "source": "nvml", "gpu_util_pct": u, "energy_j": en,
             "mem_used_bytes": 1000 * int(u), "gpm_sm_util_pct": None} for t, u, en in dev]
    rows += [{"t_s": t, "scope": "dec", "source": "nvml", "proc_gpu_mem_bytes": m}
             for t, m in [(1.0, 1), (3.0, 300), (5.0, 500)]]
    return rows


def server_rows() -> list[dict[str, Any]]:
    lab = json.dumps({"engine": "0"})
    return [
        {"t_s": 2.0, "tenant": "dec", "metric": "vllm:kv_cache_usage_perc", "labels": lab, "value": 0.2},
        {"t_s": 3.0, "tenant": "dec", "metric": "vllm:kv_cache_usage_perc", "labels": lab, "value": 0.4},
        {"t_s": 1.0, "tenant": "dec", "metric": "vllm:num_preemptions_total", "labels": lab, "value": 1.0},
        {"t_s": 2.0, "tenant": "dec", "metric": "vllm:num_preemptions_total", "labels": lab, "value": 5.0},
        {"t_s": 3.0, "tenant": "dec", "metric": "vllm:num_preemptions_total", "labels": lab, "value": 7.0},
        {"t_s": 11.0, "tenant": "dec", "metric": "vllm:num_preemptions_total", "labels": lab, "value": 9.0},
    ]


@pytest.fixture(scope="module")
def hand_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hand") / "hand"
    ids = ["dec__all__x1__r0", "enc__all__x1__r0", "dec+enc__all__x1__r0", "dec+enc__all__x1__r1",
           "dec+enc__all__x1__r2"]
    write_campaign(d, SPEC, ids)
    write_experiment(d, _m(ids[0], ["dec"]), dec_rows(), telemetry_rows(), server_rows())
    write_experiment(d, _m(ids[1], ["enc"]), enc_rows())
    write_experiment(d, _m(ids[2], ["dec", "enc"]), [])  # completed, no requests at all
    errors = [request_row(t, i, scheduled_s=3.0 + i, e2e_s=0.01, status=s,
                          kind="embedding" if t == "enc" else "completion")
              for i, (t, s) in enumerate([("dec", "error"), ("dec", "timeout"), ("enc", "dropped")])]
    write_experiment(d, _m(ids[3], ["dec", "enc"], rep=1), errors)
    write_experiment(d, _m(ids[4], ["dec", "enc"], rep=2, status="interrupted", reason="Ctrl-C"))
    return d


@pytest.fixture(scope="module")
def table(hand_run: Path) -> pl.DataFrame:
    exp, _ = experiment_table(load_run(hand_run))
    return exp


def row(table: pl.DataFrame, eid: str, tenant: str) -> dict[str, Any]:
    return table.filter((pl.col("experiment_id") == eid) & (pl.col("tenant") == tenant)).row(0, named=True)


def test_only_completed_experiments_count(hand_run: Path, table: pl.DataFrame) -> None:
    run = load_run(hand_run)
    assert [e.id for e in run.not_completed] == ["dec+enc__all__x1__r2"]
    assert run.not_completed[0].reason == "Ctrl-C"
    assert "dec+enc__all__x1__r2" not in set(table["experiment_id"])
    assert table.height == 1 + 1 + 2 + 2


def test_counts_rates_and_goodput(table: pl.DataFrame) -> None:
    r = row(table, "dec__all__x1__r0", "dec")
    assert (r["requests"], r["ok"], r["errors"]) == (5, 4, 1)  # warm-up and late rows left out
    assert r["error_rate"] == pytest.approx(0.2)
    assert r["throughput_rps"] == pytest.approx(0.4)  # 4 ok / 10 s
    assert r["output_tps"] == pytest.approx(1.4)  # (5 + 5 + 3 + 1) / 10 s
    assert r["embeddings_ps"] is None
    # SLO ttft 250 ms, tpot 150 ms: r1 meets both; r2 TPOT .2; r3 TTFT .3; r4 one token (no TPOT)
    assert r["met"] == 2
    assert r["goodput_rps"] == pytest.approx(0.2)
    assert r["slo_attainment"] == pytest.approx(0.4)


def test_latency_statistics(table: pl.DataFrame) -> None:
    r = row(table, "dec__all__x1__r0", "dec")
    # means over the 4 ok requests; percentiles also count the error as +inf (censoring)
    assert r["ttft_mean_s"] == pytest.approx(0.2)  # .1 .2 .3 .2
    assert r["ttft_p50_s"] == pytest.approx(0.2)  # .1 .2 .2 .3 inf
    assert r["ttft_p90_s"] == math.inf  # position 3.6: between .3 and inf
    assert r["ttft_p99_s"] == math.inf
    assert r["tpot_mean_s"] == pytest.approx((0.1 + 0.2 + 0.2) / 3)  # .4/4, .8/4, .4/2
    assert r["tpot_p50_s"] == pytest.approx(0.2)  # .1 .2 .2 inf (one-token answer: no TPOT)
    assert r["e2e_mean_s"] == pytest.approx(1.05)  # .5 1.0 .7 2.0
    assert r["e2e_p50_s"] == pytest.approx(1.0)  # .5 .7 1.0 2.0 inf
    assert r["e2e_incl_queue_mean_s"] == pytest.approx((0.55 + 1.0 + 0.7 + 2.0) / 4)
    assert r["send_delay_mean_s"] == pytest.approx(0.05 / 5)
    assert r["itl_mean_s"] == pytest.approx(0.16)  # 4 x .1, 6 x .2
    assert r["itl_p50_s"] == pytest.approx(0.2)
    assert r["itl_p90_s"] == pytest.approx(0.2)
    assert r["overrun_s"] == pytest.approx(7.0 - 12.0)  # last done 5 + 2 = 7, window end 12


def test_encoder_figures(table: pl.DataFrame) -> None:
    r = row(table, "enc__all__x1__r0", "enc")
    assert r["embeddings_ps"] == pytest.approx(1.0)  # (4 + 4 + 2) / 10 s
    assert r["output_tps"] is None
    assert r["ttft_mean_s"] is None and r["tpot_mean_s"] is None
    assert r["e2e_p50_s"] == pytest.approx(0.02)
    assert r["goodput_rps"] == pytest.approx(0.2)  # 10 and 20 ms meet 25 ms, 30 ms does not


def test_empty_experiment_has_rows_with_zero_counts(table: pl.DataFrame) -> None:
    for t in ("dec", "enc"):
        r = row(table, "dec+enc__all__x1__r0", t)
        assert (r["requests"], r["ok"], r["errors"]) == (0, 0, 0)
        assert r["throughput_rps"] == 0.0 and r["goodput_rps"] == 0.0
        assert r["error_rate"] is None and r["slo_attainment"] is None
        assert r["e2e_p99_s"] is None and r["itl_mean_s"] is None


def test_all_error_experiment(table: pl.DataFrame) -> None:
    r = row(table, "dec+enc__all__x1__r1", "dec")
    assert (r["requests"], r["ok"], r["errors"]) == (2, 0, 2)
    assert (r["status_error"], r["status_timeout"]) == (1, 1)
    assert r["error_rate"] == 1.0 and r["slo_attainment"] == 0.0 and r["goodput_rps"] == 0.0
    assert r["e2e_mean_s"] is None
    # every request failed: each percentile is infinite (censored), not missing
    assert r["e2e_p50_s"] == math.inf and r["ttft_p99_s"] == math.inf
    e = row(table, "dec+enc__all__x1__r1", "enc")
    assert e["e2e_p50_s"] == math.inf and e["ttft_p50_s"] is None  # an embedding has no TTFT
    assert (e["requests"], e["status_dropped"], e["error_rate"]) == (1, 1, 1.0)


def test_telemetry_and_server_metrics_in_window(hand_run: Path, table: pl.DataFrame) -> None:
    _, dev = experiment_table(load_run(hand_run))
    d = dev.filter(pl.col("experiment_id") == "dec__all__x1__r0").row(0, named=True)
    assert d["device_samples"] == 3  # t = 2, 4, 6; 1 is warm-up, 12 is past the end
    assert d["gpu_util_mean_pct"] == pytest.approx(40.0)
    assert d["energy_j"] == pytest.approx(120.0)  # 220 - 100
    assert d["mem_used_max_bytes"] == pytest.approx(60000.0)
    assert d["gpm_sm_util_mean_pct"] is None
    assert d["telemetry_source"] == "nvml"
    r = row(table, "dec__all__x1__r0", "dec")
    assert r["proc_gpu_mem_max_bytes"] == pytest.approx(500.0)
    assert r["proc_gpu_mem_mean_bytes"] == pytest.approx(400.0)
    assert r["kv_cache_usage_mean"] == pytest.approx(0.3)
    assert r["preemptions"] == pytest.approx(4.0)  # 9 - 5 inside the window


def test_latency_cdf_pools_repetitions(hand_run: Path) -> None:
    cdf = latency_cdf(load_run(hand_run), "e2e_s")
    d = cdf.filter((pl.col("group_id") == "dec__all__x1") & (pl.col("tenant") == "dec"))
    assert d.filter(pl.col("p") == 0.0)["value_s"][0] == pytest.approx(0.5)
    assert d.filter(pl.col("p") == 1.0)["value_s"][0] == pytest.approx(2.0)
    assert d.filter(pl.col("p") == 0.5)["value_s"][0] == pytest.approx(0.85)


def test_a_file_with_other_stored_types_is_cast(tmp_path: Path) -> None:
    """Float token counts, integer gaps, an all-null column, no experiment_id column."""
    d = tmp_path / "odd"
    write_campaign(d, SPEC, ["dec__all__x1__r0"])
    write_experiment(d, _m("dec__all__x1__r0", ["dec"]))
    rows = dec_rows()
    df = pl.DataFrame({k: [r[k] for r in rows] for k in rows[0]}).with_columns(
        pl.col("output_tokens").cast(pl.Float64), pl.lit(None).alias("first_token_s_null")
    )
    df.write_parquet(d / "dec__all__x1__r0" / "requests.parquet")
    exp, _ = experiment_table(load_run(d))
    assert exp["output_tps"][0] == pytest.approx(1.4)


@pytest.mark.parametrize("which", ["campaign", "manifest"])
def test_unknown_schema_version_names_the_file(tmp_path: Path, which: str) -> None:
    d = tmp_path / "v"
    write_campaign(d, SPEC, ["dec__all__x1__r0"], schema_version=2 if which == "campaign" else 1)
    m = _m("dec__all__x1__r0", ["dec"]) | ({"schema_version": 99} if which == "manifest" else {})
    write_experiment(d, m, dec_rows())
    with pytest.raises(RunDirError) as e:
        load_run(d)
    name = "campaign.json" if which == "campaign" else "dec__all__x1__r0/manifest.json"
    assert name in str(e.value) and "schema_version" in str(e.value)


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="no campaign.json"):
        load_run(tmp_path)
    with pytest.raises(RunDirError, match="no such run directory"):
        load_run(tmp_path / "nope")
    (tmp_path / "campaign.json").write_text("{not json")
    with pytest.raises(RunDirError, match="not valid JSON"):
        load_run(tmp_path)


def test_completed_without_requests_is_broken(tmp_path: Path) -> None:
    d = tmp_path / "b"
    write_campaign(d, SPEC, ["dec__all__x1__r0", "enc__all__x1__r0"])
    write_experiment(d, _m("dec__all__x1__r0", ["dec"]))
    run = load_run(d)
    assert [(e.id, e.status) for e in run.experiments] == [
        ("dec__all__x1__r0", "broken"),
        ("enc__all__x1__r0", "missing"),
    ]
