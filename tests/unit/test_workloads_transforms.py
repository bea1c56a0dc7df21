"""Trace transforms and tenant assignment."""

from __future__ import annotations

import numpy as np
import pytest

from workloads.errors import WorkloadError
from workloads.spec import TraceTransforms
from workloads.trace import make_trace, trace_rate
from workloads.transforms import (
    apply_transforms,
    assign_tenants,
    bound_lengths,
    parse_assignment,
    rescale_rate,
    tenant_name,
    time_scale,
    window,
)


def _trace(n: int = 10) -> object:
    return make_trace(
        np.arange(n, dtype=float), input_tokens=np.arange(n) * 100, output_tokens=np.arange(n),
        extra={"Model": ["ChatGPT", "GPT-4"] * (n // 2)},
    )  # fmt: skip


def test_window_shifts_to_zero() -> None:
    df = window(_trace(), 2.5, 6.0)
    assert df["arrival_s"].to_list() == [0.5, 1.5, 2.5]
    with pytest.raises(WorkloadError):
        window(_trace(), 3, 3)


def test_time_scale_and_rate() -> None:
    assert time_scale(_trace(), 0.5)["arrival_s"].max() == 4.5
    df = rescale_rate(_trace(), 4.0)
    assert trace_rate(df["arrival_s"]) == pytest.approx(4.0)


def test_bounds_keep_embedding_outputs() -> None:
    df = bound_lengths(_trace(), min_input=50, max_input=500, min_output=2, max_output=5)
    assert df["input_tokens"].min() == 50 and df["input_tokens"].max() == 500
    assert df["output_tokens"].to_list() == [2, 2, 2, 3, 4, 5, 5, 5, 5, 5]
    emb = make_trace([0.0], input_tokens=[3], output_tokens=[0], kind="embedding")
    assert bound_lengths(emb)["output_tokens"].to_list() == [0]


def test_apply_in_order_window_scale_rate() -> None:
    t = TraceTransforms(window=(2.0, 8.0), time_scale=0.5, max_output_tokens=3)
    df = apply_transforms(_trace(), t)
    assert df["arrival_s"].to_list() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert df["output_tokens"].max() == 3
    assert df["input_tokens"].min() == 200


def test_assign_round_robin_column_weights() -> None:
    rr = assign_tenants(_trace(), parse_assignment("round-robin", ["x", "y", "z"]))
    assert rr["tenant"].to_list()[:4] == ["x", "y", "z", "x"]
    col = assign_tenants(_trace(), "column:Model")
    assert set(col["tenant"]) == {"chatgpt", "gpt-4"}
    big = make_trace(np.arange(4000.0), input_tokens=[1] * 4000, output_tokens=[1] * 4000)
    w = assign_tenants(big, "weights:a=1,b=3", seed=0)
    share_b = (w["tenant"] == "b").mean()
    assert share_b == pytest.approx(0.75, abs=0.03)
    assert w.equals(assign_tenants(big, "weights:a=1,b=3", seed=0))


@pytest.mark.parametrize(
    "rule", ["round-robin", "weights:a", "weights:a=-1", "weights:a=0", "column:", "bogus"]
)
def test_bad_assignments(rule: str) -> None:
    with pytest.raises(WorkloadError):
        parse_assignment(rule)


def test_assign_by_missing_column() -> None:
    with pytest.raises(WorkloadError, match="no column"):
        assign_tenants(_trace(), "column:Nope")


def test_tenant_names_are_sanitised() -> None:
    assert tenant_name("GPT-4") == "gpt-4"
    assert tenant_name("Llama 3 (70B)") == "llama-3-70b"
    assert tenant_name("") == "unknown"
