"""Approval requests and decisions (the minimal core the runtime needs; the approvals
issue extends it with claiming, SLA sweeps, notifications and handoffs).

- ``approval_request_create`` runs inside the runtime's step transaction when policy says
  ``require_approval``: the run parks in the same commit.
- ``approval_decide`` enforces decision rights (guardian ``decide_reviewqueue`` on the
  queue), segregation of duties (the requester and the identity the run acts for cannot
  approve; dual control needs two distinct reviewers), a reason to reject, and 409 on a
  request that is no longer pending. The final decision moves the run back to ``queued``
  and enqueues its resume on commit.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from approvals.models import ApprovalDecision, ApprovalRequest, ApprovalStatus, DecisionKind, ReviewQueue
from audit.services import Actor, audit_record
from console.errors import Conflict, InvalidInput, PermissionDenied

logger = logging.getLogger(__name__)

DECIDE_PERM = "approvals.decide_reviewqueue"
VIEW_PERM = "approvals.view_reviewqueue"


class ApprovalUnavailable(Exception):
    """No request can be created (queue missing or full): the run hands off to a human."""


class QueueFull(ApprovalUnavailable):
    pass


def approval_request_create(
    *, run, invocation, decision, summary: str = "", evidence: list[dict[str, Any]] | None = None
) -> ApprovalRequest:
    """Create the pending request for a proposed action, inside the caller's transaction.

    Raises QueueFull (a subclass of ApprovalUnavailable) when the queue is missing or at
    capacity: requests do not pile up silently; the run hands off with that reason.
    """
    queue = ReviewQueue.objects.filter(slug=decision.queue).first()
    if queue is None:
        raise QueueFull(
            f"Review queue {decision.queue!r} does not exist; failing closed: "
            "a person must handle this request."
        )
    pending = ApprovalRequest.objects.filter(queue=queue, status=ApprovalStatus.PENDING).count()
    if pending >= queue.capacity:
        raise QueueFull(
            f"Review queue full: {queue.name} holds {pending} pending requests "
            f"(capacity {queue.capacity}); handed off to a human."
        )
    arguments = invocation.arguments
    amount = arguments.get("amount_cents") if isinstance(arguments.get("amount_cents"), int) else None
    request = ApprovalRequest.objects.create(
        tenant_id=run.tenant_id,
        queue=queue,
        run=run,
        invocation=invocation,
        approvals_required=decision.approvals_required or 1,
        tool=invocation.tool,
        arguments=arguments,
        amount_cents=amount,
        currency=arguments.get("currency", "USD") if amount is not None else "",
        risk_tier=invocation.tier,
        summary=summary[:4000],
        evidence=evidence or [],
        policy_version=decision.policy_version,
        policy_rule=decision.rule_id[:64],
        policy_reason=decision.reason[:2000],
        trace_id=run.trace_id,
        requester_id=run.requester_id,
        requester_label=run.requester_label,
        on_behalf_of_id=run.on_behalf_of_id,
        on_behalf_of_label=run.on_behalf_of_label,
        due_at=timezone.now() + timedelta(minutes=queue.sla_minutes),
    )
    audit_record(
        actor=Actor.run(run.public_id),
        action="approval.requested",
        tenant=run.tenant_id,
        object_type="approval_request",
        object_id=request.id,
        trace_id=run.trace_id,
        policy_version=decision.policy_version,
        payload={
            "request_id": str(request.id),
            "queue": queue.slug,
            "tool": request.tool,
            "arguments": arguments,
            "amount_cents": amount,
            "approvals_required": request.approvals_required,
            "due_at": request.due_at.isoformat(),
            "run_id": str(run.public_id),
        },
    )
    return request


def _refuse(*, actor: Any, request: ApprovalRequest, reason: str, status: int = 403) -> None:
    """Audit a refused decision in its own transaction, then raise."""
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="approval.refused",
            tenant=request.tenant_id,
            object_type="approval_request",
            object_id=request.id,
            trace_id=request.trace_id,
            payload={"request_id": str(request.id), "reason": reason},
        )
    if status == 409:
        raise Conflict(reason)
    raise PermissionDenied(reason)


def _is_party(actor: User, request: ApprovalRequest) -> bool:
    return (
        actor.pk == request.requester_id
        or actor.pk == request.on_behalf_of_id
        or (bool(request.on_behalf_of_label) and actor.username == request.on_behalf_of_label)
    )


def _check_edit(*, actor: User, request: ApprovalRequest, arguments: dict[str, Any]) -> None:
    from agents import policy
    from agents.models import AgentRun
    from agents.runtime import _facts
    from agents.tools import get_tool

    tool = get_tool(request.tool)
    problems = tool.validate(arguments) if tool else [f"unknown tool {request.tool}"]
    if problems:
        raise InvalidInput("Edited arguments are invalid: " + "; ".join(problems))
    original = request.approved_arguments or request.arguments
    if arguments.get("customer") != original.get("customer"):
        _refuse(actor=actor, request=request, reason="An edit may not change the customer; reject instead.")
    old_amount, new_amount = original.get("amount_cents"), arguments.get("amount_cents")
    if isinstance(old_amount, int) and isinstance(new_amount, int) and new_amount > old_amount:
        _refuse(
            actor=actor,
            request=request,
            reason=f"An edit may lower the amount, not raise it ({old_amount} -> {new_amount} cents).",
        )
    run = AgentRun.objects.select_related("tenant").get(pk=request.run_id)
    decision = policy.decide(
        policy.ActionContext(
            tool=request.tool,
            tier=request.risk_tier,
            arguments=arguments,
            tenant=run.tenant.slug,
            intent=run.intent,
            facts=_facts(run, arguments),
        )
    )
    if decision.effect == policy.DENY:
        _refuse(actor=actor, request=request, reason=f"Policy denies the edited arguments: {decision.reason}")
    if decision.approvals_required > request.approvals_required:
        _refuse(
            actor=actor,
            request=request,
            reason="The edit needs more approvals than this request; reject and let the agent re-propose.",
        )


def approval_decide(
    *,
    actor: User,
    request: ApprovalRequest,
    decision: str,
    reason: str,
    arguments: dict[str, Any] | None = None,
) -> ApprovalRequest:
    """Record ``actor``'s decision; on the deciding approval (or any rejection) close the
    request, move the run to ``queued`` and enqueue its resume on commit.

    403 (PermissionDenied) without decide rights, for the requester or on-behalf-of
    identity, or for a second decision by the same reviewer; 409 (Conflict) when the
    request is no longer pending; 422 (InvalidInput) for a reject without a reason or
    invalid edited arguments. Every refusal is audited as ``approval.refused``.
    """
    from agents.models import AgentRun, RunStatus
    from agents.tasks import enqueue_run

    if decision not in DecisionKind.values:
        raise InvalidInput(f"decision must be one of {', '.join(DecisionKind.values)}.")
    reason = (reason or "").strip()
    if decision == DecisionKind.REJECT and not reason:
        raise InvalidInput("A reason is required to reject: the agent and the requester will read it.")
    if arguments is not None and decision == DecisionKind.REJECT:
        raise InvalidInput("Edited arguments only make sense with approve.")
    queue = request.queue
    if not actor.has_perm(DECIDE_PERM, queue):
        _refuse(actor=actor, request=request, reason=f"You may not decide in queue {queue.name}.")
    if _is_party(actor, request):
        _refuse(
            actor=actor,
            request=request,
            reason="Segregation of duties: the requester or the identity a run acts for cannot "
            "decide on its own request.",
        )
    if request.status != ApprovalStatus.PENDING:
        _refuse(
            actor=actor,
            request=request,
            status=409,
            reason=f"This request is already {request.status}; no further decisions are taken.",
        )
    edited = False
    if arguments is not None and decision == DecisionKind.APPROVE:
        from agents.broker import canonical_json

        if canonical_json(arguments) != canonical_json(request.approved_arguments or request.arguments):
            edited = True
            _check_edit(actor=actor, request=request, arguments=arguments)

    refusal: tuple[str, int] | None = None
    with transaction.atomic():
        locked = ApprovalRequest.objects.select_for_update().get(pk=request.pk)
        if locked.status != ApprovalStatus.PENDING:
            refusal = (f"This request is already {locked.status}; no further decisions are taken.", 409)
        elif ApprovalDecision.objects.filter(request=locked, reviewer=actor).exists():
            refusal = ("You already decided on this request; dual control needs a different reviewer.", 403)
        if refusal is None:
            try:
                with transaction.atomic():
                    ApprovalDecision.objects.create(
                        request=locked,
                        reviewer=actor,
                        decision=decision,
                        reason=reason,
                        arguments=arguments if edited else None,
                        edited=edited,
                    )
            except IntegrityError:
                refusal = (
                    "You already decided on this request; dual control needs a different reviewer.",
                    403,
                )
        if refusal is None:
            now = timezone.now()
            effective = arguments if edited else (locked.approved_arguments or locked.arguments)
            approvals = locked.decisions.filter(decision=DecisionKind.APPROVE).count()
            final = decision == DecisionKind.REJECT or approvals >= locked.approvals_required
            fields: dict[str, Any] = {}
            if edited:
                fields.update(approved_arguments=effective, edited=True)
            if final:
                fields.update(
                    status=ApprovalStatus.APPROVED
                    if decision == DecisionKind.APPROVE
                    else ApprovalStatus.REJECTED,
                    decided_at=now,
                    decision_reason=reason,
                    approved_arguments=effective if decision == DecisionKind.APPROVE else None,
                )
            if fields and not ApprovalRequest.objects.filter(
                pk=locked.pk, status=ApprovalStatus.PENDING
            ).update(**fields):
                raise Conflict("This request changed while you decided; reload it.")
            run = AgentRun.objects.get(pk=locked.run_id)
            if final:
                resumed = AgentRun.objects.filter(pk=run.pk, status=RunStatus.WAITING_APPROVAL).update(
                    status=RunStatus.QUEUED, updated_at=now
                )
                if resumed:
                    audit_record(
                        actor=actor,
                        action="run.resumed",
                        tenant=run.tenant_id,
                        object_type="run",
                        object_id=run.public_id,
                        trace_id=run.trace_id,
                        payload={"request_id": str(locked.id), "decision": decision},
                    )
                    enqueue_run(run, resume=True)
            audit_record(
                actor=actor,
                action="approval.decided",
                tenant=locked.tenant_id,
                object_type="approval_request",
                object_id=locked.id,
                trace_id=locked.trace_id,
                policy_version=locked.policy_version,
                payload={
                    "request_id": str(locked.id),
                    "decision": decision,
                    "reason": reason,
                    "tool": locked.tool,
                    "arguments": effective,
                    "edited": edited,
                    "run_id": str(run.public_id),
                    "approvals": approvals,
                    "approvals_required": locked.approvals_required,
                    "final": final,
                },
            )
    if refusal is not None:
        _refuse(actor=actor, request=request, reason=refusal[0], status=refusal[1])
    request.refresh_from_db()
    return request
