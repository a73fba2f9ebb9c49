"""API schemas for approvals (explicit field lists)."""

from __future__ import annotations

from typing import Any, Literal

from ninja import Field, Schema


class DecisionIn(Schema):
    decision: Literal["approve", "reject"]
    reason: str = Field("", max_length=2000)
    arguments: dict[str, Any] | None = Field(
        None, description="Edited arguments (approve only); recorded as an edit with its diff."
    )


class ClaimOut(Schema):
    by: str | None
    until: str | None
    live: bool


class DecisionOut(Schema):
    reviewer: str
    decision: str
    reason: str
    edited: bool
    diff: dict[str, Any] | None
    at: str


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
    subject_kind: str = Field("", description="What the request is about: agent_run.")
    subject_id: str = Field("", description="Its id: for agent_run, the run's id.")
    run_id: str | None = Field(None, description="The run's id, for a request about a run.")
    decided_at: str | None
    risk_tier: str = ""
    amount_cents: int | None = None
    currency: str = ""
    tenant: str = ""
    requester: str = ""
    on_behalf_of: str | None = None
    summary: str = ""
    due_at: str | None = None
    sla_state: str = ""
    escalated_from: str | None = None
    claim: ClaimOut | None = None
    created_at: str | None = None


class ApprovalDetailOut(ApprovalOut):
    evidence: list[dict[str, Any]]
    policy: dict[str, Any]
    trace_id: str
    trace_url: str
    decisions: list[DecisionOut]
    decision_reason: str
    review: dict[str, Any] | None = Field(
        None,
        description=(
            "The tool's own check of the arguments under review, read at this request (null "
            "for a tool without one). For apply_credit: customer, ticket, amount_cents, "
            "justified_cents, charges (ref, date, amount_cents, duplicate, credited, credit_id, "
            "credited_at), problems (code, message: the tool will refuse the call) and "
            "history (the customer's credits of the last 90 days)."
        ),
    )


class ApprovalPageOut(Schema):
    items: list[ApprovalOut]
    next_cursor: str | None
