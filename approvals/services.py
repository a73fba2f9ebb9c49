"""Approval requests, decisions, claims, SLA sweeps and human handoffs.

- ``approval_request_create`` runs inside the runtime's step transaction when policy says
  ``require_approval``: the run parks in the same commit.
- ``approval_decide`` enforces decision rights (guardian ``decide_reviewqueue`` on the
  queue), segregation of duties (the requester and the identity the run acts for cannot
  approve; dual control needs two distinct reviewers), a reason to reject, and 409 on a
  request that is no longer pending. The final decision is handed to the subject's
  handler in the same transaction (``approvals.subjects``: the runtime moves the run back
  to ``queued`` and enqueues its resume on commit). This module imports no app above it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from approvals.models import (
    ApprovalDecision,
    ApprovalRequest,
    ApprovalStatus,
    DecisionKind,
    Handoff,
    HandoffSource,
    HandoffStatus,
    ReviewQueue,
)
from approvals.subjects import Proposal, Subject, SubjectHandler, UnknownSubject, handler_for, subject_ref
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
    *,
    proposal: Proposal,
    decision: Any,
    actor: Any,
    summary: str = "",
    evidence: list[dict[str, Any]] | None = None,
) -> ApprovalRequest:
    """Create the pending request for a proposed action, inside the caller's transaction
    (the runtime's step that parks the run). ``decision`` is the policy's: ``queue``,
    ``approvals_required``, ``policy_version``, ``rule_id``, ``reason``.

    Raises UnknownSubject when no handler answers for the proposal's subject kind (nobody
    could act on the decision), and QueueFull (a subclass of ApprovalUnavailable) when the
    queue is missing or at capacity: requests do not pile up silently; the run hands off
    with that reason.
    """
    subject = proposal.subject
    ref = subject_ref(subject.kind, subject.id)
    # Lock the queue row: concurrent parks on one queue count and insert one at a time, so
    # the capacity holds exactly (this runs inside the runtime's step transaction).
    queue = ReviewQueue.objects.select_for_update().filter(slug=decision.queue).first()
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
    arguments = proposal.arguments
    amount = arguments.get("amount_cents") if isinstance(arguments.get("amount_cents"), int) else None
    now = timezone.now()
    due = now + timedelta(minutes=queue.sla_minutes)
    request = ApprovalRequest.objects.create(
        tenant_id=subject.tenant_id,
        queue=queue,
        subject_kind=subject.kind,
        subject_id=subject.id,
        action_id=proposal.action_id,
        approvals_required=decision.approvals_required or 1,
        tool=proposal.tool,
        arguments=arguments,
        amount_cents=amount,
        currency=arguments.get("currency", "USD") if amount is not None else "",
        risk_tier=proposal.risk_tier,
        summary=summary[:4000],
        evidence=evidence or [],
        policy_version=decision.policy_version,
        policy_rule=decision.rule_id[:64],
        policy_reason=decision.reason[:2000],
        trace_id=subject.trace_id,
        requester_id=proposal.requester_id,
        requester_label=proposal.requester_label,
        on_behalf_of_id=proposal.on_behalf_of_id,
        on_behalf_of_label=proposal.on_behalf_of_label,
        due_at=due,
        near_due_at=near_due(now, due),
    )
    audit_record(
        actor=actor,
        action="approval.requested",
        tenant=subject.tenant_id,
        object_type="approval_request",
        object_id=request.id,
        trace_id=subject.trace_id,
        policy_version=decision.policy_version,
        payload={
            "request_id": str(request.id),
            "queue": queue.slug,
            "tool": request.tool,
            "arguments": arguments,
            "amount_cents": amount,
            "approvals_required": request.approvals_required,
            "due_at": request.due_at.isoformat(),
            **ref,
        },
    )
    if request.risk_tier == "write_high":
        _notify_on_commit("requested", request.id)
    return request


def _ref(row: ApprovalRequest | Handoff) -> dict[str, str]:
    """The subject of a request or a handoff as its audit payloads name it."""
    return subject_ref(row.subject_kind, row.subject_id)


def near_due(start, due):
    """When an item whose SLA runs from ``start`` to ``due`` becomes "near breach"."""
    return start + (due - start) * (settings.APPROVAL_NEAR_BREACH_PERCENT / 100)


def _notify_on_commit(kind: str, request_id, **extra: Any) -> None:
    from approvals import notifications

    transaction.on_commit(lambda: notifications.dispatch(kind=kind, request_id=request_id, **extra))


# Canonical JSON: sorted keys, no spaces, UTF-8 as is. Stored decisions carry hashes made
# this way; changing it would make approvals already given to a proposal stop counting.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def proposal_hash(arguments: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``arguments``, read back as stored JSON (int keys
    become strings, as in a JSONField): which proposal a decision approved."""
    stored = json.loads(_CANONICAL.encode(arguments))
    return hashlib.sha256(_CANONICAL.encode(stored).encode()).hexdigest()


def arguments_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """{"field": {"from": old, "to": new}} for every field an edit changed."""
    return {
        key: {"from": old.get(key), "to": new.get(key)}
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    }


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


def _check_edit(
    *, actor: User, request: ApprovalRequest, arguments: dict[str, Any], handler: SubjectHandler
) -> None:
    """An edit is valid for the action's schema, keeps the customer, may only lower the
    amount, passes the action's own checks (422 otherwise) and the policy's decision,
    which this request's queue and approvals must still cover (403 otherwise)."""
    problems = handler.validate(request, arguments)
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
    check = handler.check_edit(request, arguments)
    if check.refused is not None:  # the tool's own invariants (e.g. a credit above its evidence)
        raise InvalidInput(f"The tool would refuse the edited arguments: {check.refused}")
    if check.denied is not None:
        _refuse(actor=actor, request=request, reason=f"Policy denies the edited arguments: {check.denied}")
    if check.queue:
        target = ReviewQueue.objects.filter(slug=check.queue).first()
        if target is None or not actor.has_perm(DECIDE_PERM, target):
            _refuse(
                actor=actor,
                request=request,
                reason=f"The edited action needs a decision in queue {check.queue!r}, "
                "where you may not decide.",
            )
    if check.approvals_required > request.approvals_required:
        _refuse(
            actor=actor,
            request=request,
            reason="The edit needs more approvals than this request; reject and let the agent re-propose.",
        )


def _lease_holder_other(request: ApprovalRequest, actor: User, now) -> bool:
    return (
        request.claimed_by_id is not None
        and request.claimed_by_id != actor.pk
        and request.claim_expires_at is not None
        and request.claim_expires_at > now
    )


def _lease_reason(request: ApprovalRequest) -> str:
    holder = request.claimed_by.username if request.claimed_by else "another reviewer"
    until = request.claim_expires_at.strftime("%H:%M:%S UTC") if request.claim_expires_at else ""
    return f"{holder} is working on this request (lease until {until}); wait or pick another item."


EDITOR_REASON = (
    "Segregation of duties: you edited this proposal; a different reviewer must give the "
    "second approval of the edited arguments."
)
TWICE_REASON = "You already decided on this request; dual control needs a different reviewer."


def approval_decide(
    *,
    actor: User,
    request: ApprovalRequest,
    decision: str,
    reason: str,
    arguments: dict[str, Any] | None = None,
) -> ApprovalRequest:
    """Record ``actor``'s decision; on the deciding approval (or any rejection) close the
    request and tell the subject's handler in the same transaction (the runtime moves the
    run ``waiting_approval -> queued`` by a conditional UPDATE, so exactly once, and
    enqueues its resume on commit).

    Only approvals of the *current* proposal count towards ``approvals_required``: an edit
    starts a new proposal (its editor's approval is the first), so approvals given to the
    old arguments do not carry over, and the editor can never be the second approver.

    403 (PermissionDenied) without decide rights, for the requester or on-behalf-of
    identity, for a second decision by the same reviewer or by the editor; 409 (Conflict)
    when the request is no longer pending or another reviewer holds a live lease; 422
    (InvalidInput) for a reject without a reason or invalid edited arguments. Every
    refusal is audited as ``approval.refused``.
    """
    handler = handler_for(request.subject_kind)  # an unknown kind fails closed, unchanged
    if decision not in DecisionKind.values:
        raise InvalidInput(f"decision must be one of {', '.join(DecisionKind.values)}.")
    reason = (reason or "").strip()
    if decision == DecisionKind.REJECT and not reason:
        raise InvalidInput("A reason is required to reject: the agent and the requester will read it.")
    if arguments is not None and decision == DecisionKind.REJECT:
        raise InvalidInput("Edited arguments only make sense with approve.")
    if arguments is not None and not isinstance(arguments, dict):
        raise InvalidInput("Edited arguments must be a JSON object, e.g. {\"amount_cents\": 3000, ...}.")
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
    current = request.approved_arguments or request.arguments
    edited = False
    diff: dict[str, Any] | None = None
    if arguments is not None and decision == DecisionKind.APPROVE:
        if proposal_hash(arguments) != proposal_hash(current):
            edited = True
            diff = arguments_diff(current, arguments)
            _check_edit(actor=actor, request=request, arguments=arguments, handler=handler)

    refusal: tuple[str, int] | None = None
    with transaction.atomic():
        locked = ApprovalRequest.objects.select_for_update(of=("self",)).select_related("claimed_by").get(
            pk=request.pk
        )
        now = timezone.now()
        current = locked.approved_arguments or locked.arguments
        if locked.status != ApprovalStatus.PENDING:
            refusal = (f"This request is already {locked.status}; no further decisions are taken.", 409)
        elif locked.edited_by_id == actor.pk:
            refusal = (EDITOR_REASON, 403)
        elif ApprovalDecision.objects.filter(request=locked, reviewer=actor).exists():
            refusal = (TWICE_REASON, 403)
        elif _lease_holder_other(locked, actor, now):
            refusal = (_lease_reason(locked), 409)
        elif edited and diff != arguments_diff(current, arguments):
            refusal = ("The proposal changed while you edited it; reload and edit again.", 409)
        effective = arguments if edited else current
        digest = proposal_hash(effective)
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
                        diff=diff,
                        proposal_hash=digest if decision == DecisionKind.APPROVE else "",
                    )
            except IntegrityError:
                refusal = (TWICE_REASON, 403)
        if refusal is None:
            approvals = locked.decisions.filter(decision=DecisionKind.APPROVE, proposal_hash=digest).count()
            final = decision == DecisionKind.REJECT or approvals >= locked.approvals_required
            fields: dict[str, Any] = {"claimed_by": None, "claim_expires_at": None}
            if edited:
                fields.update(approved_arguments=effective, edited=True, edited_by=actor)
            if final:
                fields.update(
                    status=ApprovalStatus.APPROVED
                    if decision == DecisionKind.APPROVE
                    else ApprovalStatus.REJECTED,
                    decided_at=now,
                    decision_reason=reason,
                    approved_arguments=effective if decision == DecisionKind.APPROVE else None,
                )
            if not ApprovalRequest.objects.filter(pk=locked.pk, status=ApprovalStatus.PENDING).update(
                **fields
            ):
                raise Conflict("This request changed while you decided; reload it.")
            if final:
                handler.closed(locked, status=fields["status"], actor=actor, now=now)
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
                    "diff": diff,
                    **_ref(locked),
                    "queue": locked.queue.slug,
                    "approvals": approvals,
                    "approvals_required": locked.approvals_required,
                    "final": final,
                },
            )
    if refusal is not None:
        _refuse(actor=actor, request=request, reason=refusal[0], status=refusal[1])
    request.refresh_from_db()
    return request


def approval_requests_cancel(*, subject: Subject, actor: Any, reason: str) -> int:
    """Cancel every pending request about ``subject`` (e.g. the run was cancelled), one
    conditional UPDATE and one ``approval.cancelled`` audit event per request, inside the
    caller's transaction (``agents.services.runs.run_cancel``); the subject's handler is told of
    each (the runtime refuses the call it held). The rows are locked first, so a reviewer
    deciding at the same moment either finishes first (the request is no longer pending
    and is left alone) or finds it cancelled (409). Returns how many were cancelled."""
    handler = handler_for(subject.kind)
    now = timezone.now()
    reason = (reason or "").strip() or f"{handler.noun} cancelled"
    cancelled = 0
    pending = (
        ApprovalRequest.objects.select_for_update(of=("self",))
        .select_related("queue")
        .of_subject(subject)
        .filter(status=ApprovalStatus.PENDING)
        .order_by("created_at", "id")
    )
    for request in pending:
        done = ApprovalRequest.objects.filter(pk=request.pk, status=ApprovalStatus.PENDING).update(
            status=ApprovalStatus.CANCELLED,
            decided_at=now,
            decision_reason=f"{handler.noun.capitalize()} cancelled: {reason}"[:2000],
            claimed_by=None,
            claim_expires_at=None,
        )
        if not done:
            continue
        cancelled += 1
        handler.closed(request, status=ApprovalStatus.CANCELLED, actor=actor, now=now)
        audit_record(
            actor=actor,
            action="approval.cancelled",
            tenant=request.tenant_id,
            object_type="approval_request",
            object_id=request.id,
            trace_id=request.trace_id,
            policy_version=request.policy_version,
            payload={
                "request_id": str(request.id),
                "queue": request.queue.slug,
                "tool": request.tool,
                "reason": reason,
                **subject_ref(subject.kind, subject.id),
            },
        )
    return cancelled


# --- claiming ---------------------------------------------------------------------------


def approval_claim(*, actor: User, request: ApprovalRequest) -> ApprovalRequest:
    """Take (or renew) the lease on a pending request for ``APPROVAL_LEASE_MINUTES``.

    A live lease held by someone else is 409 (it says who and until when); an expired
    one is taken over (recorded as ``stolen_from``). Only reviewers who may decide in the
    queue, and who are not a party to the request, may claim."""
    if not actor.has_perm(DECIDE_PERM, request.queue):
        _refuse(actor=actor, request=request, reason=f"You may not decide in queue {request.queue.name}.")
    if _is_party(actor, request):
        _refuse(
            actor=actor,
            request=request,
            reason="Segregation of duties: the requester or the identity a run acts for cannot "
            "work on its own request.",
        )
    now = timezone.now()
    until = now + timedelta(minutes=settings.APPROVAL_LEASE_MINUTES)
    with transaction.atomic():
        before = (
            ApprovalRequest.objects.filter(pk=request.pk)
            .values("claimed_by_id", "claim_expires_at", "status")
            .first()
        )
        taken = ApprovalRequest.objects.filter(
            Q(claimed_by__isnull=True) | Q(claim_expires_at__lte=now) | Q(claimed_by=actor),
            pk=request.pk,
            status=ApprovalStatus.PENDING,
        ).update(claimed_by=actor, claim_expires_at=until)
        if taken:
            stolen = (
                before["claimed_by_id"]
                if before and before["claimed_by_id"] not in (None, actor.pk)
                else None
            )
            audit_record(
                actor=actor,
                action="approval.claimed",
                tenant=request.tenant_id,
                object_type="approval_request",
                object_id=request.id,
                trace_id=request.trace_id,
                payload={
                    "request_id": str(request.id),
                    "until": until.isoformat(),
                    "stolen_from": User.objects.filter(pk=stolen).values_list("username", flat=True).first()
                    if stolen
                    else None,
                },
            )
    if not taken:
        request.refresh_from_db()
        if request.status != ApprovalStatus.PENDING:
            raise Conflict(f"This request is already {request.status}; nothing to claim.")
        raise Conflict(_lease_reason(request), code="claimed")
    request.refresh_from_db()
    return request


def approval_release(*, actor: User, request: ApprovalRequest) -> ApprovalRequest:
    """Give the lease back (only its holder can)."""
    with transaction.atomic():
        released = ApprovalRequest.objects.filter(pk=request.pk, claimed_by=actor).update(
            claimed_by=None, claim_expires_at=None
        )
        if released:
            audit_record(
                actor=actor,
                action="approval.released",
                tenant=request.tenant_id,
                object_type="approval_request",
                object_id=request.id,
                trace_id=request.trace_id,
                payload={"request_id": str(request.id)},
            )
    if not released:
        raise Conflict("You do not hold the lease on this request; nothing to release.")
    request.refresh_from_db()
    return request


# --- SLA --------------------------------------------------------------------------------


def approval_flag(*, request_id, now=None) -> bool:
    """Flag a pending request near its deadline (once) and notify the queue's reviewers."""
    now = now or timezone.now()
    with transaction.atomic():
        done = ApprovalRequest.objects.filter(
            pk=request_id, status=ApprovalStatus.PENDING, flagged_at__isnull=True, near_due_at__lte=now
        ).update(flagged_at=now)
        if not done:
            return False
        request = ApprovalRequest.objects.select_related("queue").get(pk=request_id)
        audit_record(
            actor=Actor.system("sla-sweep"),
            action="approval.flagged",
            tenant=request.tenant_id,
            object_type="approval_request",
            object_id=request.id,
            trace_id=request.trace_id,
            payload={"request_id": str(request.id), "queue": request.queue.slug,
                     "due_at": request.due_at.isoformat()},
        )
        _notify_on_commit("near_breach", request.id)
    return True


def approval_escalate(*, request_id, now=None) -> bool:
    """SLA breach: move a pending, not yet escalated request to its queue's escalation
    queue with that queue's SLA, and notify the escalation target's reviewers. A queue
    without an escalation target keeps the item and restarts its SLA once. One
    conditional UPDATE: a second sweeper finds nothing to do."""
    now = now or timezone.now()
    with transaction.atomic():
        request = (
            ApprovalRequest.objects.select_related("queue", "queue__escalation_queue")
            .filter(pk=request_id, status=ApprovalStatus.PENDING, escalated_at__isnull=True, due_at__lte=now)
            .first()
        )
        if request is None:
            return False
        origin = request.queue
        target = origin.escalation_queue or origin
        due = now + timedelta(minutes=target.sla_minutes)
        done = ApprovalRequest.objects.filter(
            pk=request_id, status=ApprovalStatus.PENDING, escalated_at__isnull=True, due_at__lte=now
        ).update(
            queue=target,
            escalated_from=origin,
            escalated_at=now,
            due_at=due,
            near_due_at=near_due(now, due),
            flagged_at=None,
            claimed_by=None,
            claim_expires_at=None,
        )
        if not done:
            return False
        audit_record(
            actor=Actor.system("sla-sweep"),
            action="approval.escalated",
            tenant=request.tenant_id,
            object_type="approval_request",
            object_id=request.id,
            trace_id=request.trace_id,
            payload={"request_id": str(request.id), "from_queue": origin.slug, "to_queue": target.slug,
                     "breached_at": request.due_at.isoformat(), "new_due_at": due.isoformat()},
        )
        _notify_on_commit("breach", request.id, origin_queue_id=origin.pk)
    return True


def approval_expire(*, request_id, now=None) -> bool:
    """Fail closed: an escalated request whose deadline passed again expires, and the
    subject's handler is told in the same transaction (the runtime moves the run to
    ``queued``; resumed, it sees the expired request and hands off to a human with a
    summary, which creates the Handoff row)."""
    now = now or timezone.now()
    with transaction.atomic():
        done = ApprovalRequest.objects.filter(
            pk=request_id, status=ApprovalStatus.PENDING, escalated_at__isnull=False, due_at__lte=now
        ).update(
            status=ApprovalStatus.EXPIRED,
            decided_at=now,
            decision_reason="Expired without a decision after escalation; failed closed.",
            claimed_by=None,
            claim_expires_at=None,
        )
        if not done:
            return False
        request = ApprovalRequest.objects.select_related("queue").get(pk=request_id)
        system = Actor.system("sla-sweep")
        handler = handler_for(request.subject_kind)
        handler.closed(request, status=ApprovalStatus.EXPIRED, actor=system, now=now)
        audit_record(
            actor=system,
            action="approval.expired",
            tenant=request.tenant_id,
            object_type="approval_request",
            object_id=request.id,
            trace_id=request.trace_id,
            payload={"request_id": str(request.id), "queue": request.queue.slug,
                     **_ref(request), "due_at": request.due_at.isoformat()},
        )
    return True


def approval_sla_sweep(*, now=None, batch: int = 500) -> dict[str, int]:
    """One pass of the SLA sweep: expire, escalate, flag (in that order, bounded batches).
    Safe to run concurrently: each item changes through its own conditional UPDATE."""
    now = now or timezone.now()
    pending = ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING)
    counts = {"expired": 0, "escalated": 0, "flagged": 0}
    overdue = list(
        pending.filter(due_at__lte=now).order_by("due_at").values_list("pk", "escalated_at")[:batch]
    )
    for pk, escalated_at in overdue:
        if escalated_at is not None:
            try:
                counts["expired"] += approval_expire(request_id=pk, now=now)
            except UnknownSubject:  # it stays pending (fail closed); the rest still expire
                logger.exception("approval request %s not expired", pk)
        else:
            counts["escalated"] += approval_escalate(request_id=pk, now=now)
    near = list(
        pending.filter(near_due_at__lte=now, flagged_at__isnull=True, due_at__gt=now)
        .order_by("near_due_at")
        .values_list("pk", flat=True)[:batch]
    )
    for pk in near:
        counts["flagged"] += approval_flag(request_id=pk, now=now)
    if any(counts.values()):
        logger.info("approval SLA sweep: %s", counts)
    return counts


# --- human handoffs ---------------------------------------------------------------------


def handoff_create(
    *, subject: Subject, actor: Any, source: str, reason: str, summary: str = ""
) -> Handoff | None:
    """Put ``subject`` (a run that ended handed off) into the human handoff queue, inside
    the caller's transaction (the run's terminal commit). Once per subject; ``source`` is a
    ``HandoffSource`` (a full review queue also records ``approval.throttled``)."""
    if Handoff.objects.of_subject(subject).exists():
        return None
    ref = subject_ref(subject.kind, subject.id)
    handoff = Handoff.objects.create(
        subject_kind=subject.kind,
        subject_id=subject.id,
        tenant_id=subject.tenant_id,
        trace_id=subject.trace_id,
        source=source,
        reason=reason[:4000],
        summary=summary[:8000],
    )
    if source == HandoffSource.BACKPRESSURE:
        audit_record(
            actor=actor,
            action="approval.throttled",
            tenant=subject.tenant_id,
            object_type=handler_for(subject.kind).noun,
            object_id=subject.id,
            trace_id=subject.trace_id,
            payload={"reason": reason[:2000], **ref},
        )
    audit_record(
        actor=actor,
        action="handoff.created",
        tenant=subject.tenant_id,
        object_type="handoff",
        object_id=handoff.id,
        trace_id=subject.trace_id,
        payload={"handoff_id": str(handoff.id), **ref, "source": source, "reason": reason[:2000]},
    )
    return handoff


def handoff_take(*, actor: User, handoff: Handoff) -> Handoff:
    """Take an open handoff (409 when someone already has it or it is resolved)."""
    now = timezone.now()
    with transaction.atomic():
        taken = Handoff.objects.filter(pk=handoff.pk, status=HandoffStatus.OPEN).update(
            status=HandoffStatus.TAKEN, taken_by=actor, taken_at=now
        )
        if taken:
            audit_record(
                actor=actor,
                action="handoff.taken",
                tenant=handoff.tenant_id,
                object_type="handoff",
                object_id=handoff.id,
                trace_id=handoff.trace_id,
                payload={"handoff_id": str(handoff.id), **_ref(handoff)},
            )
    handoff.refresh_from_db()
    if not taken:
        who = handoff.taken_by.username if handoff.taken_by else "someone"
        raise Conflict(f"This handoff is already {handoff.status} (by {who}).")
    return handoff


def handoff_resolve(*, actor: User, handoff: Handoff, note: str) -> Handoff:
    """Close a handoff with a note saying what the person did. An open one can be resolved
    directly; a taken one only by whoever took it."""
    note = (note or "").strip()
    if not note:
        raise InvalidInput("A note is required to resolve a handoff: say what you did for the customer.")
    now = timezone.now()
    with transaction.atomic():
        done = Handoff.objects.filter(
            Q(status=HandoffStatus.OPEN) | Q(status=HandoffStatus.TAKEN, taken_by=actor), pk=handoff.pk
        ).update(
            status=HandoffStatus.RESOLVED,
            resolved_by=actor,
            resolved_at=now,
            note=note[:4000],
        )
        if done:
            audit_record(
                actor=actor,
                action="handoff.resolved",
                tenant=handoff.tenant_id,
                object_type="handoff",
                object_id=handoff.id,
                trace_id=handoff.trace_id,
                payload={"handoff_id": str(handoff.id), **_ref(handoff), "note": note[:2000]},
            )
    handoff.refresh_from_db()
    if not done:
        if handoff.status == HandoffStatus.RESOLVED:
            raise Conflict("This handoff is already resolved.")
        raise Conflict(f"{handoff.taken_by.username if handoff.taken_by else 'Someone'} took this handoff; "
                       "only they can resolve it.")
    return handoff
