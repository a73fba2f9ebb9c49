"""Approvals over the API. Minimal for now: the decision endpoint (issue 6 adds list,
detail and claim). A caller without view rights on the request's queue gets 404."""

from __future__ import annotations

import uuid

from django.http import HttpRequest
from ninja import Router

from approvals.models import ApprovalRequest, DecisionKind
from approvals.schemas import ApprovalOut, DecisionIn
from approvals.services import DECIDE_PERM, VIEW_PERM, approval_decide
from console.errors import NotFound

router = Router(tags=["approvals"])


def _request_for_reviewer(*, user, request_id: str) -> ApprovalRequest:
    try:
        pk = uuid.UUID(request_id)
    except ValueError:
        raise NotFound(f"No approval request {request_id!r}.") from None
    request = ApprovalRequest.objects.select_related("queue", "run").filter(pk=pk).first()
    if request is None or not (
        user.has_perm(VIEW_PERM, request.queue) or user.has_perm(DECIDE_PERM, request.queue)
    ):
        raise NotFound(f"No approval request {request_id} that you may see.")
    return request


def _out(request: ApprovalRequest) -> dict:
    return {
        "id": str(request.id),
        "status": request.status,
        "queue": request.queue.slug,
        "tool": request.tool,
        "arguments": request.arguments,
        "approved_arguments": request.approved_arguments,
        "edited": request.edited,
        "approvals_required": request.approvals_required,
        "approvals": request.decisions.filter(decision=DecisionKind.APPROVE).count(),
        "run_id": str(request.run.public_id),
        "decided_at": request.decided_at.isoformat() if request.decided_at else None,
    }


@router.post(
    "/{request_id}/decisions",
    response=ApprovalOut,
    summary="Approve, reject (reason required) or approve with edited arguments",
)
def decide(request: HttpRequest, request_id: str, payload: DecisionIn):
    approval = _request_for_reviewer(user=request.auth, request_id=request_id)
    approval = approval_decide(
        actor=request.auth,
        request=approval,
        decision=payload.decision,
        reason=payload.reason,
        arguments=payload.arguments,
    )
    return _out(approval)
