"""Approvals knows nothing of runs: a request names its subject, and the handler registered
for the subject's kind (agents.apps registers the runtime's) acts on it. A kind no app
handles fails closed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agents.approval_handler import RunApprovals
from agents.approval_subject import KIND
from agents.models import AgentRun, RunStatus
from approvals.models import ApprovalDecision, ApprovalRequest, ApprovalStatus
from approvals.services import (
    approval_decide,
    approval_request_create,
    approval_requests_cancel,
    approval_sla_sweep,
)
from approvals.subjects import HANDLERS, Proposal, Subject, SubjectHandler, UnknownSubject, register

pytestmark = pytest.mark.django_db


def orphan(request) -> ApprovalRequest:
    """``request`` as if filed by an app that is no longer installed."""
    ApprovalRequest.objects.filter(pk=request.pk).update(subject_kind="gateway_call")
    request.refresh_from_db()
    return request


def test_the_runtime_answers_for_requests_about_runs(parked):
    run, request = parked()
    assert isinstance(HANDLERS[KIND], RunApprovals)
    assert (request.subject_kind, request.subject_id) == (KIND, str(run.public_id))
    assert request.action_id == str(run.invocations.get(tool="apply_credit").pk)


def test_a_decision_on_a_kind_nobody_handles_fails_closed(parked, lead):
    run, request = parked()
    request = orphan(request)
    with pytest.raises(UnknownSubject, match="gateway_call"):
        approval_decide(actor=lead, request=request, decision="approve", reason="ok")
    request.refresh_from_db()
    assert request.status == ApprovalStatus.PENDING and not ApprovalDecision.objects.exists()
    assert AgentRun.objects.get(pk=run.pk).status == RunStatus.WAITING_APPROVAL


def test_no_request_is_filed_for_a_kind_nobody_handles(parked, acme):
    _, request = parked()
    proposal = Proposal(
        subject=Subject(kind="gateway_call", id="call-1", tenant_id=acme.pk),
        action_id="1",
        tool="apply_credit",
        arguments={"amount_cents": 100},
        risk_tier="write_high",
    )
    decision = type(
        "Decision",
        (),
        {
            "queue": "billing-credits",
            "approvals_required": 1,
            "policy_version": 1,
            "rule_id": "r",
            "reason": "because",
        },
    )()
    with pytest.raises(UnknownSubject):
        approval_request_create(proposal=proposal, decision=decision, actor=None)
    with pytest.raises(UnknownSubject):
        approval_requests_cancel(subject=proposal.subject, actor=None, reason="x")
    assert list(ApprovalRequest.objects.all()) == [request]


def test_the_sweep_leaves_a_kind_nobody_handles_pending_and_expires_the_rest(parked, caplog):
    _, stranded = parked()
    _, expiring = parked()
    orphan(stranded)
    past = timezone.now() - timedelta(minutes=1)
    ApprovalRequest.objects.update(escalated_at=past, due_at=past)
    assert approval_sla_sweep()["expired"] == 1
    stranded.refresh_from_db()
    expiring.refresh_from_db()
    assert (stranded.status, expiring.status) == (ApprovalStatus.PENDING, ApprovalStatus.EXPIRED)
    assert "not expired" in caplog.text


def test_the_page_still_shows_a_request_nobody_handles(parked, lead, login):
    _, request = parked()
    orphan(request)
    page = login(lead).get(f"/approvals/{request.id}/")
    assert page.status_code == 200 and b'data-testid="review"' not in page.content


def test_two_apps_cannot_claim_one_kind():
    class Other(SubjectHandler):
        kind, noun = KIND, "thing"

    register(RunApprovals())  # the same handler again: harmless
    with pytest.raises(ValueError, match="already handled by RunApprovals"):
        register(Other())
    assert isinstance(HANDLERS[KIND], RunApprovals)
