"""Who may read the audit log: auditors and admins. Every refusal is itself audited.

The console answers 404 (the page's existence is not advertised to other roles); the API
answers 403 JSON (the endpoint is public knowledge, documented in the OpenAPI schema).
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.http import Http404, HttpRequest

from console.errors import PermissionDenied
from console.roles import AUDITOR, has_role

logger = logging.getLogger(__name__)


def may_read_audit(user) -> bool:
    return bool(user is not None and user.is_authenticated and has_role(user, AUDITOR))


def _record_denied(request: HttpRequest, user, via: str) -> None:
    from audit.services import audit_record

    try:
        with transaction.atomic():
            audit_record(
                actor=user, action="audit.access_denied", object_type="audit_log",
                object_id=request.path[:64],
                payload={"via": via, "method": request.method, "path": request.path[:500]},
            )
    except Exception:  # auditing a refusal must never turn it into a 500
        logger.exception("could not audit a denied audit-log access")


def require_audit_reader_page(request: HttpRequest) -> None:
    """Console: 404 for anyone who is not an auditor or admin (and audit the attempt)."""
    if may_read_audit(request.user):
        return
    _record_denied(request, request.user, "console")
    raise Http404("Not found.")


def require_audit_reader_api(request: HttpRequest, user) -> None:
    """API: 403 JSON for an authenticated caller without audit access (audited)."""
    if may_read_audit(user):
        return
    _record_denied(request, user, "api")
    raise PermissionDenied(
        "Only auditors and admins may read the audit log. Ask an admin for the auditor role.",
        code="audit_forbidden",
    )
