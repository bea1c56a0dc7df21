"""Verdict classes at their boundaries, the multiplicity corrections, the x4 printing rule."""

from __future__ import annotations

import math

import pytest
from statsmodels.stats.multitest import multipletests

from reports.settings import ReportSettings, settings_from_spec
from reports.verdicts import (
    HURTS,
    NOT_ESTABLISHED,
    WELL,
    adjust,
    classify,
    combine,
    estimable,
    ratio_text,
)


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (1.1, 1.5, NOT_ESTABLISHED),  # lower bound exactly 1 + margin: not above it
        (1.1000001, 1.5, HURTS),
        (0.8, 1.1, NOT_ESTABLISHED),  # upper bound exactly 1 + margin: not below it
        (0.8, 1.0999999, WELL),
        (1.05, 1.2, NOT_ESTABLISHED),  # contains 1.1
        (0.9, 1.05, WELL),  # below 1.1: shares well even though it exceeds 1.0
        (1.2, math.inf, HURTS),  # censored: the upper bound is infinite
        (None, None, NOT_ESTABLISHED),
    ],
)
def test_classes_at_their_boundaries(lo: float | None, hi: float | None, expected: str) -> None:
    assert classify(lo, hi, 0.10) == expected


def test_the_corrected_test_must_agree() -> None:
    assert classify(1.3, 1.6, 0.10, rejected=True) == HURTS
    assert classify(1.3, 1.6, 0.10, rejected=False) == NOT_ESTABLISHED
    assert classify(1.0, 1.05, 0.10, rejected=True) == WELL
    assert classify(1.05, 1.2, 0.10, rejected=True) == NOT_ESTABLISHED  # the interval decides too
    assert classify(1.01, 1.05, 0.0) == HURTS  # margin 0: an interval above 1.0 hurts
    assert classify(1.0, 1.05, 0.0) == NOT_ESTABLISHED


def test_holm_and_bh_by_hand_and_against_statsmodels() -> None:
    p = [0.01, 0.04, 0.03]
    assert adjust(p, "holm") == pytest.approx([0.03, 0.06, 0.06])
    assert adjust(p, "bh") == pytest.approx([0.03, 0.04, 0.04])
    assert adjust(p, "none") == p
    assert adjust([], "holm") == []
    many = [0.001, 0.2, 0.013, 0.04, 0.5, 0.0004, 0.03]
    assert adjust(many, "holm") == pytest.approx(list(multipletests(many, method="holm")[1]))
    assert adjust(many, "bh") == pytest.approx(list(multipletests(many, method="fdr_bh")[1]))


def test_set_verdicts_combine() -> None:
    assert combine([WELL, HURTS, NOT_ESTABLISHED]) == HURTS
    assert combine([WELL, WELL]) == WELL
    assert combine([WELL, NOT_ESTABLISHED]) == NOT_ESTABLISHED
    assert combine([WELL, None]) == NOT_ESTABLISHED  # a figure without a verdict
    assert combine([]) == NOT_ESTABLISHED


def test_x4_rule() -> None:
    assert estimable(1.0, 4.0) and not estimable(1.0, 4.0001)
    assert not estimable(0.0, 2.0) and not estimable(1.2, math.inf) and not estimable(None, 2.0)
    assert ratio_text(1.9, 0.5, 2.0, 3) == "1.90x (0.5–2.00)"
    assert ratio_text(1.9, 0.00224, 174411.0, 2) == "not estimable with 2 blocks"
    assert ratio_text(3.0, 1.5, math.inf, 5) == "not estimable with 5 blocks"
    assert ratio_text(1.9, None, None, 1) == "1.90x (no interval, 1 block)"
    assert ratio_text(math.inf, None, None, 2) == "∞x (censored) (no interval, 2 blocks)"
    assert ratio_text(1.9, None, None, 3, why="too few blocks for a tail") == (
        "1.90x (too few blocks for a tail, 3 blocks)")


def test_settings_from_the_spec() -> None:
    assert settings_from_spec({}) == ReportSettings()
    s = settings_from_spec({"report": {"margin": 0.2, "level": 0.9, "multiplicity": "BH",
                                       "pool_variance": "never"},
                            "experiment": {"precision": {"half_width": 0.05, "max_repetitions": 40,
                                                         "figures": {"enc": "e2e_p99_s"}}}})
    assert (s.margin, s.level, s.multiplicity, s.pool_variance) == (0.2, 0.9, "bh", "never")
    assert s.alpha == pytest.approx(0.1) and s.method_name == "Benjamini-Hochberg"
    assert s.precision_half_width == 0.05 and s.primary_figure("enc", "encoder") == "e2e_p99_s"
    assert s.primary_figure("dec", "vllm") == "tpot_p50_s"
    assert ReportSettings().primary_figure("enc", "encoder") == "e2e_p50_s"
    with pytest.raises(ValueError, match="multiplicity"):
        settings_from_spec({"report": {"multiplicity": "bonferroni"}})
