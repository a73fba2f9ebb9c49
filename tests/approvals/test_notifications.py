"""Notifications: email to the queue's reviewers, a signed webhook, bounded retries."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail

from approvals.notifications import webhook_deliver
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db
SECRET = "test-webhook-secret-0123456789"


@pytest.fixture
def receiver():
    """A real HTTP server on a local socket; it answers with the statuses in ``status`` in
    turn (the last one repeats)."""
    received: list[dict] = []
    status = [204]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"body": body, "headers": dict(self.headers)})
            self.send_response(status.pop(0) if len(status) > 1 else status[0])
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received, status
    server.shutdown()
    server.server_close()


def test_new_high_risk_request_emails_the_queue_reviewers(
    start_run, step, lead, lead2, accounts, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        step(start_run("Customer C-1001 was billed twice in March, please refund the $40 duplicate"))
    assert len(mail.outbox) == 1
    assert sorted(mail.outbox[0].to) == sorted([lead.email, lead2.email])
    assert accounts.email not in mail.outbox[0].to
    assert "high-risk" in mail.outbox[0].subject and "/approvals/" in mail.outbox[0].body
    assert AuditEvent.objects.filter(action="notification.sent", payload__channel="email").exists()


def test_webhook_is_signed_with_hmac(parked, receiver, settings):
    url, received, _ = receiver
    settings.APPROVAL_WEBHOOK_SECRET = SECRET
    _, request = parked()
    body = {"event": "approval.requested", "request_id": str(request.id)}
    assert webhook_deliver(request_id=str(request.id), body=body, url=url) is True
    (hit,) = received
    expected = hmac.new(
        SECRET.encode(), hit["headers"]["X-ACP-Timestamp"].encode() + b"." + hit["body"], hashlib.sha256
    ).hexdigest()
    assert hit["headers"]["X-ACP-Signature"] == f"sha256={expected}"
    assert json.loads(hit["body"])["request_id"] == str(request.id)
    assert AuditEvent.objects.filter(action="notification.sent", payload__channel="webhook").exists()


def test_failing_webhook_is_retried_then_recorded(parked, receiver, settings):
    url, received, status = receiver
    status[0] = 503
    settings.APPROVAL_WEBHOOK_SECRET = SECRET
    settings.APPROVAL_WEBHOOK_ATTEMPTS = 3
    settings.APPROVAL_WEBHOOK_BACKOFF_SECONDS = 0
    _, request = parked()
    assert webhook_deliver(request_id=str(request.id), body={"event": "approval.breach"}, url=url) is False
    assert len(received) == 3
    failed = AuditEvent.objects.get(action="notification.failed")
    assert failed.payload["attempts"] == 3 and "HTTP 503" in failed.payload["error"]


def test_webhook_recovers_within_the_retry_bound(parked, receiver, settings):
    url, received, status = receiver
    settings.APPROVAL_WEBHOOK_SECRET = SECRET
    settings.APPROVAL_WEBHOOK_BACKOFF_SECONDS = 0
    _, request = parked()
    status[:] = [500, 200]  # the second attempt succeeds
    assert webhook_deliver(request_id=str(request.id), body={"event": "approval.requested"}, url=url)
    assert len(received) == 2
    assert not AuditEvent.objects.filter(action="notification.failed").exists()
