"""Synthetic traces: arrival processes, length distributions, seeds, build_trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workloads.build import build_trace, offered_rate
from workloads.errors import WorkloadError
from workloads.generators import arrival_times, parse_length, rngs, sample_lengths, synthesize
from workloads.importers import read_trace
from workloads.spec import (
    ConstantArrivals,
    EmpiricalLen,
    FixedLen,
    GammaArrivals,
    LognormalLen,
    NormalLen,
    OnOffArrivals,
    PoissonArrivals,
    RampArrivals,
    SyntheticWorkload,
    TraceTransforms,
    TraceWorkload,
    UniformLen,
)
from workloads.trace import save_trace, trace_stats

DATA = Path(__file__).parents[1] / "data"
CONV = DATA / "azure_llm_2023_conv_head.csv"


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize(
    ("rate", "duration", "n"), [(10, 10, 100), (0.3, 10, 3), (7, 1, 7), (2.5, 3, 8)]
)
def test_constant_rate_gives_exact_counts(rate: float, duration: float, n: int) -> None:
    t = arrival_times(ConstantArrivals(rate=rate), duration, _rng())
    assert t.size == n
    assert t[0] == 0.0
    assert np.allclose(np.diff(t), 1 / rate)
    assert t[-1] < duration


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_same_seed_same_trace(seed: int) -> None:
    w = SyntheticWorkload(
        arrival=PoissonArrivals(rate=20), input_tokens=UniformLen(low=1, high=500)
    )
    a = synthesize(w, duration_s=5, seed=seed, tenant="x")
    b = synthesize(w, duration_s=5, seed=seed, tenant="x")
    assert a.equals(b)


def test_seed_zero_is_a_seed() -> None:
    w = SyntheticWorkload(arrival=PoissonArrivals(rate=20))
    zero = synthesize(w, duration_s=5, seed=0)
    one = synthesize(w, duration_s=5, seed=1)
    assert not zero["arrival_s"].equals(one["arrival_s"])
    assert zero.equals(synthesize(w, duration_s=5, seed=0))


def test_tenants_get_independent_streams_and_lengths_do_not_move_arrivals() -> None:
    w = SyntheticWorkload(arrival=PoissonArrivals(rate=20))
    a = synthesize(w, duration_s=5, seed=0, tenant="a")
    b = synthesize(w, duration_s=5, seed=0, tenant="b")
    assert not a["arrival_s"].equals(b["arrival_s"])
    w2 = w.model_copy(update={"input_tokens": LognormalLen(median=300)})
    assert synthesize(w2, duration_s=5, seed=0, tenant="a")["arrival_s"].equals(a["arrival_s"])


def test_negative_seed_is_refused() -> None:
    with pytest.raises(WorkloadError):
        rngs(-1)


@pytest.mark.parametrize(
    ("arrival", "cv"),
    [
        (PoissonArrivals(rate=200), 1.0),
        (GammaArrivals(rate=200, cv=2.0), 2.0),
        (GammaArrivals(rate=200, cv=0.5), 0.5),
    ],
)
def test_renewal_rate_and_burstiness_within_tolerance(arrival: object, cv: float) -> None:
    t = arrival_times(arrival, 100.0, _rng(3))  # type: ignore[arg-type]
    gaps = np.diff(t)
    # 20,000 expected requests: the count is within 4 standard deviations (cv * sqrt(n))
    assert abs(t.size - 20_000) < 4 * cv * np.sqrt(20_000)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.08)
    assert t.min() >= 0 and t.max() < 100.0
    assert np.all(np.diff(t) >= 0)


def test_onoff_sends_only_while_on() -> None:
    t = arrival_times(OnOffArrivals(rate=100, on_s=1.0, off_s=2.0), 30.0, _rng())
    assert np.all((t % 3.0) < 1.0)
    assert abs(t.size - 1000) < 4 * np.sqrt(1000)  # 10 on-seconds at 100 req/s


def test_ramp_rate_grows() -> None:
    t = arrival_times(RampArrivals(start_rate=0, end_rate=200), 20.0, _rng())
    first, second = (t < 10).sum(), (t >= 10).sum()
    # expected 500 in the first half, 1500 in the second
    assert abs(first - 500) < 4 * np.sqrt(500)
    assert abs(second - 1500) < 4 * np.sqrt(1500)


def test_rate_scale_multiplies_the_rate() -> None:
    base = arrival_times(ConstantArrivals(rate=4), 10, _rng())
    fast = arrival_times(ConstantArrivals(rate=4), 10, _rng(), rate_scale=2.5)
    assert fast.size == 100 and base.size == 40


def test_length_distributions(tmp_path: Path) -> None:
    r = _rng()
    assert set(sample_lengths(FixedLen(value=7), 5, r).tolist()) == {7}
    u = sample_lengths(UniformLen(low=3, high=5), 2000, r)
    assert set(u.tolist()) == {3, 4, 5}
    n = sample_lengths(NormalLen(mean=10, std=20, low=2, high=15), 2000, r)
    assert n.min() == 2 and n.max() == 15
    ln = sample_lengths(LognormalLen(median=100, sigma=0.5), 20000, r)
    assert np.median(ln) == pytest.approx(100, rel=0.05)
    e = sample_lengths(EmpiricalLen(path=str(CONV), column="output_tokens"), 500, r)
    assert set(e.tolist()) <= set(read_trace(CONV)["output_tokens"].to_list())
    assert len(set(e.tolist())) > 20


def test_empirical_relative_path_from_base_dir() -> None:
    d = EmpiricalLen(path=CONV.name, column="input_tokens", high=1000)
    v = sample_lengths(d, 100, _rng(), base_dir=DATA)
    assert v.max() <= 1000


@pytest.mark.parametrize(
    ("text", "dist"),
    [
        ("128", FixedLen(value=128)),
        ("uniform:1:9", UniformLen(low=1, high=9)),
        ("normal:512:64", NormalLen(mean=512, std=64)),
        ("lognormal:300:0.8", LognormalLen(median=300, sigma=0.8)),
        ("empirical:a:b.csv:input_tokens", EmpiricalLen(path="a:b.csv", column="input_tokens")),
    ],
)
def test_parse_length(text: str, dist: object) -> None:
    assert parse_length(text) == dist


@pytest.mark.parametrize("text", ["", "x", "uniform:9:1", "normal:1", "0", "empirical:f:other"])
def test_parse_length_refuses(text: str) -> None:
    with pytest.raises(WorkloadError):
        parse_length(text)


# ---- build_trace --------------------------------------------------------------------------------


def test_build_synthetic_embedding() -> None:
    w = SyntheticWorkload(arrival=ConstantArrivals(rate=10), batch_size=UniformLen(low=2, high=4))
    df = build_trace(w, tenant="enc", kind="embedding", duration_s=2, seed=0, base_dir=Path("."))
    assert df.height == 20
    assert set(df["kind"]) == {"embedding"} and set(df["tenant"]) == {"enc"}
    assert df["output_tokens"].sum() == 0
    assert set(df["batch_size"].to_list()) <= {2, 3, 4}


def test_build_trace_loops_compresses_and_cuts() -> None:
    w = TraceWorkload(path=CONV.name)
    one = build_trace(
        w, tenant="t", kind="completion", duration_s=1000, seed=0, base_dir=DATA, rate_scale=1
    )
    assert one["arrival_s"].max() < 1000
    s = trace_stats(one).row(0, named=True)
    period = 37.475965 * 80 / 79
    assert s["requests"] == pytest.approx(80 * 1000 / period, abs=80)
    double = build_trace(
        w, tenant="t", kind="completion", duration_s=1000, seed=0, base_dir=DATA, rate_scale=2
    )
    assert double.height == pytest.approx(2 * one.height, abs=80)
    no_loop = build_trace(
        w.model_copy(update={"loop": False}),
        tenant="t",
        kind="completion",
        duration_s=1000,
        seed=0,
        base_dir=DATA,
    )
    assert no_loop.height == 80


def test_build_trace_transforms_and_offered_rate() -> None:
    w = TraceWorkload(path=str(CONV), transforms=TraceTransforms(rate=4.0, max_input_tokens=1000))
    df = build_trace(w, tenant="t", kind="completion", duration_s=60, seed=0, base_dir=Path("/"))
    assert df["input_tokens"].max() <= 1000
    assert offered_rate(w, 1.5) == pytest.approx(6.0)
    plain = TraceWorkload(path=str(CONV))
    assert offered_rate(plain, 1.0) == pytest.approx(79 / 37.475965, rel=1e-6)
    assert (
        offered_rate(SyntheticWorkload(arrival=OnOffArrivals(rate=10, on_s=1, off_s=3)), 2) == 5.0
    )


def test_build_trace_selects_its_tenants_rows(tmp_path: Path) -> None:
    w = SyntheticWorkload(arrival=ConstantArrivals(rate=10))
    mixed = synthesize(w, duration_s=1, seed=0, tenant="a").vstack(
        synthesize(w, duration_s=1, seed=0, tenant="b")
    )
    save_trace(mixed.with_columns(mixed["arrival_s"] * 1.0), tmp_path / "m.parquet")
    tw = TraceWorkload(path="m.parquet", loop=False)
    a = build_trace(tw, tenant="a", kind="completion", duration_s=5, seed=0, base_dir=tmp_path)
    c = build_trace(tw, tenant="c", kind="completion", duration_s=5, seed=0, base_dir=tmp_path)
    assert a.height == 10 and c.height == 20
    assert set(c["tenant"]) == {"c"}


def test_build_refuses_bad_arguments() -> None:
    w = SyntheticWorkload(arrival=ConstantArrivals(rate=1))
    with pytest.raises(WorkloadError):
        build_trace(w, tenant="a", kind="chat", duration_s=1, seed=0, base_dir=Path("."))
    with pytest.raises(WorkloadError):
        build_trace(w, tenant="a", kind="completion", duration_s=0, seed=0, base_dir=Path("."))
