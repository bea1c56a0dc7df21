"""Verdicts, the multiplicity correction, and how an interval may be printed.

With a margin delta (``report.margin``, default 0.10), on the slowdown scale (co-located /
alone for latencies, alone / co-located for throughput, goodput and attainment):

* **hurts**: the interval's lower bound is above 1 + delta;
* **shares well**: the interval's upper bound is below 1 + delta;
* otherwise **not established**, printed as such and never ranked.

The family a report tests is every co-located tenant's headline figures
(``reports.metrics.HEADLINE_*``). Each gets the two one-sided p-values against 1 + delta;
the smaller, doubled, is corrected across the family (Holm by default, or
Benjamini-Hochberg, or none: statsmodels.stats.multitest) and a verdict needs the
corrected test to reject at ``1 - level`` as well as the interval to lie on that side. So
an interval can exclude 1 + delta and the figure still be not established after the
correction; the report says so where it happens.

An interval whose hi / lo exceeds ``MAX_SPREAD`` (4) is printed as "not estimable with n
blocks", never as numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from reports.metrics import num

HURTS = "hurts"
WELL = "shares well"
NOT_ESTABLISHED = "not established"
VERDICTS = (HURTS, WELL, NOT_ESTABLISHED)

MAX_SPREAD = 4.0
_STATSMODELS = {"holm": "holm", "bh": "fdr_bh"}


def adjust(pvalues: Sequence[float], method: str) -> list[float]:
    """Corrected p-values (statsmodels ``multipletests``): ``holm``, ``bh`` or ``none``."""
    if not pvalues:
        return []
    if method == "none":
        return [float(p) for p in pvalues]
    from statsmodels.stats.multitest import multipletests

    _, corrected, _, _ = multipletests(np.asarray(pvalues, dtype=float), method=_STATSMODELS[method])
    return [float(p) for p in corrected]


def classify(lo: float | None, hi: float | None, margin: float, rejected: bool | None = None) -> str:
    """hurts / shares well / not established from an interval of the slowdown.

    ``rejected`` is the corrected test's decision (None: no test in the family, the interval
    alone decides); a verdict needs both.
    """
    bound = 1.0 + margin
    if rejected is False:
        return NOT_ESTABLISHED
    if lo is not None and not math.isnan(lo) and lo > bound:
        return HURTS
    if hi is not None and not math.isnan(hi) and hi < bound:
        return WELL
    return NOT_ESTABLISHED


def combine(verdicts: Iterable[str | None]) -> str:
    """A tenant's or a set's verdict: hurts if any figure hurts, shares well if all do."""
    vs = list(verdicts)
    if any(v == HURTS for v in vs):
        return HURTS
    if vs and all(v == WELL for v in vs):
        return WELL
    return NOT_ESTABLISHED


def estimable(lo: float | None, hi: float | None) -> bool:
    """An interval narrow enough to print: both bounds finite and positive, hi / lo <= 4."""
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return False
    if lo <= 0 or math.isinf(hi):
        return False
    return hi / lo <= MAX_SPREAD


def blocks(n: int | None) -> str:
    n = int(n or 0)
    return f"{n} block{'s' if n != 1 else ''}"


def ratio_text(est: float | None, lo: float | None, hi: float | None, n: int | None,
               digits: int = 3, why: str | None = None) -> str:
    """``1.23x (1.10–1.38)``; "not estimable with n blocks" when the interval is wider than
    x4 (or unbounded); ``1.23x (no interval, n blocks)`` without one (``why`` names the
    reason instead, e.g. "too few blocks for a tail")."""
    if lo is not None and hi is not None and not estimable(lo, hi):
        return f"not estimable with {blocks(n)}"
    if est is None or (isinstance(est, float) and math.isnan(est)):
        return "–"
    head = f"{num(est, digits)}x"
    if est == 0 or math.isinf(est):  # one arm infinite (failed requests) or zero
        head += " (censored)"
    if lo is None or hi is None:
        return f"{head} ({why or 'no interval'}, {blocks(n)})"
    return f"{head} ({num(lo, digits)}–{num(hi, digits)})"
