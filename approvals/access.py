"""Who may see an approval request or a handoff. Answers 404 (NotFound) for what the
caller may not see, so existence is not leaked. Decision rights (403 with the reason)
are checked by the services, because a viewer who may not decide should be told why."""

from __future__ import annotations

import uuid

from approvals.models import ApprovalRequest, Handoff
from approvals.selectors import member_tenant_ids, of_tenants, visible_queue_ids
from console.errors import NotFound
from console.roles import ADMIN, OPERATOR, REVIEWER, has_role


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFound(f"No {what} {value!r}: ids are UUIDs.") from None


def request_for_viewer(*, user, request_id: str) -> ApprovalRequest:
    """The request, if its queue is one the user holds and its tenant one they belong to."""
    pk = _uuid(request_id, "approval request")
    request = (
        ApprovalRequest.objects.select_related(
            "queue", "tenant", "claimed_by", "escalated_from", "edited_by"
        )
        .filter(pk=pk)
        .first()
    )
    if request is None:
        raise NotFound(f"No approval request {request_id} that you may see.")
    if request.queue_id not in visible_queue_ids(user):
        raise NotFound(f"No approval request {request_id} that you may see.")
    tenants = member_tenant_ids(user)
    if tenants is not None and request.tenant_id not in tenants:
        raise NotFound(f"No approval request {request_id} that you may see.")
    return request


def may_work_handoffs(user) -> bool:
    return getattr(user, "is_authenticated", False) and has_role(user, OPERATOR, REVIEWER, ADMIN)


def handoffs_visible_to(user):
    if not may_work_handoffs(user):
        return Handoff.objects.none()
    return of_tenants(Handoff.objects.all(), member_tenant_ids(user))


def handoff_for_person(*, user, handoff_id: str) -> Handoff:
    pk = _uuid(handoff_id, "handoff")
    handoff = handoffs_visible_to(user).select_related("taken_by", "tenant").filter(pk=pk).first()
    if handoff is None:
        raise NotFound(f"No handoff {handoff_id} that you may see.")
    return handoff
