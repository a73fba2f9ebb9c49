"""API schemas for runs (explicit field lists)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ninja import Field, Schema


class RunInput(Schema):
    message: str = Field(..., min_length=1, max_length=8000, description="The request in plain words.")


class RunBudgets(Schema):
    max_steps: int | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, gt=0)
    max_wall_seconds: float | None = Field(None, gt=0)
    max_cost_usd: Decimal | None = Field(None, gt=0)


class RunStartIn(Schema):
    agent: str = Field("support", max_length=64)
    tenant: str = Field(..., max_length=64)
    input: RunInput
    intent: str | None = Field(None, max_length=64)
    on_behalf_of: str | None = Field(
        None, max_length=150, description="The identity the run acts for (cannot approve it)."
    )
    budgets: RunBudgets | None = Field(None, description="Lower the agent's budgets for this run.")


class RunCancelIn(Schema):
    reason: str = Field("", max_length=500)


class RunOut(Schema):
    id: str
    status: str
    agent: str
    agent_version: int
    tenant: str
    intent: str
    input: dict[str, Any]
    requester: str
    on_behalf_of: str | None
    trace_id: str
    policy_version: int | None
    terminal_reason: str | None
    failure_class: str | None
    result: dict[str, Any] | None
    pending_approval: dict[str, Any] | None
    budgets: dict[str, Any]
    usage: dict[str, Any]
    created_at: str
    started_at: str | None
    finished_at: str | None


class TraceOut(Schema):
    run_id: str
    trace_id: str
    status: str
    steps: list[dict[str, Any]]
