"""The one strict pydantic base: of the specs (campaign, tenants, workloads) and of the run
directory's envelopes. A misspelled key is an error, not a silently ignored one."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
