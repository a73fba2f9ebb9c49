"""A run as the subject of approval requests and handoffs.

Approvals knows nothing of runs: a request names its subject (kind ``agent_run``, the
run's public id) and the tool call it holds (``action_id``), and a handoff names its run
the same way. This module is the runtime's side of that: it files requests and handoffs
for a run and finds them again. What approvals calls back (resume the run, refuse the
call, check an edit) is ``agents.approval_handler``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db.models import QuerySet

from agents.models import AgentRun, RunStatus, ToolInvocation
from approvals.models import ApprovalRequest, HandoffSource
from approvals.services import approval_request_create, handoff_create
from approvals.subjects import Proposal, Subject
from audit.services import Actor

KIND = "agent_run"


def run_subject(run: AgentRun) -> Subject:
    return Subject(kind=KIND, id=str(run.public_id), tenant_id=run.tenant_id, trace_id=run.trace_id)


def requests_of(run: AgentRun) -> QuerySet[ApprovalRequest]:
    """The approval requests of ``run`` (index approval_subject_status)."""
    return ApprovalRequest.objects.of_subject(run_subject(run))


def call_requests(run: AgentRun, invocation: ToolInvocation) -> QuerySet[ApprovalRequest]:
    """The requests that held ``invocation`` (a run has a few requests: its index serves)."""
    return requests_of(run).filter(action_id=str(invocation.pk))


def requests_of_runs(
    requests: QuerySet[ApprovalRequest], runs: QuerySet[AgentRun]
) -> QuerySet[ApprovalRequest]:
    """``requests`` narrowed to those of parked ``runs``. Two queries: the subject id is
    text and a run's public id a UUID, which SQLite and PostgreSQL cast differently, so no
    join; the parked runs are few (a pending request parks its run)."""
    parked = runs.filter(status=RunStatus.WAITING_APPROVAL).values_list("public_id", flat=True)
    return requests.filter(subject_kind=KIND, subject_id__in=[str(public_id) for public_id in parked])


def request_approval(
    *,
    run: AgentRun,
    invocation: ToolInvocation,
    decision: Any,
    summary: str = "",
    evidence: list[dict[str, Any]] | None = None,
) -> ApprovalRequest:
    """File the pending request for ``invocation`` of ``run``, inside the step's
    transaction (``approvals.services.approval_request_create``; QueueFull when full)."""
    proposal = Proposal(
        subject=run_subject(run),
        action_id=str(invocation.pk),
        tool=invocation.tool,
        arguments=invocation.arguments,
        risk_tier=invocation.tier,
        requester_id=run.requester_id,
        requester_label=run.requester_label,
        on_behalf_of_id=run.on_behalf_of_id,
        on_behalf_of_label=run.on_behalf_of_label,
    )
    return approval_request_create(
        proposal=proposal,
        decision=decision,
        actor=Actor.run(run.public_id),
        summary=summary,
        evidence=evidence,
    )


def _handoff_source(status: str, reason: str) -> str:
    text = reason.lower()
    if "review queue full" in text or ("review queue" in text and "does not exist" in text):
        return HandoffSource.BACKPRESSURE
    if "approval request expired" in text:
        return HandoffSource.EXPIRY
    if status == RunStatus.BUDGET_EXHAUSTED:
        return HandoffSource.BUDGET
    if "routed to humans" in text:
        return HandoffSource.ROUTING
    return HandoffSource.RUNTIME


def handoff_extra(
    extra: Callable | None,
    *,
    run: AgentRun,
    status: str,
    reason: str,
    result: dict[str, Any] | None,
    handoff: bool,
) -> Callable | None:
    """The runtime's ``_finish`` hook: wrap its ``extra`` so that a run ending
    ``handed_off`` (or ``budget_exhausted`` with a handoff) also gets its Handoff row in
    the same transaction (``approvals.services.handoff_create``). Returns ``extra``
    unchanged otherwise."""
    if not (status == RunStatus.HANDED_OFF or (handoff and status == RunStatus.BUDGET_EXHAUSTED)):
        return extra
    summary = (result or {}).get("handoff_summary", "")
    source = _handoff_source(status, reason)

    def both(step_row):
        if extra is not None:
            extra(step_row)
        handoff_create(
            subject=run_subject(run),
            actor=Actor.run(run.public_id),
            source=source,
            reason=reason,
            summary=summary,
        )

    return both
