"""Experiment ids (docs/run-directory.md), built and parsed here and nowhere else.

``<active tenants joined by '+'>__<resident label>__x<rate scale>__r<repetition>``, e.g.
``llama-a+minilm__all__x1__r0``. The resident label is ``all`` when every tenant of the
campaign is resident, else the resident names joined by '+'. Ids are stable across runs of
the same spec, which is what ``--resume`` relies on. The id without its repetition is the
group id: experiments that differ only by repetition share it.

A capacity probe (``orchestrator.capacity``) writes its scale as ``cap<k>x<scale>``: ``k``
the search's mix (0 for a tenant alone), ``scale`` the multiplier of the workload's rate
(alone) or the mix's scale (a set), and the repetition is the probe's attempt, e.g.
``llama-a__all__cap0x2.5__r0``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from rundir.errors import RunDirError

ALL = "all"  # the resident label of an experiment where every tenant is resident
_SCALE = re.compile(r"^(?:cap(?P<ray>\d+))?x(?P<v>[0-9][0-9.e+-]*|inf)$")
_REP = re.compile(r"^r(?P<v>\d+)$")


def _fmt_scale(s: float) -> str:
    return f"{s:g}"


@dataclass(frozen=True)
class ExperimentId:
    """One experiment's id (or, with ``repetition`` None, its group's)."""

    active: tuple[str, ...]
    resident: tuple[str, ...] | None  # None: every tenant of the campaign (label ``all``)
    rate_scale: float
    repetition: int | None = None
    ray: int | None = None  # a capacity probe: its search's mix (None: not a probe)

    @classmethod
    def of(cls, active: Iterable[str], resident: Iterable[str], tenants: Iterable[str],
           rate_scale: float, repetition: int | None, ray: int | None = None) -> ExperimentId:
        """The id of ``active`` among ``resident``, in a campaign of ``tenants``."""
        res = tuple(resident)
        return cls(tuple(active), None if set(res) == set(tenants) else res,
                   float(rate_scale), repetition, ray)

    @property
    def probe(self) -> bool:
        return self.ray is not None

    @property
    def resident_label(self) -> str:
        return ALL if self.resident is None else "+".join(self.resident)

    def format(self) -> str:
        cap = "" if self.ray is None else f"cap{self.ray}"
        gid = (f"{'+'.join(self.active)}__{self.resident_label}__{cap}"
               f"x{_fmt_scale(self.rate_scale)}")
        return gid if self.repetition is None else f"{gid}__r{self.repetition}"

    def __str__(self) -> str:
        return self.format()

    @classmethod
    def parse(cls, text: str) -> ExperimentId:
        """An experiment id or a group id back into its parts; ``RunDirError`` if it is
        neither. Parsed from the right: the repetition and the scale are unambiguous."""
        parts = text.rsplit("__", 3)
        rep: int | None = None
        if len(parts) == 4 and (m := _REP.match(parts[3])):
            rep = int(m["v"])
            parts = parts[:3]
        elif len(parts) == 4:
            parts = [f"{parts[0]}__{parts[1]}", parts[2], parts[3]]
        scale = _SCALE.match(parts[-1]) if len(parts) == 3 else None
        try:
            rate = float(scale["v"]) if scale else None
        except ValueError:
            rate = None
        if rate is None or not parts[0] or not parts[1]:
            raise RunDirError(
                f"{text!r} is not an experiment id "
                "(<active>__<resident>__x<rate scale>__r<repetition>)"
            )
        resident = None if parts[1] == ALL else tuple(parts[1].split("+"))
        ray = int(scale["ray"]) if scale and scale["ray"] is not None else None
        return cls(tuple(parts[0].split("+")), resident, rate, rep, ray)

    @property
    def group(self) -> ExperimentId:
        """The same id without its repetition."""
        return replace(self, repetition=None)

    @property
    def group_id(self) -> str:
        return self.group.format()

    @property
    def label(self) -> str:
        """For people: ``a + b``; ``a + b (x2)`` at another rate scale than 1."""
        name = " + ".join(self.active)
        if self.ray is not None:
            mix = f"mix {self.ray}, " if self.ray else ""
            return f"{name} (capacity probe, {mix}x{_fmt_scale(self.rate_scale)})"
        return name if self.rate_scale == 1 else f"{name} (x{_fmt_scale(self.rate_scale)})"


def group_id(experiment_id: str) -> str:
    """``a+b__all__x1__r0`` -> ``a+b__all__x1``."""
    return ExperimentId.parse(experiment_id).group_id


def group_label(group_id: str) -> str:
    """``a+b__all__x1`` -> ``a + b``; ``a+b__all__x2`` -> ``a + b (x2)``."""
    return ExperimentId.parse(group_id).label
