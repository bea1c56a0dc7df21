"""The conditions each experiment ran under, where the manifest records them: the server
lifetime it ran on, whether it started idle (the idle gate), and whether every tenant's
warm-up had settled. Older run directories have none of these keys: the columns are null
and the report says nothing about them.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from rundir.reader import RunDir

SCHEMA: dict[str, Any] = {
    "experiment_id": pl.Utf8,
    "block": pl.Int64,
    "server_lifetime": pl.Int64,
    "idle": pl.Boolean,  # the idle gate found every resident tenant idle
    "idle_waited_s": pl.Float64,
    "busy": pl.Utf8,  # what was busy when the gate gave up
    "warmup_settled": pl.Boolean,  # every tenant's warm-up settled
    "warmup_unsettled": pl.Utf8,  # tenants whose warm-up did not
}


def _row(e: Any) -> dict[str, Any]:
    m = e.manifest
    gate = m.get("idle_gate") if isinstance(m.get("idle_gate"), dict) else None
    warm = m.get("warmup") if isinstance(m.get("warmup"), dict) else None
    row: dict[str, Any] = {"experiment_id": e.id, "block": e.repetition,
                           "server_lifetime": m.get("server_lifetime")}
    if gate is not None:
        row["idle"] = gate.get("idle")
        row["idle_waited_s"] = gate.get("waited_s")
        busy = gate.get("busy") or {}
        row["busy"] = "; ".join(f"{k}: {v}" for k, v in busy.items()) if isinstance(busy, dict) else str(busy)
        row["busy"] = row["busy"] or None
    if warm is not None:
        bad = [t for t, w in warm.items() if isinstance(w, dict) and w.get("settled") is False]
        row["warmup_settled"] = not bad
        row["warmup_unsettled"] = ", ".join(bad) or None
    return row


def conditions_frame(run: RunDir) -> pl.DataFrame:
    """One row per completed experiment (nulls where the manifest does not say)."""
    rows = [_row(e) for e in run.completed]
    return pl.DataFrame(rows, schema=SCHEMA) if rows else pl.DataFrame(schema=SCHEMA)


def summary(cond: pl.DataFrame) -> list[str]:
    """Plain sentences: server lifetimes, experiments that did not start idle, warm-ups
    that did not settle (nothing for keys the run did not record)."""
    out: list[str] = []
    if cond.height == 0:
        return out
    life = cond["server_lifetime"].drop_nulls()
    if life.len():
        out.append(f"{life.n_unique()} server lifetime{'s' if life.n_unique() != 1 else ''} "
                   "(servers restarted between blocks so that the spread between instances "
                   "enters the intervals)")
    idle = cond.filter(pl.col("idle").is_not_null())
    if idle.height:
        bad = idle.filter(~pl.col("idle"))
        if bad.height:
            ids = ", ".join(bad["experiment_id"].head(5).to_list())
            out.append(f"{bad.height} of {idle.height} experiments did not start idle "
                       f"(the idle gate gave up): {ids}" + (" …" if bad.height > 5 else ""))
        else:
            out.append(f"every one of {idle.height} experiments started idle")
    warm = cond.filter(pl.col("warmup_settled").is_not_null())
    if warm.height:
        bad = warm.filter(~pl.col("warmup_settled"))
        if bad.height:
            out.append(f"{bad.height} experiments ran on a server whose warm-up did not settle: "
                       + ", ".join(bad["experiment_id"].head(5).to_list()))
        else:
            out.append("every experiment ran after a settled warm-up")
    return out
