"""`cotenant trace ...` and `cotenant replay` through the real CLI entry point."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from orchestrator.cli import main
from tests.stubs.timing import StubConfig, StubServer
from workloads.tokenizer import build_tiny_tokenizer
from workloads.trace import load_trace

DATA = Path(__file__).parents[1] / "data"
CONV = DATA / "azure_llm_2023_conv_head.csv"


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def stub() -> Iterator[StubServer]:
    with StubServer(StubConfig(ttft_s=0.01, itl_s=0.002)) as s:
        yield s


def test_stats(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(["trace", "stats", str(CONV)], capsys)
    assert code == 0 and "azure" in out and "80" in out


def test_synth_then_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "s.parquet"
    args = ["trace", "synth", "--process", "constant", "--rate", "4", "--duration", "5",
            "--input-tokens", "uniform:10:20", "--output-tokens", "8", "--tenants", "a,b",
            "--seed", "0", "--out", str(out_file)]  # fmt: skip
    code, _, err = _cli(args, capsys)
    assert code == 0, err
    df = load_trace(out_file)
    assert df.height == 40 and set(df["tenant"]) == {"a", "b"}
    assert df["input_tokens"].min() >= 10 and df["output_tokens"].unique().to_list() == [8]


def test_import_with_transforms_and_assignment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "i.jsonl"
    args = ["trace", "import", str(CONV), "--out", str(out_file), "--window", "0:20",
            "--time-scale", "0.5", "--assign", "round-robin", "--tenants", "x,y"]  # fmt: skip
    code, _, err = _cli(args, capsys)
    assert code == 0, err
    df = load_trace(out_file)
    assert df["arrival_s"].max() < 10 and set(df["tenant"]) == {"x", "y"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trace", "stats", "/nonexistent/t.csv"], "no such file"),
        (
            [
                "trace",
                "synth",
                "--rate",
                "1",
                "--duration",
                "1",
                "--input-tokens",
                "wide",
                "--out",
                "x.parquet",
            ],
            "length",
        ),
        (["trace", "import", "IN", "--out", "o.parquet", "--assign", "weights:a=x"], "weights"),
        (
            ["trace", "synth", "--rate", "0", "--duration", "1", "--out", "x.parquet"],
            "greater than 0",
        ),
        (["replay", "IN", "--target", "nourl", "--out", "o"], "TENANT=http"),
    ],
)
def test_clean_errors(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(CONV) if a == "IN" else a for a in args]
    args = [
        str(tmp_path / a) if a.endswith((".parquet", "o")) and "/" not in a else a for a in args
    ]
    code, out, err = _cli(args, capsys)
    assert code == 2
    assert message in err and "Traceback" not in err + out


def test_bad_row_error_names_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(CONV.read_text() + "2023-11-16 18:17:40.0,lots,3\n")
    code, _, err = _cli(["trace", "stats", str(bad)], capsys)
    assert code == 2 and "line 82" in err and "ContextTokens" in err
    code, out, err = _cli(["trace", "stats", str(bad), "--skip-bad-rows"], capsys)
    assert code == 0 and "skipped 1 malformed row" in err


def test_replay_against_the_stub(
    stub: StubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tok = build_tiny_tokenizer(tmp_path / "tok")
    trace = tmp_path / "t.parquet"
    assert _cli(["trace", "synth", "--process", "constant", "--rate", "20", "--duration", "1",
                 "--output-tokens", "5", "--out", str(trace)], capsys)[0] == 0  # fmt: skip
    out = tmp_path / "run"
    code, stdout, err = _cli(
        ["replay", str(trace), "--target", f"a={stub.base_url},tokenizer={tok}", "--out", str(out),
         "--warmup", "0.2", "--quiet"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    rows = pl.read_parquet(out / "requests.parquet")
    assert rows.height == 20 and rows["status"].unique().to_list() == ["ok"]
    assert rows["output_tokens"].unique().to_list() == [5]
    assert "20/20 sent" in stdout and "dispatch lag" in stdout
    code, _, err = _cli(
        ["replay", str(trace), "--target", f"a={stub.base_url}", "--out", str(out)], capsys
    )
    assert code == 2 and "exists" in err
