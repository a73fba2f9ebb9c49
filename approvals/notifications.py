"""Notifications to a queue's reviewers: a new high-risk request, a near-breach, a breach.

``dispatch`` runs after the change committed (``transaction.on_commit``; the callers are
the runtime's park step and the SLA sweep, both in worker processes). It sends email
through Django's email backend (the console backend by default) and, when
``APPROVAL_WEBHOOK_URL`` is set, enqueues the webhook delivery as a Celery task, so a slow
receiver never holds a run's worker. ``webhook_deliver`` signs the body with HMAC-SHA256
and retries with backoff a bounded number of times (tenacity); the final failure is
recorded as ``notification.failed``. Every delivery is audited (``notification.sent``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

import httpx
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from guardian.shortcuts import get_users_with_perms
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from approvals.models import ApprovalRequest, ReviewQueue
from audit.services import Actor, audit_record

logger = logging.getLogger(__name__)

SUBJECTS = {
    "requested": "New high-risk approval request in {queue}",
    "near_breach": "Approval request near its deadline in {queue}",
    "breach": "Approval request breached its SLA: escalated to {queue}",
}
ACTOR = Actor.system("notifications")


class WebhookError(Exception):
    """A delivery attempt failed (connection error or a non-2xx answer)."""


def reviewers(queue: ReviewQueue) -> list:
    """Users (directly or through a group) who may decide in ``queue`` and have an email."""
    users = get_users_with_perms(
        queue, only_with_perms_in=["decide_reviewqueue"], with_group_users=True, with_superusers=False
    )
    return [u for u in users.order_by("username") if u.is_active and u.email]


def _payload(kind: str, request: ApprovalRequest) -> dict[str, Any]:
    return {
        "event": f"approval.{kind}",
        "request_id": str(request.id),
        "queue": request.queue.slug,
        "tool": request.tool,
        "risk_tier": request.risk_tier,
        "amount_cents": request.amount_cents,
        "currency": request.currency,
        "tenant_id": str(request.tenant_id),
        "due_at": request.due_at.isoformat(),
        "url": f"{settings.CONSOLE_BASE_URL}/approvals/{request.id}/",
    }


def _record(action: str, request: ApprovalRequest, payload: dict[str, Any]) -> None:
    with transaction.atomic():
        audit_record(
            actor=ACTOR,
            action=action,
            tenant=request.tenant_id,
            object_type="approval_request",
            object_id=request.id,
            trace_id=request.trace_id,
            payload=payload,
        )


def dispatch(*, kind: str, request_id, origin_queue_id=None) -> None:
    """Email the reviewers of the request's (current) queue -- for a breach, that is the
    escalation target, plus the queue it came from -- and enqueue the webhook."""
    request = ApprovalRequest.objects.select_related("queue").filter(pk=request_id).first()
    if request is None:
        return
    queues = [request.queue]
    if origin_queue_id and origin_queue_id != request.queue_id:
        queues += list(ReviewQueue.objects.filter(pk=origin_queue_id))
    emails = sorted({u.email for q in queues for u in reviewers(q)})
    body = _payload(kind, request)
    if emails:
        subject = SUBJECTS[kind].format(queue=request.queue.name)
        text = (
            f"{subject}\n\nTool: {request.tool} ({request.risk_tier})\n"
            f"Arguments: {json.dumps(request.approved_arguments or request.arguments, sort_keys=True)}\n"
            f"Due: {request.due_at:%Y-%m-%d %H:%M} UTC\n\nOpen it: {body['url']}\n"
        )
        try:
            send_mail(subject, text, settings.DEFAULT_FROM_EMAIL, emails, fail_silently=False)
        except Exception as exc:  # a broken mail server must not break the sweep
            logger.exception("approval notification email failed")
            _record(
                "notification.failed",
                request,
                {"channel": "email", "kind": kind, "recipients": len(emails), "error": str(exc)[:500]},
            )
        else:
            _record(
                "notification.sent", request, {"channel": "email", "kind": kind, "recipients": len(emails)}
            )
    if settings.APPROVAL_WEBHOOK_URL:
        from approvals.tasks import webhook_deliver_task

        try:
            webhook_deliver_task.delay(request_id=str(request.id), body=body)
        except Exception:
            logger.exception("could not enqueue the approval webhook")


def sign(body: bytes, *, secret: str, timestamp: str) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, timestamp + "." + body)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def webhook_deliver(*, request_id: str, body: dict[str, Any], url: str | None = None) -> bool:
    """POST the signed body; retry (bounded, exponential backoff) on connection errors and
    non-2xx answers. Records ``notification.sent`` or, after the last attempt,
    ``notification.failed``. Returns whether it was delivered."""
    url = url or settings.APPROVAL_WEBHOOK_URL
    secret = settings.APPROVAL_WEBHOOK_SECRET
    attempts = settings.APPROVAL_WEBHOOK_ATTEMPTS
    backoff = float(getattr(settings, "APPROVAL_WEBHOOK_BACKOFF_SECONDS", 0.5))
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    tries = 0

    def attempt() -> None:
        nonlocal tries
        tries += 1
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-ACP-Event": str(body.get("event", "")),
            "X-ACP-Timestamp": timestamp,
            "X-ACP-Signature": sign(raw, secret=secret, timestamp=timestamp),
        }
        try:
            response = httpx.post(
                url, content=raw, headers=headers, timeout=settings.APPROVAL_WEBHOOK_TIMEOUT_SECONDS
            )
        except httpx.HTTPError as exc:
            raise WebhookError(f"{type(exc).__name__}: {exc}") from exc
        if not 200 <= response.status_code < 300:
            raise WebhookError(f"HTTP {response.status_code}")

    request = ApprovalRequest.objects.filter(pk=request_id).first()
    try:
        for try_ in Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=backoff, max=30) if backoff else wait_exponential(0, 0),
            retry=retry_if_exception_type(WebhookError),
            reraise=True,
        ):
            with try_:
                attempt()
    except WebhookError as exc:
        logger.warning("approval webhook failed after %d attempt(s): %s", tries, exc)
        if request is not None:
            _record(
                "notification.failed",
                request,
                {
                    "channel": "webhook",
                    "event": body.get("event"),
                    "attempts": tries,
                    "error": str(exc)[:500],
                },
            )
        return False
    if request is not None:
        _record(
            "notification.sent",
            request,
            {"channel": "webhook", "event": body.get("event"), "attempts": tries},
        )
    return True
