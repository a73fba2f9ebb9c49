"""Approvals over the API: list, detail, claim (and release), decisions.

A caller sees only requests in queues they hold (view or decide) and of tenants they
belong to; anything else is 404, never 403. Decision refusals are 403 with the reason,
a request no longer pending (or leased by someone else) is 409.
"""

from __future__ import annotations

from django.http import HttpRequest
from django.utils import timezone
from ninja import Query, Router, Schema

from approvals.access import request_for_viewer
from approvals.models import ApprovalRequest, DecisionKind
from approvals.schemas import ApprovalDetailOut, ApprovalOut, ApprovalPageOut, DecisionIn
from approvals.selectors import (
    after_cursor,
    encode_cursor,
    parse_filters,
    request_decisions,
    request_list,
    request_review,
    request_trace_url,
    sla_state,
)
from approvals.services import approval_claim, approval_decide, approval_release
from approvals.subjects import HANDLERS
from console.errors import InvalidInput

router = Router(tags=["approvals"])


def _out(request: ApprovalRequest, *, now=None, approvals: int | None = None) -> dict:
    now = now or timezone.now()
    live = bool(request.claimed_by_id and request.claim_expires_at and request.claim_expires_at > now)
    if approvals is None:
        approvals = request.decisions.filter(decision=DecisionKind.APPROVE).count()
    return {
        "id": str(request.id),
        "status": request.status,
        "queue": request.queue.slug,
        "tool": request.tool,
        "arguments": request.arguments,
        "approved_arguments": request.approved_arguments,
        "edited": request.edited,
        "approvals_required": request.approvals_required,
        "approvals": approvals,
        **_subject(request),
        "decided_at": request.decided_at.isoformat() if request.decided_at else None,
        "risk_tier": request.risk_tier,
        "amount_cents": request.amount_cents,
        "currency": request.currency,
        "tenant": str(request.tenant_id),
        "requester": request.requester_label,
        "on_behalf_of": request.on_behalf_of_label or None,
        "summary": request.summary,
        "due_at": request.due_at.isoformat(),
        "sla_state": sla_state(request, now),
        "escalated_from": request.escalated_from.slug if request.escalated_from_id else None,
        "claim": {
            "by": request.claimed_by.username if request.claimed_by_id else None,
            "until": request.claim_expires_at.isoformat() if request.claim_expires_at else None,
            "live": live,
        }
        if request.claimed_by_id
        else None,
        "created_at": request.created_at.isoformat(),
    }


def _subject(request: ApprovalRequest) -> dict[str, str]:
    """The request's subject, and its id under the name the API gives it (``run_id`` for a
    run: the subject handler's noun)."""
    handler = HANDLERS.get(request.subject_kind)
    named = {f"{handler.noun}_id": request.subject_id} if handler else {}
    return {"subject_kind": request.subject_kind, "subject_id": request.subject_id, **named}


def _detail(request: ApprovalRequest) -> dict:
    decisions = request_decisions(request)
    current = request.approved_arguments or request.arguments
    from approvals.services import proposal_hash

    digest = proposal_hash(current)
    body = _out(
        request, approvals=sum(1 for d in decisions if d.decision == "approve" and d.proposal_hash == digest)
    )
    body.update(
        evidence=request.evidence,
        policy={
            "version": request.policy_version,
            "rule": request.policy_rule,
            "reason": request.policy_reason,
        },
        trace_id=request.trace_id,
        trace_url=request_trace_url(request),
        decision_reason=request.decision_reason,
        review=request_review(request),
        decisions=[
            {
                "reviewer": d.reviewer.username,
                "decision": d.decision,
                "reason": d.reason,
                "edited": d.edited,
                "diff": d.diff,
                "at": d.created_at.isoformat(),
            }
            for d in decisions
        ],
    )
    return body


class ListQuery(Schema):
    status: str = "pending"
    queue: str = ""
    tier: str = ""
    sla: str = ""
    claimed: str = ""
    tool: str = ""
    cursor: str = ""
    limit: int = 50


@router.get("", response=ApprovalPageOut, summary="Requests you may see, oldest-due first")
def list_approvals(request: HttpRequest, query: Query[ListQuery]):
    if not 1 <= query.limit <= 200:
        raise InvalidInput("limit must be between 1 and 200.")
    filters = parse_filters(query.dict())
    qs = request_list(request.auth, filters).select_related("escalated_from")
    if query.cursor:
        qs = after_cursor(qs, query.cursor)
    rows = list(qs[: query.limit + 1])
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    counts: dict = {}
    if rows:
        from django.db.models import Count, Q

        counts = dict(
            ApprovalRequest.objects.filter(pk__in=[r.pk for r in rows])
            .annotate(n=Count("decisions", filter=Q(decisions__decision="approve")))
            .values_list("pk", "n")
        )
    now = timezone.now()
    return {
        "items": [_out(r, now=now, approvals=counts.get(r.pk, 0)) for r in rows],
        "next_cursor": encode_cursor(rows[-1]) if more else None,
    }


@router.get("/{request_id}", response=ApprovalDetailOut, summary="One request with its evidence")
def get_approval(request: HttpRequest, request_id: str):
    return _detail(request_for_viewer(user=request.auth, request_id=request_id))


@router.post("/{request_id}/claim", response=ApprovalOut, summary="Take (or renew) the lease")
def claim(request: HttpRequest, request_id: str):
    approval = request_for_viewer(user=request.auth, request_id=request_id)
    return _out(approval_claim(actor=request.auth, request=approval))


@router.post("/{request_id}/release", response=ApprovalOut, summary="Give the lease back")
def release(request: HttpRequest, request_id: str):
    approval = request_for_viewer(user=request.auth, request_id=request_id)
    return _out(approval_release(actor=request.auth, request=approval))


@router.post(
    "/{request_id}/decisions",
    response=ApprovalOut,
    summary="Approve, reject (reason required) or approve with edited arguments",
)
def decide(request: HttpRequest, request_id: str, payload: DecisionIn):
    approval = request_for_viewer(user=request.auth, request_id=request_id)
    approval = approval_decide(
        actor=request.auth,
        request=approval,
        decision=payload.decision,
        reason=payload.reason,
        arguments=payload.arguments,
    )
    return _out(approval)
