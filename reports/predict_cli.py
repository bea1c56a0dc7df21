"""What `cotenant predict` prints: a set's predicted figures (or capacity and W) with intervals."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reports.errors import ReportError
from reports.explain import Explanation, explain, predict_capacity, predict_rates
from reports.explain_render import (
    FIGURE_NAMES,
    cap_text,
    model_paragraph,
    scale_text,
    value,
    w_text,
)
from reports.metrics import num


def load_explanation(run_dir: Path | str) -> Explanation:
    """The run directory's profiles, model and leave-one-out scores."""
    from reports.aggregate import experiment_table
    from rundir.reader import load_run

    run = load_run(run_dir)
    if not run.completed:
        raise ReportError(f"{run.path}: no completed experiment to predict from")
    exp, dev = experiment_table(run)
    return explain(run, exp, dev)


def check_set(x: Explanation, tenants: Sequence[str]) -> None:
    missing = [t for t in tenants if t not in x.profiles]
    if missing:
        have = ", ".join(x.profiles) or "none"
        raise ReportError(f"no solo profile for {', '.join(missing)} in this run (tenants that "
                          f"ran alone: {have}); profile them alone first")
    if len(set(tenants)) != len(tenants) or len(tenants) < 1:
        raise ReportError(f"--set {'+'.join(tenants)}: name each tenant once")


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else "inf"
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def run_predict(run_dir: Path | str, tenants: Sequence[str], rates: Mapping[str, float] | None,
                mix: Mapping[str, float] | None, as_json: bool) -> str:
    x = load_explanation(run_dir)
    check_set(x, tenants)
    if rates is not None:
        extra = sorted(set(rates) ^ set(tenants))
        if extra:
            raise ReportError(f"--rates must give every tenant of --set and no other "
                              f"(differs on: {', '.join(extra)})")
        rows = predict_rates(x, {t: rates[t] for t in tenants})
        out: dict[str, Any] = {"set": list(tenants), "rates": dict(rates), "model": x.model.name,
                               "why": x.why, "predictions": rows}
    else:
        if mix is not None and set(mix) != set(tenants):
            raise ReportError("--mix must give every tenant of --set and no other")
        try:
            cap = predict_capacity(x, tenants, mix)
        except ValueError as e:
            raise ReportError(str(e)) from None
        out = {"set": list(tenants), "model": x.model.name, "why": x.why, "capacity": cap}
    if as_json:
        return json.dumps(_clean(out), indent=2)
    return text(x, out)


def _iv(figure: str, r: Mapping[str, Any], lo: str = "lo", hi: str = "hi") -> str:
    if r.get(lo) is None or r.get(hi) is None:
        return "no interval"
    return f"[{value(figure, r[lo])}, {value(figure, r[hi])}]"


def text(x: Explanation, out: Mapping[str, Any]) -> str:
    lines = [f"set: {' + '.join(out['set'])}", model_paragraph(x), ""]
    if "predictions" in out:
        for r in out["predictions"]:
            mark = " (extrapolated beyond the profile)" if r["extrapolated"] else ""
            lines.append(f"  {r['tenant']:<12} {FIGURE_NAMES.get(r['figure'], r['figure']):<15} "
                         f"{value(r['figure'], r['predicted']):>14}  95% {_iv(r['figure'], r)}"
                         f"  stretch {r['stretch']:.2f}{mark}")
        hows = sorted({r["interval"] for r in out["predictions"]})
        lines += ["", "intervals: " + "; ".join(hows)]
        return "\n".join(lines)
    c = out["capacity"]
    solo = ", ".join(f"{t} {cap_text(v, c['solo_capacity_note'][t])}"
                     for t, v in c["solo_capacity"].items())
    lines.append(f"solo capacities: {solo}")
    lines.append(f"mix: {', '.join(f'{t} {num(v, 3)}' for t, v in c['mix'].items())}")
    lines.append(f"co-located capacity: scale {scale_text(c)}"
                 + (f" ({c['censored']})" if c["censored"] else ""))
    lines.append("  rates: " + ", ".join(f"{t} {num(v, 3)} req/s" for t, v in c["rates"].items()))
    lines.append(f"weighted capacity W: {w_text(c)}")
    if c["first_fail"]:
        lines.append(f"fails first: {c['first_fail']}")
    lines += ["", f"interval: {c['interval']}"]
    return "\n".join(lines)
