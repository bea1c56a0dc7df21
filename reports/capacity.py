"""Capacity (issue 16): what a run directory's ``capacity.json`` and ``probes.parquet`` say.

* **Capacity alone** C_i: the highest offered rate whose SLO attainment met the target,
  with the search's bracket (C_i is its low end), the probes it took, what binds at the
  knee (the probe just past capacity), and censoring: "at least" when the highest rate
  searched still passed, 0 with the reason when no rate did.
* **Weighted capacity** W of a set along a mix (SCIENCE.md): W = Σ r_i / C_i at the rates
  the set sustains together. Its verdict reads the bracket ``W_bracket`` (the λ bracket
  combined with the C_i brackets): **sharing wins** when it lies wholly above 1,
  **sharing hurts** when wholly below 1, otherwise **not established**. A solo capacity
  that is only a lower bound makes W only an upper bound (W cannot be shown to win); a
  co-located scale that is only a lower bound makes W one (it cannot be shown to hurt).
  Sets are ranked by W, established ones only.
* GPUs for target loads: ``gpus_needed`` (reports.capacity_plan).

``capacity_text(run_dir, targets)`` is what ``cotenant capacity RUN_DIR --target ...`` prints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

import rundir.schema as _schema
from reports.capacity_plan import frontier, gpus_needed, solo_low
from reports.errors import ReportError
from reports.metrics import num
from rundir.errors import RunDirError
from rundir.io import read_json
from rundir.reader import RunDir

__all__ = ["CapacityRun", "capacity_table", "capacity_text", "frontier", "gpus_needed", "gpus_lines",
           "load_capacity", "set_table", "w_verdict", "W_MAP_TITLE"]

WINS = "sharing wins"
HURTS = "sharing hurts"
NOT_ESTABLISHED = "not established"
# the strategy map of a run that measured capacity draws W (reports.capacity_figures.w_map)
W_MAP_TITLE = "weighted capacity W per set"

# the contract's (CAPACITY.md) columns, until rundir.schema holds PROBE_SCHEMA
_PROBE_COLUMNS: dict[str, pl.DataType | type[pl.DataType]] = {
    "search": pl.Utf8, "kind": pl.Utf8, "index": pl.Int64, "attempt": pl.Int64,
    "experiment_id": pl.Utf8, "status": pl.Utf8, "tenant": pl.Utf8, "scale": pl.Float64,
    "offered_rps": pl.Float64, "requests": pl.Int64, "met": pl.Int64, "attainment": pl.Float64,
    "ci_lo": pl.Float64, "ci_hi": pl.Float64, "target": pl.Float64, "decision": pl.Utf8,
    "decided_by": pl.Utf8, "early_stop": pl.Boolean, "reason": pl.Utf8, "limits": pl.Utf8,
}
PROBE_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = dict(
    getattr(_schema, "PROBE_SCHEMA", _PROBE_COLUMNS))

TENANT_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "tenant": pl.Utf8, "target_attainment": pl.Float64, "capacity_rps": pl.Float64,
    "bracket_lo": pl.Float64, "bracket_hi": pl.Float64, "rel_width": pl.Float64,
    "probes": pl.Int64, "binding": pl.Utf8, "knee_experiment": pl.Utf8, "censored": pl.Utf8,
    "reason": pl.Utf8,
}
SET_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "rank": pl.Int64, "set": pl.Utf8, "tenants": pl.Utf8, "mix_index": pl.Int64, "mix": pl.Utf8,
    "rates": pl.Utf8, "scale": pl.Float64, "scale_lo": pl.Float64, "scale_hi": pl.Float64,
    "W": pl.Float64, "W_lo": pl.Float64, "W_hi": pl.Float64, "verdict": pl.Utf8,
    "established": pl.Boolean, "failed_first": pl.Utf8, "binding": pl.Utf8, "probes": pl.Int64,
    "censored": pl.Utf8, "reason": pl.Utf8, "knee_experiment": pl.Utf8, "note": pl.Utf8,
}


def w_verdict(lo: float | None, hi: float | None) -> str:
    """"sharing wins" when [lo, hi] lies wholly above 1, "sharing hurts" wholly below 1,
    else (touching or straddling 1, or unknown) "not established"."""
    if lo is not None and lo > 1.0:
        return WINS
    if hi is not None and hi < 1.0:
        return HURTS
    return NOT_ESTABLISHED


def _pair(v: Any) -> tuple[float | None, float | None]:
    if isinstance(v, list | tuple) and len(v) == 2:
        return (None if v[0] is None else float(v[0])), (None if v[1] is None else float(v[1]))
    return None, None


def _at_least(c: Any) -> bool:
    return str(c or "").startswith("at least")


def _limits(v: Any) -> str:
    if isinstance(v, str):
        return v
    return ", ".join(str(x) for x in v or ())


def capacity_table(data: Mapping[str, Any]) -> pl.DataFrame:
    """One row per tenant searched alone (TENANT_SCHEMA)."""
    targets = data.get("target_attainment") or {}
    rows = []
    for t, e in (data.get("tenants") or {}).items():
        lo, hi = _pair(e.get("bracket"))
        c = e.get("capacity_rps")
        lo = c if lo is None else lo
        rows.append({
            "tenant": t, "target_attainment": targets.get(t), "capacity_rps": c,
            "bracket_lo": lo, "bracket_hi": hi,
            "rel_width": hi / lo - 1 if lo and hi is not None and math.isfinite(hi) else None,
            "probes": e.get("probes"), "binding": _limits(e.get("binding")),
            "knee_experiment": e.get("knee_experiment"), "censored": e.get("censored"),
            "reason": e.get("reason"),
        })
    return pl.DataFrame(rows, schema=TENANT_SCHEMA)


def _w_bounds(data: Mapping[str, Any], s: Mapping[str, Any],
              tenants: list[str]) -> tuple[float | None, float | None, float | None, list[str]]:
    """W and its bracket as the verdict may read them, with notes on what bounds them."""
    caps = data.get("tenants") or {}
    mix = s.get("mix") or {}
    notes: list[str] = []
    lam_lo, lam_hi = _pair(s.get("bracket"))
    lam_lo = s.get("scale") if lam_lo is None else lam_lo
    zero = [t for t in tenants if (caps.get(t) or {}).get("capacity_rps") == 0]
    if zero:
        return None, None, None, [f"W undefined: {', '.join(zero)} meets its SLO at no rate alone"]
    w = s.get("W")
    lo, hi = _pair(s.get("W_bracket"))  # an end written as null is open (unbounded)
    if "W_bracket" not in s:  # from the brackets: λ_lo Σ m/C_hi .. λ_hi Σ m/C_lo
        c_lo = {t: solo_low(data, t) for t in tenants}
        c_hi = {t: _pair((caps.get(t) or {}).get("bracket"))[1] or c_lo[t] for t in tenants}
        if all(c_lo[t] and mix.get(t) is not None for t in tenants) and lam_lo is not None:
            lo = lam_lo * sum(float(mix[t]) / float(c_hi[t] or 1) for t in tenants)
            hi = None if lam_hi is None else lam_hi * sum(
                float(mix[t]) / float(c_lo[t] or 1) for t in tenants)
            w = w if w is not None else lam_lo * sum(float(mix[t]) / float(c_lo[t] or 1) for t in tenants)
    bounded = [t for t in tenants if _at_least((caps.get(t) or {}).get("censored"))]
    if bounded:
        lo = None
        notes.append(f"W is only an upper bound: the capacity of {', '.join(bounded)} alone is only "
                     "a lower bound")
    if _at_least(s.get("censored")):
        hi = None
        notes.append("W is only a lower bound: every scale searched passed")
    return w, lo, hi, notes


def set_table(data: Mapping[str, Any]) -> pl.DataFrame:
    """One row per set and mix (SET_SCHEMA): established sets ranked by W (highest first),
    the others after them without a rank."""
    rows = []
    for key, s in (data.get("sets") or {}).items():
        tenants = [str(t) for t in s.get("tenants") or key.split("#")[0].split("+")]
        w, lo, hi, notes = _w_bounds(data, s, tenants)
        verdict = w_verdict(lo, hi) if w is not None else NOT_ESTABLISHED
        if s.get("reason"):
            notes.append(str(s["reason"]))
        sc_lo, sc_hi = _pair(s.get("bracket"))
        mix, rates = s.get("mix") or {}, s.get("rates") or {}
        binding = s.get("binding") or {}
        rows.append({
            "set": key, "tenants": "+".join(tenants), "mix_index": s.get("mix_index") or 0,
            "mix": ", ".join(f"{t} {num(mix[t], 3)}" for t in tenants if t in mix),
            "rates": ", ".join(f"{t} {num(rates[t], 3)}" for t in tenants if t in rates),
            "scale": s.get("scale"), "scale_lo": sc_lo, "scale_hi": sc_hi,
            "W": w, "W_lo": lo, "W_hi": hi, "verdict": verdict,
            "established": verdict != NOT_ESTABLISHED, "failed_first": s.get("failed_first"),
            "binding": "; ".join(f"{t}: {_limits(v) or 'nothing saturated'}" for t, v in binding.items())
            if isinstance(binding, dict) else _limits(binding),
            "probes": s.get("probes"), "censored": s.get("censored"), "reason": s.get("reason"),
            "knee_experiment": s.get("knee_experiment"), "note": "; ".join(notes) or None,
        })
    df = pl.DataFrame(rows, schema={k: v for k, v in SET_SCHEMA.items() if k != "rank"})
    df = df.sort(["established", "W"], descending=[True, True], nulls_last=True)
    df = df.with_columns(rank=pl.when(pl.col("established")).then(pl.int_range(1, pl.len() + 1)))
    return df.select(list(SET_SCHEMA)).cast(SET_SCHEMA)  # type: ignore[arg-type]


def read_probes(path: Path) -> pl.DataFrame:
    """probes.parquet with every column of PROBE_SCHEMA (missing ones null); empty when
    there is no such file."""
    if not path.is_file():
        return pl.DataFrame(schema=PROBE_SCHEMA)
    try:
        df = pl.read_parquet(path)
    except (OSError, pl.exceptions.ComputeError) as e:
        raise RunDirError(f"{path}: cannot read: {e}") from None
    for c, dt in PROBE_SCHEMA.items():
        df = df.with_columns(pl.col(c).cast(dt) if c in df.columns else pl.lit(None, dtype=dt).alias(c))
    return df.select([*PROBE_SCHEMA, *[c for c in df.columns if c not in PROBE_SCHEMA]])


@dataclass(frozen=True)
class CapacityRun:
    """A run directory's capacity results: the JSON as written, the probes, the tables."""

    path: Path
    data: dict[str, Any]
    probes: pl.DataFrame
    tenants: pl.DataFrame  # capacity_table
    sets: pl.DataFrame  # set_table

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """Pairs with at least one measured mix, in the order capacity.json lists them."""
        out: list[tuple[str, str]] = []
        for k, s in (self.data.get("sets") or {}).items():
            ts = tuple(s.get("tenants") or k.split("#")[0].split("+"))
            if len(ts) == 2 and ts not in out:
                out.append((ts[0], ts[1]))
        return out

    @property
    def searches(self) -> list[str]:
        return list(dict.fromkeys(self.probes["search"].drop_nulls().to_list()))


def load_capacity(run_dir: RunDir | str | Path) -> CapacityRun | None:
    """``capacity.json`` and ``probes.parquet`` of ``run_dir``; None when the run measured no
    capacity. ``RunDirError`` names a file that cannot be read."""
    path = run_dir.path if isinstance(run_dir, RunDir) else Path(run_dir)
    f = path / "capacity.json"
    if not f.is_file():
        return None
    data = read_json(f)
    return CapacityRun(path, data, read_probes(path / "probes.parquet"), capacity_table(data), set_table(data))


# ---- words -------------------------------------------------------------------------------------


def capacity_words(r: Mapping[str, Any]) -> str:
    """``3.10 req/s``, ``≥ 8.00 req/s`` (at least: the highest rate searched passed) or ``0``."""
    c = r.get("capacity_rps")
    if c is None:
        return "–"
    if c == 0:
        return "0 req/s"
    return ("≥ " if _at_least(r.get("censored")) else "") + f"{num(c, 3)} req/s"


def bracket_words(lo: float | None, hi: float | None) -> str:
    if lo is None and hi is None:
        return "–"
    return f"[{num(lo, 3) if lo is not None else '?'}, {num(hi, 3) if hi is not None else '?'}]"


def w_words(r: Mapping[str, Any]) -> str:
    """``1.23 [1.10, 1.31]``; an unknown end prints as ``?`` (a bound, see the note)."""
    if r.get("W") is None:
        return "–"
    return f"{num(r['W'], 3)} {bracket_words(r.get('W_lo'), r.get('W_hi'))}"


def tenant_note(r: Mapping[str, Any]) -> str:
    bits = [str(r["censored"])] if r.get("censored") else []
    if r.get("reason"):
        bits.append(str(r["reason"]))
    return "; ".join(bits)


def _text_table(heads: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [heads, *rows]]


def gpus_lines(plan: Mapping[str, Any]) -> list[str]:
    """``gpus_needed``'s answer in a few lines of text."""
    tg = plan["targets"]
    out = [f"GPUs for {', '.join(f'{t} {num(v, 3)} req/s' for t, v in tg.items())} ({plan['basis']}):"]
    d = plan["dedicated"]
    parts = []
    for t, r in d["tenants"].items():
        if r["gpus"] is None:
            parts.append(f"{t}: {r['note']}")
        elif r["target_rps"] > 0:
            parts.append(f"{t}: ⌈{num(r['target_rps'], 3)} / {num(r['capacity_rps'], 3)}⌉ = {r['gpus']}")
        else:
            parts.append(f"{t}: 0")
    out.append(f"  dedicated: {'–' if d['gpus'] is None else d['gpus']} GPUs ({'; '.join(parts)})")
    for c in plan["co_located"]:
        name = " + ".join(c["tenants"])
        if c["gpus"] is None:
            out.append(f"  {name} co-located {c['how']}: {c['note']}")
            continue
        each = ", ".join(f"{t} {num(v, 3)}" for t, v in (c["per_gpu_rps"] or {}).items())
        rest = "".join(f" + {n} for {t} alone" if n is not None else f" + {t}: cannot be served"
                       for t, n in c["dedicated_rest"].items())
        total = "–" if c["total_gpus"] is None else str(c["total_gpus"])
        out.append(f"  {name} co-located {c['how']}: {c['gpus']} GPUs"
                   + (f" (one GPU carries {each} req/s)" if each else "")
                   + (f"{rest} = {total} GPUs" if rest else ""))
    best = plan.get("best")
    if best is None:
        out.append("  no plan serves every target")
    else:
        saved = (d["gpus"] - best["gpus"]) if d["gpus"] is not None else None
        out.append(f"  fewest: {best['plan']}, {best['gpus']} GPUs"
                   + (f" ({saved} fewer than dedicated)" if saved else ""))
    return out


def capacity_text(run_dir: RunDir | str | Path, targets: Mapping[str, float] | None = None) -> str:
    """What ``cotenant capacity RUN_DIR [--target a=300,b=200]`` prints: each tenant's
    capacity alone, the sets ranked by W with their verdicts, and with ``targets`` the GPUs
    they need. ``ReportError`` when the run measured no capacity; ``ValueError`` for a
    target naming a tenant that was not measured."""
    cap = load_capacity(run_dir)
    if cap is None:
        path = run_dir.path if isinstance(run_dir, RunDir) else Path(run_dir)
        raise ReportError(f"{path}: no capacity.json (a campaign with `strategy: [capacity]` writes it)")
    out = [f"capacity of {cap.path.name}", ""]
    trows = [[r["tenant"], capacity_words(r), bracket_words(r["bracket_lo"], r["bracket_hi"]),
              "–" if r["target_attainment"] is None else f"{num(100 * r['target_attainment'], 3)}%",
              str(r["probes"] or "–"), r["binding"] or "nothing saturated", tenant_note(r)]
             for r in cap.tenants.iter_rows(named=True)]
    if trows:
        out += ["alone (C_i: the highest rate whose SLO attainment met the target)"]
        out += _text_table(["tenant", "capacity", "bracket", "target", "probes", "binds at the knee", "note"], trows)
    if cap.sets.height:
        out += ["", "co-located, ranked by weighted capacity W = Σ r_i / C_i (W > 1: one shared GPU "
                "serves more than dedicated GPUs; only established sets are ranked)"]
        srows = [["" if r["rank"] is None else str(r["rank"]), r["set"], r["rates"] or "–", w_words(r),
                  r["verdict"], r["failed_first"] or "–", r["binding"] or "–", r["note"] or ""]
                 for r in cap.sets.iter_rows(named=True)]
        out += _text_table(["#", "set", "rates together (req/s)", "W [bracket]", "verdict", "fails first",
                            "binds at the knee", "note"], srows)
    if targets:
        out += ["", *gpus_lines(gpus_needed(cap.data, targets))]
    return "\n".join(out) + "\n"
