"""API schemas for approvals (the minimal decision endpoint; issue 6 extends them)."""

from __future__ import annotations

from typing import Any, Literal

from ninja import Field, Schema


class DecisionIn(Schema):
    decision: Literal["approve", "reject"]
    reason: str = Field("", max_length=2000)
    arguments: dict[str, Any] | None = Field(None, description="Edited arguments (approve only).")


class ApprovalOut(Schema):
    id: str
    status: str
    queue: str
    tool: str
    arguments: dict[str, Any]
    approved_arguments: dict[str, Any] | None
    edited: bool
    approvals_required: int
    approvals: int
    run_id: str
    decided_at: str | None
