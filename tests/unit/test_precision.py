"""The precision goal: paired log-ratio half-widths from a run directory (reports/precision.py),
checked against values computed by hand, and the runner's rule for how many blocks to add."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t as student_t

from orchestrator.runner import blocks_to_add, precision_record
from reports.precision import PairedWidth, log_half_width, paired_half_widths, primary_figure
from tests.unit.runfixtures import (
    RunSpec,
    Tenant,
    manifest,
    request_row,
    spec_dict,
    write_campaign,
    write_experiment,
)

TENANTS = (Tenant("a", "vllm", "tiny-llama", rate=2.0), Tenant("b", "vllm", "tiny-llama-wide", rate=2.0))
INFO = {t.name: {"kind": t.kind, "model": t.model} for t in TENANTS}

# per repetition, the TPOT of each arm (every request of an arm has the same TPOT)
TPOT = {
    ("a", ("a",)): [0.010, 0.012, 0.011],
    ("a", ("a", "b")): [0.013, 0.015, 0.012],
    ("b", ("b",)): [0.020, 0.021, None],  # repetition 2 of b alone failed: no pair there
    ("b", ("a", "b")): [0.030, 0.029, 0.031],
}


def _rows(active: tuple[str, ...], rep: int) -> list[dict]:
    rows = []
    for t in active:
        tpot = TPOT[(t, active)][rep]
        for i in range(3):
            rows.append(request_row(t, i, scheduled_s=2.0 + i, ttft_s=0.05,
                                    e2e_s=0.05 + 9 * tpot, output_tokens=10))
    return rows


def write(tmp_path: Path, precision: dict | None = None) -> Path:
    rs = RunSpec(name="prec", tenants=TENANTS, strategy=("isolated", "pairs"), repetitions=3,
                 slo={})
    spec = spec_dict(rs)
    if precision is not None:
        spec["experiment"]["precision"] = precision
    spec["report"] = {"pool_variance": "never"}  # the hand computation: one cell's own pairs
    run_dir = tmp_path / "prec"
    ids = []
    for rep in range(3):
        for active in (("a",), ("b",), ("a", "b")):
            eid = f"{'+'.join(active)}__all__x1__r{rep}"
            ids.append(eid)
            failed = TPOT[(active[0], active)][rep] is None
            m = manifest(eid, "prec", resident=("a", "b"), active=active, tenants=INFO,
                         repetition=rep, status="failed" if failed else "completed")
            write_experiment(run_dir, m, None if failed else _rows(active, rep))
    write_campaign(run_dir, spec, ids)
    return run_dir


def by_hand(alone: list[float], together: list[float]) -> float:
    d = np.log(np.array(together) / np.array(alone))
    return float(student_t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))


def test_paired_half_widths_match_a_hand_computed_t_interval(tmp_path: Path) -> None:
    widths = paired_half_widths(write(tmp_path))
    got = {(w.group_id, w.tenant): w for w in widths}
    assert set(got) == {("a+b__all__x1", "a"), ("a+b__all__x1", "b")}  # co-located cells only
    a = got[("a+b__all__x1", "a")]
    assert (a.figure, a.n) == ("tpot_p50_s", 3)
    assert a.log_half_width == pytest.approx(by_hand(TPOT[("a", ("a",))], TPOT[("a", ("a", "b"))]),
                                             rel=1e-6)
    b = got[("a+b__all__x1", "b")]
    assert b.n == 2  # the failed alone arm of repetition 2 leaves that repetition unpaired
    assert b.log_half_width == pytest.approx(by_hand([0.020, 0.021], [0.030, 0.029]), rel=1e-6)
    assert tuple(a) == (a.group_id, a.tenant, a.figure, a.n, a.log_half_width)


def test_the_spec_names_the_figure_and_the_level(tmp_path: Path) -> None:
    run = write(tmp_path, {"half_width": 0.05, "max_repetitions": 10,
                           "figures": {"a": "ttft_p50_s"}})
    got = {w.tenant: w for w in paired_half_widths(run, level=0.9)}
    assert got["a"].figure == "ttft_p50_s" and got["a"].log_half_width == 0.0  # TTFT is constant
    d = np.log(np.array([0.030, 0.029]) / np.array([0.020, 0.021]))
    assert got["b"].log_half_width == pytest.approx(
        student_t.ppf(0.95, 1) * d.std(ddof=1) / math.sqrt(2), rel=1e-6)
    assert primary_figure("encoder", "e") == "e2e_p50_s"
    assert primary_figure("vllm", "a") == "tpot_p50_s"
    assert primary_figure("vllm", "a", {"a": "e2e_p99_s"}) == "e2e_p99_s"


def test_too_few_pairs_is_an_infinite_half_width() -> None:
    assert log_half_width([0.1]) == math.inf and log_half_width([]) == math.inf
    assert PairedWidth("g", "a", "tpot_p50_s", 1, math.inf).to_dict()["log_half_width"] is None


def W(hw: float, n: int = 4) -> PairedWidth:
    return PairedWidth("g", "a", "tpot_p50_s", n, hw)


def test_blocks_to_add() -> None:
    # half-width 0.1 with 4 pairs, target 0.05: about 16 pairs, so 12 more; at most doubling
    assert blocks_to_add([W(0.1, 4)], 0.05, 4, 40) == 4
    assert blocks_to_add([W(0.06, 8)], 0.05, 8, 40) == 4  # ceil(8 x 1.44) = 12
    assert blocks_to_add([W(0.051, 8)], 0.05, 8, 40) == 1  # at least one
    assert blocks_to_add([W(0.1, 4)], 0.05, 4, 6) == 2  # never past the cap
    assert blocks_to_add([W(math.inf, 1)], 0.05, 2, 40) == 1  # too few pairs: one more
    assert blocks_to_add([W(0.04), W(0.2, 3)], 0.05, 4, 40) == 4  # the widest decides
    assert blocks_to_add([W(0.04)], 0.05, 4, 40) == 1  # (the loop stops before: reached)


def test_the_precision_record() -> None:
    rec = precision_record([W(0.04), W(0.07, 3)], 0.05, 5)
    assert rec == {"target": 0.05, "reached": False, "repetitions": 5,
                   "widest": {"group_id": "g", "tenant": "a", "figure": "tpot_p50_s", "n": 3,
                              "log_half_width": 0.07}}
    assert precision_record([W(0.04)], 0.05, 5)["reached"] is True
    assert precision_record([], 0.05, 2) == {"target": 0.05, "reached": True, "widest": None,
                                             "repetitions": 2}
