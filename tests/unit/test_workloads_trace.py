"""Traces: the schema, Parquet/JSONL round trips, validation, statistics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workloads.errors import TraceFormatError
from workloads.trace import (
    TRACE_SCHEMA,
    load_trace,
    make_trace,
    normalize_trace,
    save_trace,
    trace_period,
    trace_rate,
    trace_stats,
)


def test_make_trace_sorts_and_fills_defaults() -> None:
    df = make_trace([2.0, 0.5, 1.0], input_tokens=[1, 2, 3], output_tokens=[4, 5, 6])
    assert df.columns == list(TRACE_SCHEMA)
    assert df["arrival_s"].to_list() == [0.5, 1.0, 2.0]
    assert df["input_tokens"].to_list() == [2, 3, 1]
    assert df["kind"].to_list() == ["completion"] * 3
    assert df["tenant"].null_count() == 3
    assert df["batch_size"].null_count() == 3


def test_embedding_rows_get_a_batch_size() -> None:
    df = make_trace([0.0, 1.0], input_tokens=[8, 8], output_tokens=[0, 0], kind="embedding")
    assert df["batch_size"].to_list() == [1, 1]


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("arrival_s", [0.0, -1.0], "negative"),
        ("arrival_s", [0.0, math.inf], "finite"),
        ("input_tokens", [1, -3], "negative"),
        ("kind", ["completion", "chat"], "not one of"),
    ],
)
def test_validation_names_row_and_column(column: str, values: list, message: str) -> None:
    cols = {
        "arrival_s": [0.0, 1.0],
        "input_tokens": [1, 2],
        "output_tokens": [1, 2],
        "kind": ["completion"] * 2,
    }
    cols[column] = values
    with pytest.raises(TraceFormatError, match=message) as e:
        normalize_trace(pl.DataFrame(cols), source="t.parquet")
    assert e.value.column == column
    assert "row 2" in str(e.value)


def test_missing_required_column() -> None:
    with pytest.raises(TraceFormatError, match="output_tokens"):
        normalize_trace(pl.DataFrame({"arrival_s": [0.0], "input_tokens": [1]}))


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_round_trip_keeps_extra_columns(tmp_path: Path, suffix: str) -> None:
    df = make_trace(
        [0.0, 0.25],
        input_tokens=[10, 20],
        output_tokens=[3, 4],
        tenant=["a", None],
        prompt=["hello", None],
        extra={"Model": ["ChatGPT", "GPT-4"]},
    )
    path = save_trace(df, tmp_path / f"t{suffix}")
    back = load_trace(path)
    assert back.equals(df)


def test_save_refuses_unknown_suffix(tmp_path: Path) -> None:
    df = make_trace([0.0], input_tokens=[1], output_tokens=[1])
    with pytest.raises(TraceFormatError, match="cannot tell how to write"):
        save_trace(df, tmp_path / "t.csv")


def test_jsonl_errors_name_line_and_column(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text(
        '{"arrival_s": 0, "input_tokens": 1, "output_tokens": 1}\n'
        "\n"
        '{"arrival_s": 1, "input_tokens": "many", "output_tokens": 1}\n'
    )
    with pytest.raises(TraceFormatError) as e:
        load_trace(p)
    assert (e.value.line, e.value.column) == (3, "input_tokens")


def test_stats_of_a_constant_trace() -> None:
    df = make_trace(
        np.arange(11) * 0.5, input_tokens=[100] * 11, output_tokens=[10] * 11, tenant="a"
    )
    s = trace_stats(df).row(0, named=True)
    assert s["tenant"] == "a"
    assert s["requests"] == 11
    assert s["duration_s"] == pytest.approx(5.0)
    assert s["rate"] == pytest.approx(2.0)
    assert s["burstiness"] == pytest.approx(0.0, abs=1e-9)
    assert s["input_p50"] == 100 and s["output_p99"] == 10


def test_stats_per_tenant_and_all() -> None:
    df = make_trace(
        [0.0, 1.0, 2.0, 3.0],
        input_tokens=[1, 2, 3, 4],
        output_tokens=[1] * 4,
        tenant=["a", "b", "a", "b"],
    )
    s = trace_stats(df)
    assert s["tenant"].to_list() == ["a", "b", "(all)"]
    assert s["requests"].to_list() == [2, 2, 4]


def test_rate_and_period() -> None:
    a = np.array([0.0, 1.0, 2.0, 3.0])
    assert trace_rate(a) == pytest.approx(1.0)
    assert trace_period(a) == pytest.approx(4.0)  # repeated: the next copy starts one gap on
    assert trace_rate(a[:1]) is None


_rows = st.lists(
    st.tuples(
        st.floats(0, 1e6, allow_nan=False),
        st.integers(0, 10**6),
        st.integers(0, 10**6),
        st.sampled_from(["a", "b", None]),
        st.one_of(st.none(), st.text(max_size=20)),
    ),
    max_size=30,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=_rows, suffix=st.sampled_from([".parquet", ".jsonl"]))
def test_save_load_round_trip(tmp_path: Path, rows: list, suffix: str) -> None:
    df = make_trace(
        [r[0] for r in rows],
        input_tokens=[r[1] for r in rows],
        output_tokens=[r[2] for r in rows],
        tenant=[r[3] for r in rows],
        prompt=[r[4] for r in rows],
    )
    back = load_trace(save_trace(df, tmp_path / f"rt{suffix}"))
    assert back.equals(df)
