"""The capacity part of the report (reports.capacity*): verdicts on W, the frontier, GPUs for
target loads, the figures and the section that leads the report, on numbers computed by hand.

The worked example: C_a = 4 req/s (bracket [4, 4.2]), C_b = 2 (bracket [2, 2.1]). The pair
along the equal ray has the mix a 2, b 1 (2/4 + 1/2 = 1) and the scale bracket [1.2, 1.26],
so it sustains (2.4, 1.2) together: W = 2.4/4 + 1.2/2 = 1.2.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from reports.capacity import (
    HURTS,
    NOT_ESTABLISHED,
    WINS,
    capacity_text,
    load_capacity,
    set_table,
    w_verdict,
)
from reports.capacity_figures import capacity_region, probe_attainment, w_map
from reports.capacity_plan import along, frontier, gpus_needed
from reports.errors import ReportError
from rundir.schema import PROBE_SCHEMA
from tests.unit.runfixtures import DEFAULT_TENANTS, RunSpec, write_run

EQUAL = {"tenants": ["a", "b"], "mix_index": 0, "mix": {"a": 2.0, "b": 1.0}, "scale": 1.2,
         "bracket": [1.2, 1.26], "W": 1.2, "W_bracket": [1.2 * (2 / 4.2 + 1 / 2.1), 1.26 * 1.0],
         "rates": {"a": 2.4, "b": 1.2}, "failed_first": "b", "binding": {"a": [], "b": ["GPU busy"]},
         "probes": 6, "censored": None, "reason": None, "knee_experiment": "a+b__all__cap0x1.26__r0"}


def solo(c: float, hi: float | None, **kw: Any) -> dict[str, Any]:
    return {"capacity_rps": c, "bracket": [c, hi], "censored": None, "reason": None, "probes": 7,
            "binding": ["engine CPU"], "knee_experiment": "x"} | kw


def example(**sets: dict[str, Any]) -> dict[str, Any]:
    return {"target_attainment": {"a": 0.9, "b": 0.9, "c": 0.9},
            "tenants": {"a": solo(4.0, 4.2), "b": solo(2.0, 2.1), "c": solo(5.0, 5.2)},
            "sets": {"a+b": EQUAL} | sets}


# mix 1 of the pair: a 1, b 1.5 (1/4 + 1.5/2 = 1), scale [0.9, 0.95]: it sustains (0.9, 1.35)
STEEP = EQUAL | {"mix_index": 1, "mix": {"a": 1.0, "b": 1.5}, "scale": 0.9, "bracket": [0.9, 0.95],
                 "W": 0.9, "W_bracket": [0.87, 0.96], "rates": {"a": 0.9, "b": 1.35}}
# the three of them, each at a third of its capacity: mix a 4/3, b 2/3, c 5/3; scale [0.9, 0.95]
TRIO = {"tenants": ["a", "b", "c"], "mix_index": 0, "mix": {"a": 4 / 3, "b": 2 / 3, "c": 5 / 3},
        "scale": 0.9, "bracket": [0.9, 0.95], "W": 0.9, "W_bracket": [0.86, 0.97], "probes": 5}


# ---- verdicts and ranking ------------------------------------------------------------------------

@pytest.mark.parametrize(("lo", "hi", "want"), [
    (1.01, 1.2, WINS), (1.0, 1.2, NOT_ESTABLISHED), (0.95, 1.05, NOT_ESTABLISHED),
    (0.9, 1.0, NOT_ESTABLISHED), (0.8, 0.999, HURTS), (None, 0.9, HURTS), (1.1, None, WINS),
    (None, None, NOT_ESTABLISHED), (None, 1.3, NOT_ESTABLISHED),
])
def test_w_verdict_needs_the_bracket_wholly_on_one_side_of_1(lo: float | None, hi: float | None,
                                                              want: str) -> None:
    assert w_verdict(lo, hi) == want


def test_sets_are_ranked_by_W_established_only() -> None:
    data = example(**{
        "a+b#1": STEEP,
        "a+c": {"tenants": ["a", "c"], "mix": {"a": 2.0, "c": 2.5}, "scale": 1.05, "bracket": [1.05, 1.1],
                "W": 1.05, "W_bracket": [0.97, 1.12]},
        "b+c": {"tenants": ["b", "c"], "mix": {"b": 1.0, "c": 2.5}, "scale": 1.4, "bracket": [1.4, 1.45],
                "W": 1.4, "W_bracket": [1.3, 1.5]},
    })
    data["tenants"]["c"] = solo(5.0, None, censored="at least")  # so b+c's W is only an upper bound
    t = set_table(data)
    assert t["set"].to_list() == ["a+b", "a+b#1", "b+c", "a+c"]
    assert t["rank"].to_list() == [1, 2, None, None]
    assert t["verdict"].to_list() == [WINS, HURTS, NOT_ESTABLISHED, NOT_ESTABLISHED]
    bc = t.row(2, named=True)
    assert bc["W_lo"] is None and bc["W_hi"] == 1.5 and "only an upper bound" in bc["note"]
    ab = t.row(0, named=True)
    assert ab["W_lo"] == pytest.approx(1.2 * (2 / 4.2 + 1 / 2.1)) and ab["W_hi"] == pytest.approx(1.26)
    assert ab["binding"] == "a: nothing saturated; b: GPU busy" and ab["failed_first"] == "b"


def test_W_bracket_from_the_brackets_when_capacity_json_has_none() -> None:
    s = {k: v for k, v in EQUAL.items() if k != "W_bracket"}
    r = set_table(example(**{"a+b": s})).row(0, named=True)
    assert r["W_lo"] == pytest.approx(1.2 * (2 / 4.2 + 1 / 2.1))  # λ_lo Σ m / C_hi = 1.1429
    assert r["W_hi"] == pytest.approx(1.26 * (2 / 4 + 1 / 2))  # λ_hi Σ m / C_lo
    assert r["verdict"] == WINS


def test_a_set_that_could_not_be_searched_is_not_established() -> None:
    data = example(**{"a+c": {"tenants": ["a", "c"], "mix_index": 0, "capacity_rps": None, "scale": None,
                              "censored": "failed", "reason": "c has no capacity alone", "probes": 0}})
    r = set_table(data).filter(pl.col("set") == "a+c").row(0, named=True)
    assert r["W"] is None and r["verdict"] == NOT_ESTABLISHED and r["rank"] is None
    assert "c has no capacity alone" in r["note"]


# ---- the frontier --------------------------------------------------------------------------------

def test_frontier_runs_through_the_axes_and_every_mix_by_angle() -> None:
    pts = frontier(example(**{"a+b#1": STEEP}), "a", "b")
    assert [(round(x, 9), round(y, 9)) for x, y, _ in pts] == [(4.0, 0.0), (2.4, 1.2), (0.9, 1.35), (0.0, 2.0)]
    # listed steep first (mix 0): the frontier still goes by angle, from a's axis to b's
    swapped = example(**{"a+b": STEEP | {"mix_index": 0}, "a+b#1": EQUAL | {"mix_index": 1}})
    assert [(round(x, 9), round(y, 9)) for x, y, _ in frontier(swapped, "a", "b")] == [
        (4.0, 0.0), (2.4, 1.2), (0.9, 1.35), (0.0, 2.0)]
    hi = frontier(example(), "a", "b", end="hi")
    assert [(round(x, 9), round(y, 9)) for x, y, _ in hi] == [(4.2, 0.0), (2.52, 1.26), (0.0, 2.1)]


def test_along_interpolates_linearly_between_the_points() -> None:
    one = frontier(example(), "a", "b")
    # (4,0) -> (2.4,1.2) against the ray (30,10): t = (p x e) / (d x e) = 4.8 / 52
    assert along(one, (30.0, 10.0)) == pytest.approx(4.8 / 52)
    # (2.4,1.2) -> (0,2) against (1,1): the point (1.5, 1.5), W there 1.5/4 + 1.5/2 = 1.125
    assert along(one, (1.0, 1.0)) == pytest.approx(1.5)
    assert along(one, (2.0, 1.0)) == pytest.approx(1.2)  # on the measured mix
    assert along(one, (1.0, 0.0)) == pytest.approx(4.0) and along(one, (0.0, 1.0)) == pytest.approx(2.0)
    two = frontier(example(**{"a+b#1": STEEP}), "a", "b")
    # (2.4,1.2) -> (0.9,1.35): e = (-1.5, 0.15), t = 2.16 / 1.65
    assert along(two, (1.0, 1.0)) == pytest.approx(2.16 / 1.65)
    assert along(two, (0.0, 0.0)) is None


def test_a_mix_with_no_passing_scale_pulls_the_frontier_to_the_origin() -> None:
    zero = EQUAL | {"scale": 0.0, "bracket": [0.0, 0.1], "W": 0.0, "W_bracket": [0.0, 0.1],
                    "censored": "zero"}
    pts = frontier(example(**{"a+b": zero}), "a", "b")
    assert along(pts, (2.0, 1.0)) == 0.0
    assert along(pts, (30.0, 10.0)) == pytest.approx(0.0)


# ---- GPUs for target loads -----------------------------------------------------------------------

def test_gpus_needed_on_the_worked_example() -> None:
    plan = gpus_needed(example(), {"a": 30, "b": 10})
    d = plan["dedicated"]
    assert d["gpus"] == 13  # ⌈30 / 4⌉ + ⌈10 / 2⌉ = 8 + 5
    assert (d["tenants"]["a"]["gpus"], d["tenants"]["b"]["gpus"]) == (8, 5)
    (co,) = plan["co_located"]
    assert co["set"] == "a+b" and co["gpus"] == 11  # ⌈52 / 4.8⌉ = ⌈10.83⌉
    assert co["per_gpu_rps"]["a"] == pytest.approx(30 * 4.8 / 52)  # 2.769
    assert co["per_gpu_rps"]["b"] == pytest.approx(10 * 4.8 / 52)  # 0.923
    assert plan["best"] == {"plan": "a+b co-located", "gpus": 11}
    assert "low end" in plan["basis"]


def test_gpus_needed_is_conservative_and_packs_the_rest_alone() -> None:
    # 16.4 / 4 (low end) = 4.1 -> 5 GPUs; the high end 4.2 would say 4
    assert gpus_needed(example(), {"a": 16.4})["dedicated"]["gpus"] == 5
    plan = gpus_needed(example(), {"a": 30, "b": 10, "c": 12})
    assert plan["dedicated"]["gpus"] == 16  # 8 + 5 + ⌈12 / 5⌉
    (co,) = plan["co_located"]
    assert co["dedicated_rest"] == {"c": 3} and co["total_gpus"] == 14


def test_a_larger_set_is_planned_only_along_its_measured_mix() -> None:
    data = example(**{"a+b+c": TRIO})
    matched = gpus_needed(data, {"a": 12, "b": 6, "c": 15})  # 10x the rates at λ_lo (1.2, 0.6, 1.5)
    trio = next(c for c in matched["co_located"] if c["set"] == "a+b+c")
    assert trio["gpus"] == 10 and matched["dedicated"]["gpus"] == 9  # W < 1: co-location costs a GPU
    pair = next(c for c in matched["co_located"] if c["set"] == "a+b")
    assert (pair["gpus"], pair["total_gpus"]) == (5, 8)  # ⌈12 / 2.4⌉ on the measured mix, + 3 for c
    assert matched["best"] == {"plan": "a+b co-located", "gpus": 8}
    near = gpus_needed(data, {"a": 12, "b": 6, "c": 15.5})  # 3% off the mix: ⌈15.5 / 1.5⌉ = 11
    assert next(c for c in near["co_located"] if c["set"] == "a+b+c")["gpus"] == 11
    off = gpus_needed(data, {"a": 30, "b": 10, "c": 12})
    trio = next(c for c in off["co_located"] if c["set"] == "a+b+c")
    assert trio["gpus"] is None and trio["note"].startswith("not measured")


def test_gpus_needed_says_what_cannot_be_served() -> None:
    data = example()
    data["tenants"]["b"] = solo(0.0, 0.5, censored="zero", reason="the SLO was missed at every scale probed")
    plan = gpus_needed(data, {"a": 8, "b": 1})
    assert plan["dedicated"]["gpus"] is None
    assert "missed at every scale" in plan["dedicated"]["tenants"]["b"]["note"]
    assert gpus_needed(data, {"a": 8, "b": 0})["dedicated"]["gpus"] == 2
    with pytest.raises(ValueError, match="no capacity measured for z"):
        gpus_needed(data, {"z": 1})
    with pytest.raises(ValueError, match=">= 0"):
        gpus_needed(data, {"a": -1})


# ---- a run directory -----------------------------------------------------------------------------

def probe_rows() -> list[dict[str, Any]]:
    """llama-a alone (6 req/s at scale 1, target 90%): 6 pass, 12 pass, 24 fail, 17 straddles
    then passes by point, 20.2 fails; the pair along its equal ray: x0.5 pass, x1 fail."""
    rows: list[dict[str, Any]] = []

    def add(search: str, kind: str, i: int, att: int, t: str, scale: float, rps: float, met: int,
            dec: str, lo: float, hi: float, by: str = "interval", limits: str = "") -> None:
        rows.append({"search": search, "kind": kind, "index": i, "attempt": att,
                     "experiment_id": f"{search}__all__cap0x{scale:g}__r{att}", "status": "completed",
                     "tenant": t, "scale": scale, "offered_rps": rps, "requests": 100 * (att + 1),
                     "met": met, "attainment": met / (100 * (att + 1)), "ci_lo": lo, "ci_hi": hi,
                     "target": 0.9, "decision": dec, "decided_by": by, "early_stop": dec == "fail",
                     "reason": None, "limits": limits})

    add("llama-a", "solo", 0, 0, "llama-a", 1.0, 6.0, 99, "pass", 0.95, 1.0)
    add("llama-a", "solo", 1, 0, "llama-a", 2.0, 12.0, 97, "pass", 0.91, 0.99)
    add("llama-a", "solo", 2, 0, "llama-a", 4.0, 24.0, 40, "fail", 0.30, 0.50, limits="engine CPU")
    add("llama-a", "solo", 3, 0, "llama-a", 2.83, 17.0, 90, "repeat", 0.82, 0.95)
    add("llama-a", "solo", 3, 1, "llama-a", 2.83, 17.0, 183, "pass", 0.86, 0.94, by="point")
    add("llama-a", "solo", 4, 0, "llama-a", 3.37, 20.2, 70, "fail", 0.60, 0.79, limits="engine CPU")
    for t, c in (("llama-a", 17.0), ("llama-b", 9.0)):
        add("llama-a+llama-b", "set", 0, 0, t, 0.5, c / 2, 96, "pass", 0.90, 0.99)
        add("llama-a+llama-b", "set", 1, 0, t, 1.0, c, 80 if t == "llama-b" else 92, "fail", 0.7, 0.97)
    return rows


def capacity_json() -> dict[str, Any]:
    return {"target_attainment": {"llama-a": 0.9, "llama-b": 0.9},
            "tenants": {"llama-a": solo(17.0, 20.2, binding=["engine CPU"]),
                        "llama-b": solo(9.0, 9.4, binding=[])},
            "sets": {"llama-a+llama-b": {
                "tenants": ["llama-a", "llama-b"], "mix_index": 0, "mix": {"llama-a": 8.5, "llama-b": 4.5},
                "scale": 0.5, "bracket": [0.5, 1.0], "W": 0.5, "W_bracket": [0.47, 1.0],
                "rates": {"llama-a": 4.25, "llama-b": 2.25}, "failed_first": "llama-b",
                "binding": {"llama-a": [], "llama-b": ["GPU busy"]}, "probes": 2, "censored": "open",
                "reason": "the probe budget (2) ended the search", "knee_experiment": "x"}}}


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same two-tenant campaign twice: without and with capacity results."""
    rs = dict(tenants=DEFAULT_TENANTS[:2], strategy=("isolated", "pairs"), repetitions=2)
    plain = write_run(tmp_path_factory.mktemp("plain"), RunSpec(name="plain", **rs))  # type: ignore[arg-type]
    cap = write_run(tmp_path_factory.mktemp("cap"), RunSpec(name="cap", **rs))  # type: ignore[arg-type]
    (cap / "capacity.json").write_text(json.dumps(capacity_json()))
    pl.DataFrame(probe_rows(), schema=PROBE_SCHEMA).write_parquet(cap / "probes.parquet")
    return plain, cap


def test_load_capacity_reads_both_files(run_dirs: tuple[Path, Path]) -> None:
    plain, cap_dir = run_dirs
    assert load_capacity(plain) is None
    cap = load_capacity(cap_dir)
    assert cap is not None and cap.pairs == [("llama-a", "llama-b")]
    assert cap.searches == ["llama-a", "llama-a+llama-b"] and cap.probes.height == 10
    a = cap.tenants.filter(pl.col("tenant") == "llama-a").row(0, named=True)
    assert a["rel_width"] == pytest.approx(20.2 / 17 - 1) and a["binding"] == "engine CPU"
    assert cap.sets["verdict"].to_list() == [NOT_ESTABLISHED]  # [0.47, 1.0] touches 1


def test_capacity_text(run_dirs: tuple[Path, Path]) -> None:
    plain, cap_dir = run_dirs
    txt = capacity_text(cap_dir, {"llama-a": 40, "llama-b": 10})
    assert re.search(r"llama-a\s+17\.0 req/s\s+\[17\.0, 20\.2\]\s+90\.0%\s+7\s+engine CPU", txt)
    assert "0.5 [0.47, 1.00]" in txt and NOT_ESTABLISHED in txt
    # dedicated ⌈40/17⌉ + ⌈10/9⌉ = 3 + 2; co-located along (40, 10) between (17,0) and (4.25,2.25)
    t = (17 * 2.25) / (40 * 2.25 - 10 * (4.25 - 17))  # (p x e) / (d x e) = 38.25 / 217.5
    assert "dedicated: 5 GPUs (llama-a: ⌈40.0 / 17.0⌉ = 3; llama-b: ⌈10.0 / 9.00⌉ = 2)" in txt
    assert f"co-located along the targets' direction on the frontier of 1 measured mix: {math.ceil(1 / t)} GPUs" in txt
    assert "fewest: dedicated, 5 GPUs" in txt
    with pytest.raises(ReportError, match="no capacity.json"):
        capacity_text(plain)


def test_region_figure_draws_the_frontier_and_the_time_division_line(run_dirs: tuple[Path, Path]) -> None:
    cap = load_capacity(run_dirs[1])
    assert cap is not None
    fig = capacity_region(cap, "llama-a", "llama-b")
    assert fig is not None
    lines = {str(ln.get_label()): ln for ln in fig.axes[0].get_lines()}

    def xy(name: str) -> list[tuple[float, float]]:
        ln = next(v for k, v in lines.items() if k.startswith(name))
        xs: Any = ln.get_xdata()
        ys: Any = ln.get_ydata()
        return [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]

    assert xy("frontier (low end") == [(17.0, 0.0), (4.25, 2.25), (0.0, 9.0)]
    assert xy("time division") == [(17.0, 0.0), (0.0, 9.0)]
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "sharing wins (W > 1)" in texts and "W 0.5" in texts
    probes = probe_attainment(cap, "llama-a", ["llama-a", "llama-b"])
    assert probes is not None and probes.axes[0].get_xscale() == "log"
    targets: list[Any] = [ln.get_ydata() for ln in probes.axes[0].get_lines()]
    assert any(list(y) == [0.9, 0.9] for y in targets)  # the target line
    assert w_map(cap.sets) is not None and w_map(cap.sets.clear()) is None


def test_report_leads_with_capacity_and_maps_W(run_dirs: tuple[Path, Path]) -> None:
    from reports.build import build_report

    plain, cap_dir = run_dirs
    paths = build_report(cap_dir)
    for name in ("capacity_region_llama-a__llama-b", "capacity_probes_llama-a",
                 "capacity_probes_llama-a+llama-b", "strategy_map"):
        for ext in ("svg", "png"):
            assert (paths.figures_dir / f"{name}.{ext}").stat().st_size > 1000
    html = paths.html.read_text()
    assert html.index('id="capacity"') < html.index('id="summary"') < html.index('id="sets"')
    assert html.index('href="#capacity"') < html.index('href="#summary"')
    assert 'id="capacity-table"' in html and 'id="capacity-sets-table"' in html
    assert "its weighted capacity W with the bracket" in html  # the strategy map's caption
    assert 'data-figure="capacity_region_llama-a__llama-b"' in html and not re.search(r"\bgain\b", html)
    md = paths.summary_md.read_text()
    assert re.findall(r"^## .*$", md, flags=re.M)[0] == "## Capacity"
    assert "| llama-a | 17.0 req/s | [17.0, 20.2] (±19%) | 90.0% | 7 | engine CPU |" in md
    sets = pl.read_parquet(paths.tables_dir / "capacity_sets.parquet")
    assert sets["W"].to_list() == [0.5] and (paths.tables_dir / "capacity_probes.csv").is_file()
    before = build_report(plain)
    assert 'id="capacity"' not in before.html.read_text()
    assert "## Capacity" not in before.summary_md.read_text()
    assert not (before.tables_dir / "capacity_sets.parquet").exists()
    assert "worst headline slowdown with its 95% interval" in before.html.read_text()
