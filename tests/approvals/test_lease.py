"""Claiming: a lease so two reviewers do not work the same item; release; takeover after expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from approvals.models import ApprovalRequest, ApprovalStatus
from approvals.services import approval_claim, approval_decide, approval_release
from audit.models import AuditEvent
from console.errors import Conflict, PermissionDenied

pytestmark = pytest.mark.django_db


def test_claim_takes_a_ten_minute_lease_and_blocks_another_reviewer(parked, lead, lead2):
    _, request = parked()
    before = timezone.now()
    request = approval_claim(actor=lead, request=request)
    assert request.claimed_by == lead
    assert timedelta(minutes=9) < request.claim_expires_at - before <= timedelta(minutes=10, seconds=5)
    with pytest.raises(Conflict, match="lead is working on this request"):
        approval_claim(actor=lead2, request=request)
    with pytest.raises(Conflict, match="lead is working"):
        approval_decide(actor=lead2, request=request, decision="approve", reason="")
    # the holder renews, then decides; the decision frees the lease
    approval_claim(actor=lead, request=request)
    approval_decide(actor=lead, request=request, decision="approve", reason="ok")
    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPROVED and request.claimed_by is None


def test_release_lets_another_reviewer_claim(parked, lead, lead2):
    _, request = parked()
    approval_claim(actor=lead, request=request)
    with pytest.raises(Conflict):
        approval_release(actor=lead2, request=request)
    approval_release(actor=lead, request=request)
    assert approval_claim(actor=lead2, request=request).claimed_by == lead2
    actions = list(AuditEvent.objects.filter(object_id=str(request.id)).values_list("action", flat=True))
    assert actions.count("approval.claimed") == 2 and "approval.released" in actions


def test_an_expired_lease_can_be_stolen(parked, lead, lead2):
    _, request = parked()
    approval_claim(actor=lead, request=request)
    ApprovalRequest.objects.filter(pk=request.pk).update(
        claim_expires_at=timezone.now() - timedelta(seconds=1)
    )
    request = approval_claim(actor=lead2, request=request)
    assert request.claimed_by == lead2
    event = AuditEvent.objects.filter(action="approval.claimed").order_by("-seq").first()
    assert event.payload["stolen_from"] == "lead"


def test_only_deciders_may_claim(parked, accounts, svc_acme):
    _, request = parked()
    with pytest.raises(PermissionDenied):
        approval_claim(actor=accounts, request=request)


def test_lease_shows_on_the_page(parked, lead, lead2, login):
    _, request = parked()
    approval_claim(actor=lead, request=request)
    page = login(lead2).get(f"/approvals/{request.id}/")
    assert page.status_code == 200
    assert b"Lease: <strong>lead</strong>" in page.content
    listing = login(lead2).get("/approvals/")
    assert b"lead until" in listing.content
