"""Who may see and act on a run. Answers 404 (NotFound) for what the caller may not see."""

from __future__ import annotations

import uuid

from agents.models import AgentRun
from console.errors import NotFound, PermissionDenied
from console.models import TenantMembership
from console.roles import ADMIN, AUDITOR, OPERATOR, has_role


def _parse(public_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(public_id))
    except ValueError:
        raise NotFound(f"No run {public_id!r}: run ids are UUIDs as returned by POST /api/v1/runs.") from None


def _may_see(user, run: AgentRun) -> bool:
    if run.requester_id is not None and run.requester_id == user.pk:
        return True
    service = getattr(user, "service_account", None)
    if service is not None:
        return service.tenant_id == run.tenant_id
    if has_role(user, ADMIN):
        return True
    if not has_role(user, OPERATOR, AUDITOR):
        return False
    return TenantMembership.objects.filter(user=user, tenant_id=run.tenant_id).exists()


def run_for_viewer(*, user, public_id: str) -> AgentRun:
    run = (
        AgentRun.objects.select_related("agent", "tenant", "requester")
        .filter(public_id=_parse(public_id))
        .first()
    )
    if run is None or not _may_see(user, run):
        raise NotFound(f"No run {public_id} that you may see.")
    return run


def run_for_canceller(*, user, public_id: str) -> AgentRun:
    """Viewers who are the requester, the tenant's service account or an operator may cancel."""
    run = run_for_viewer(user=user, public_id=public_id)
    service = getattr(user, "service_account", None)
    if run.requester_id == user.pk or service is not None or has_role(user, OPERATOR, ADMIN):
        return run
    raise PermissionDenied(
        "Only the requester, the tenant's service account or an operator may cancel a run."
    )
