"""The report's settings, read from the run directory: campaign.json's ``spec.report``.

Reports read run directories only, so they take the verdict margin, the confidence level,
the multiplicity correction and the pooling choice from the spec as the campaign recorded
it (``spec.get("report") or {}``), with these defaults where a key is absent (older runs,
or a spec without a ``report:`` section):

| key | default | meaning |
| --- | --- | --- |
| ``margin`` | 0.10 | delta: *hurts* when the interval's lower bound is above 1 + delta |
| ``level`` | 0.95 | the confidence level of every interval |
| ``multiplicity`` | ``holm`` | ``holm``, ``bh`` (Benjamini-Hochberg) or ``none``, across the family |
| ``pool_variance`` | ``auto`` | ``auto`` (pool a cell with fewer than 5 pairs), ``always``, ``never`` |

The primary figure of each tenant (the one ``experiment.precision`` sizes the campaign
on) is ``tpot_p50_s`` for decoders and ``e2e_p50_s`` for the encoder, unless
``spec.experiment.precision.figures`` names another per tenant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reports.metrics import PRIMARY_DECODER, PRIMARY_ENCODER

MULTIPLICITY = ("holm", "bh", "none")
POOL = ("auto", "always", "never")
# auto: a cell with fewer pairs than this takes the residual variance pooled over the campaign
POOL_BELOW = 5

METHOD_NAMES = {"holm": "Holm", "bh": "Benjamini-Hochberg", "none": "no correction"}


@dataclass(frozen=True)
class ReportSettings:
    margin: float = 0.10
    level: float = 0.95
    multiplicity: str = "holm"
    pool_variance: str = "auto"
    precision_half_width: float | None = None  # spec.experiment.precision.half_width
    precision_max_repetitions: int | None = None
    primary: Mapping[str, str] = field(default_factory=dict)  # tenant -> figure (overrides)

    @property
    def alpha(self) -> float:
        return 1.0 - self.level

    @property
    def method_name(self) -> str:
        return METHOD_NAMES[self.multiplicity]

    def primary_figure(self, tenant: str, kind: str) -> str:
        return self.primary.get(tenant) or (PRIMARY_ENCODER if kind == "encoder" else PRIMARY_DECODER)


def settings_from_spec(spec: Mapping[str, Any] | None) -> ReportSettings:
    """``ReportSettings`` from a campaign spec (a dict, as campaign.json holds it)."""
    spec = spec or {}
    rep = spec.get("report") or {}
    prec = (spec.get("experiment") or {}).get("precision") or {}
    margin = float(rep.get("margin", 0.10))
    level = float(rep.get("level", 0.95))
    mult = str(rep.get("multiplicity", "holm")).lower()
    pool = str(rep.get("pool_variance", "auto")).lower()
    if margin < 0 or not 0.5 <= level < 1.0:
        raise ValueError(f"report: margin must be >= 0 and level in [0.5, 1): {margin}, {level}")
    if mult not in MULTIPLICITY:
        raise ValueError(f"report.multiplicity must be one of {MULTIPLICITY}, got {mult!r}")
    if pool not in POOL:
        raise ValueError(f"report.pool_variance must be one of {POOL}, got {pool!r}")
    hw = prec.get("half_width")
    cap = prec.get("max_repetitions")
    return ReportSettings(
        margin=margin,
        level=level,
        multiplicity=mult,
        pool_variance=pool,
        precision_half_width=None if hw is None else float(hw),
        precision_max_repetitions=None if cap is None else int(cap),
        primary={str(k): str(v) for k, v in (prec.get("figures") or {}).items()},
    )
