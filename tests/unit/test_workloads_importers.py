"""Importers: the real Azure excerpts, BurstGPT, Mooncake, ShareGPT; malformed rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workloads.errors import TraceFormatError
from workloads.importers import chars_to_tokens, detect_format, import_trace, read_trace
from workloads.tokenizer import build_tiny_tokenizer, load_tokenizer
from workloads.trace import load_trace, save_trace

DATA = Path(__file__).parents[1] / "data"
CONV = DATA / "azure_llm_2023_conv_head.csv"
CODE = DATA / "azure_llm_2023_code_head.csv"

BURSTGPT = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
5,ChatGPT,472,18,490,Conversation log
45,ChatGPT,1087,0,1087,Conversation log
118,GPT-4,417,245,662,Conversation log
160.5,ChatGPT,1360,195,1555,API log
"""
MOONCAKE = (
    '{"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47]}\n'
    '{"timestamp": 30535, "input_length": 6472, "output_length": 26, "hash_ids": [46, 52]}\n'
    '{"timestamp": 27000, "input_length": 100, "output_length": 10, "hash_ids": []}\n'
)
SHAREGPT = [
    {"id": "a", "conversations": [{"from": "human", "value": "Hello there, how are you?"},
                                  {"from": "gpt", "value": "Fine, thanks."}]},
    {"id": "b", "conversations": [{"from": "human", "value": "Only a question"}]},
    {"id": "c", "conversations": [{"from": "human", "value": "x" * 40}, {"from": "gpt", "value": "y" * 9}]},
]  # fmt: skip


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ---- Azure (the real excerpts) ----------------------------------------------------------------


def test_azure_conv_excerpt() -> None:
    res = import_trace(CONV)
    df = res.trace
    assert res.format == "azure" and res.rows == 80 and res.bad_rows == 0
    assert df.height == 80
    assert df["arrival_s"][0] == 0.0
    # 18:15:50.9951690 - 18:15:46.6805900, to the 100 ns tick
    assert df["arrival_s"][1] == pytest.approx(4.3145790, abs=1e-9)
    assert df.row(0, named=True)["input_tokens"] == 374
    assert df.row(0, named=True)["output_tokens"] == 44
    assert df["arrival_s"][-1] == pytest.approx(37.4759650, abs=1e-9)


def test_azure_code_excerpt_keeps_same_timestamps() -> None:
    df = read_trace(CODE)
    assert df.height == 40
    # two requests 0.0000250 s apart (18:17:05.2792720 and .2792970)
    gaps = df["arrival_s"].diff().drop_nulls()
    assert gaps.min() == pytest.approx(0.000025, abs=1e-9)


def test_azure_numeric_timestamps_and_offsets(tmp_path: Path) -> None:
    p = _write(tmp_path, "n.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n10.5,1,2\n12,3,4\n")
    assert read_trace(p)["arrival_s"].to_list() == [0.0, 1.5]
    p = _write(
        tmp_path,
        "tz.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00.5+00:00,1,2\n2024-05-10 02:00:01Z,1,2\n"
        "2024-05-10T03:00:00.25+02:00,1,1\n",
    )
    assert read_trace(p)["arrival_s"].to_list() == [
        0.0,
        3599.75,
        7200.5,
    ]  # 03:00+02:00 is 01:00 UTC


def test_copy_matches_the_shared_excerpt() -> None:
    shared = Path("/work/shared/traces/azure_llm_2023_conv_head.csv")
    if shared.exists():
        assert shared.read_bytes() == CONV.read_bytes()


# ---- other formats ------------------------------------------------------------------------------


def test_burstgpt(tmp_path: Path) -> None:
    p = _write(tmp_path, "b.csv", BURSTGPT)
    res = import_trace(p)
    assert res.format == "burstgpt"
    assert res.rows == 4 and res.filtered_rows == 1
    df = res.trace
    assert df["arrival_s"].to_list() == [0.0, 113.0, 155.5]
    assert df["Model"].to_list() == ["ChatGPT", "GPT-4", "ChatGPT"]
    assert df["Log Type"].to_list()[-1] == "API log"
    assert import_trace(p, skip_failed=False).trace.height == 4


def test_mooncake(tmp_path: Path) -> None:
    p = _write(tmp_path, "m.jsonl", MOONCAKE)
    df = import_trace(p).trace
    assert import_trace(p).format == "mooncake"
    assert df["arrival_s"].to_list() == [0.0, 0.482, 3.535]
    assert df["input_tokens"].to_list() == [100, 6955, 6472]


def test_sharegpt_chars_and_tokenizer(tmp_path: Path) -> None:
    p = _write(tmp_path, "s.json", json.dumps(SHAREGPT, indent=2))
    res = import_trace(p)
    assert res.format == "sharegpt" and res.filtered_rows == 1
    df = res.trace
    assert df["arrival_s"].to_list() == [0.0, 1.0]
    assert df["input_tokens"].to_list() == [chars_to_tokens("Hello there, how are you?"), 10]
    assert df["output_tokens"].to_list() == [4, 3]
    assert df["prompt"][0] == "Hello there, how are you?"
    tok = build_tiny_tokenizer(tmp_path / "tok")
    counted = import_trace(p, tokenizer=tok).trace
    t = load_tokenizer(tok)
    assert counted["input_tokens"][0] == len(t.encode("Hello there, how are you?"))
    lines = _write(tmp_path, "s.jsonl", "".join(json.dumps(x) + "\n" for x in SHAREGPT))
    assert import_trace(lines).trace.height == 2


def test_cotenant_formats_through_the_importer(tmp_path: Path) -> None:
    df = read_trace(CONV)
    for suffix in (".parquet", ".jsonl"):
        p = save_trace(df, tmp_path / f"t{suffix}")
        assert import_trace(p).format == "cotenant"
        assert import_trace(p).trace.equals(load_trace(p))


def test_detection_failures(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="cannot tell the format"):
        detect_format(_write(tmp_path, "x.csv", "a,b,c\n1,2,3\n"))
    with pytest.raises(TraceFormatError, match="no known trace format"):
        detect_format(_write(tmp_path, "x.jsonl", '{"foo": 1}\n'))
    with pytest.raises(TraceFormatError, match="no such file"):
        import_trace(tmp_path / "missing.csv")


# ---- malformed rows ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "column"),
    [
        ("2023-11-16 18:17:04.1206440,abc,14", "ContextTokens"),
        ("2023-11-16 18:17:04.1206440,12,-3", "GeneratedTokens"),
        ("2023-13-16 18:17:04.1206440,12,3", "TIMESTAMP"),
        ("yesterday,12,3", "TIMESTAMP"),
        ("2023-11-16 18:17:04.1,1", None),
        ("2023-11-16 18:17:04.1,1,2,3", None),
        ("2023-11-16 18:17:04.1,,2", "ContextTokens"),
    ],
)
def test_bad_azure_row_names_file_line_column(tmp_path: Path, row: str, column: str | None) -> None:
    lines = CONV.read_text().splitlines()
    lines.insert(5, row)  # becomes line 6 of the file
    p = _write(tmp_path, "bad.csv", "\n".join(lines) + "\n")
    with pytest.raises(TraceFormatError) as e:
        import_trace(p)
    assert e.value.path == str(p)
    assert e.value.line == 6
    assert e.value.column == column
    res = import_trace(p, skip_bad_rows=True)
    assert res.bad_rows == 1 and res.trace.height == 80
    assert res.first_error is not None and "line 6" in res.first_error


def test_bad_jsonl_and_json_rows(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "m.jsonl",
        MOONCAKE + '{"timestamp": "soon", "input_length": 1, "output_length": 1}\n',
    )
    with pytest.raises(TraceFormatError) as e:
        import_trace(p, "mooncake")
    assert (e.value.line, e.value.column) == (4, "timestamp")
    p = _write(tmp_path, "m2.jsonl", MOONCAKE + "not json\n")
    with pytest.raises(TraceFormatError) as e:
        import_trace(p, "mooncake")
    assert e.value.line == 4
    items = json.dumps(SHAREGPT, indent=2).replace('"Fine, thanks."', "7")
    p = _write(tmp_path, "s.json", items)
    with pytest.raises(TraceFormatError) as e:
        import_trace(p)
    assert e.value.column == "value" and e.value.line == 2  # the first item starts on line 2
    assert import_trace(p, skip_bad_rows=True).bad_rows == 1


@pytest.mark.parametrize("value", ["Infinity", "NaN", "[1, 2]", '{"a": 1}'])
def test_non_finite_or_nested_arrival_in_a_cotenant_record(tmp_path: Path, value: str) -> None:
    # Python's json reads Infinity and NaN; the error message once crashed on them (len(float))
    good = '{"arrival_s": 0.5, "tenant": "a", "kind": "completion", "input_tokens": 3, "output_tokens": 2}'
    p = _write(tmp_path, "r.jsonl", good + "\n" + good.replace("0.5", value, 1) + "\n")
    with pytest.raises(TraceFormatError) as e:
        import_trace(p, "cotenant")
    assert (e.value.line, e.value.column) == (2, "arrival_s")


def test_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "b.csv"
    p.write_bytes(CONV.read_bytes() + b"2023-11-16 18:17:40.0,\xff\xfe,3\n")
    with pytest.raises(TraceFormatError, match="UTF-8") as e:
        import_trace(p)
    assert e.value.line == 82
    assert import_trace(p, skip_bad_rows=True).bad_rows == 1


_garbage = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=60
).filter(lambda s: "\n" not in s and "\r" not in s)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    fmt=st.sampled_from(["azure", "burstgpt", "mooncake", "cotenant-jsonl", "sharegpt"]),
    junk=st.lists(st.one_of(_garbage, st.binary(min_size=1, max_size=30)), min_size=1, max_size=3),
    at=st.integers(0, 3),
)
def test_garbage_rows_raise_trace_format_error_only(
    tmp_path: Path, fmt: str, junk: list, at: int
) -> None:
    """Random garbage in any format is a TraceFormatError (or skipped), never another error."""
    good = {
        "azure": CONV.read_text(),
        "burstgpt": BURSTGPT,
        "mooncake": MOONCAKE,
        "cotenant-jsonl": '{"arrival_s": 0.5, "input_tokens": 3, "output_tokens": 2}\n' * 3,
        "sharegpt": "".join(json.dumps(x) + "\n" for x in SHAREGPT),
    }[fmt]
    lines = good.encode().splitlines(keepends=True)
    for j in junk:
        lines.insert(at, (j if isinstance(j, bytes) else j.encode()).replace(b"\n", b" ") + b"\n")
    suffix = ".jsonl" if fmt in ("mooncake", "cotenant-jsonl", "sharegpt") else ".csv"
    p = tmp_path / f"g{suffix}"
    p.write_bytes(b"".join(lines))
    name = {"cotenant-jsonl": "cotenant"}.get(fmt, fmt)
    for skip in (False, True):
        try:
            res = import_trace(p, name, skip_bad_rows=skip)
        except TraceFormatError as e:
            assert e.path == str(p)
            continue
        assert res.trace.height >= 0


_azure_rows = st.lists(
    st.tuples(
        st.integers(0, 10**14),  # 100 ns ticks since 2023-11-16 00:00
        st.integers(0, 10**6),
        st.integers(0, 10**5),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=_azure_rows, suffix=st.sampled_from([".parquet", ".jsonl"]))
def test_parse_save_load_round_trip(tmp_path: Path, rows: list, suffix: str) -> None:
    """Azure CSV with 7 fractional digits → import → save → load: the same frame, and the
    arrival times are the ticks' differences to the 100 ns."""
    import datetime as dt

    base = dt.datetime(2023, 11, 16)
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for ticks, ctx, gen in rows:
        t = base + dt.timedelta(microseconds=ticks // 10)
        lines.append(f"{t:%Y-%m-%d %H:%M:%S}.{t.microsecond:06d}{ticks % 10},{ctx},{gen}")
    src = tmp_path / "a.csv"
    src.write_text("\n".join(lines) + "\n")
    df = import_trace(src).trace
    first = min(r[0] for r in rows)
    expected = sorted((r[0] - first) / 1e7 for r in rows)
    assert df["arrival_s"].to_list() == pytest.approx(expected, abs=1e-9)
    back = load_trace(save_trace(df, tmp_path / f"t{suffix}"))
    assert back.equals(df)
