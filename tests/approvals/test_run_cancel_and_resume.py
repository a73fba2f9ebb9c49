"""The run-side state changes around approvals, each in its one service:
``approvals.services.approval_requests_cancel`` (called by ``run_cancel``) cancels a
run's pending requests one by one, audited; ``agents.services.runs.run_resume_after_approval``
(called by decisions and SLA expiry) moves a parked run back to ``queued``."""

from __future__ import annotations

import pytest
from django.db import transaction

from agents.approval_subject import requests_of
from agents.models import AgentRun, RunStatus
from agents.services.runs import run_cancel
from approvals.models import ApprovalStatus
from approvals.services import approval_decide, approval_escalate, approval_expire
from audit.models import AuditEvent
from console.errors import Conflict
from tests.approvals.conftest import draft_request
from tests.approvals.test_sla import shift

pytestmark = pytest.mark.django_db


def _second_pending_request(run):
    """Another pending request on the same run (as a forced-approval draft would add)."""
    return draft_request(run, step_seq=99, customer="C-1001", body="We are refunding the duplicate.",
                         summary="Draft")


def test_cancelling_a_parked_run_cancels_each_request_with_its_own_audit_event(parked, operator):
    run, request = parked()
    other = _second_pending_request(run)
    run = run_cancel(actor=operator, run=run, reason="customer withdrew")
    assert run.status == RunStatus.CANCELLED
    rows = {r.id: r for r in requests_of(run)}
    assert {r.status for r in rows.values()} == {ApprovalStatus.CANCELLED}
    assert rows[request.id].decision_reason == "Run cancelled: customer withdrew"
    assert rows[request.id].decided_at is not None
    events = {e.object_id: e for e in AuditEvent.objects.filter(action="approval.cancelled")}
    assert set(events) == {str(request.id), str(other.id)}
    event = events[str(request.id)]
    assert event.payload["request_id"] == str(request.id)
    assert event.payload["run_id"] == str(run.public_id) and event.payload["reason"] == "customer withdrew"
    assert event.object_type == "approval_request" and event.actor_label == "operator"
    assert event.tenant_id == run.tenant_id and event.trace_id == run.trace_id
    cancelled = AuditEvent.objects.get(action="run.cancelled", object_id=str(run.public_id))
    assert cancelled.payload["approval_requests_cancelled"] == 2


def test_a_request_of_a_cancelled_run_can_no_longer_be_decided(parked, operator, lead):
    run, request = parked()
    run_cancel(actor=operator, run=run, reason="customer withdrew")
    with pytest.raises(Conflict, match="already cancelled"):
        approval_decide(actor=lead, request=request, decision="approve", reason="ok")
    assert AgentRun.objects.get(pk=run.pk).status == RunStatus.CANCELLED


def test_cancelling_twice_cancels_and_audits_the_requests_once(parked, operator):
    run, _ = parked()
    run_cancel(actor=operator, run=run)
    with pytest.raises(Conflict):
        run_cancel(actor=operator, run=run)
    assert AuditEvent.objects.filter(action="approval.cancelled").count() == 1


def test_a_decided_request_is_not_cancelled_with_its_run(parked, operator, lead):
    run, request = parked()
    approval_decide(actor=lead, request=request, decision="approve", reason="duplicate charge")
    run_cancel(actor=operator, run=run, reason="changed our minds")  # queued: still cancellable
    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPROVED
    assert not AuditEvent.objects.filter(action="approval.cancelled").exists()


def test_run_resume_after_approval_moves_a_parked_run_once_audits_and_enqueues_on_commit(
    parked, lead, django_capture_on_commit_callbacks, monkeypatch
):
    from agents import tasks
    from agents.services.runs import run_resume_after_approval

    sent = []
    monkeypatch.setattr(tasks, "send_run", lambda run_id: sent.append(run_id))
    run, request = parked()
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            assert run_resume_after_approval(run=run, actor=lead, request_id=request.id, outcome="approve")
            assert not run_resume_after_approval(
                run=run, actor=lead, request_id=request.id, outcome="approve"
            )
    assert AgentRun.objects.get(pk=run.pk).status == RunStatus.QUEUED
    (event,) = AuditEvent.objects.filter(action="run.resumed", object_id=str(run.public_id))
    assert event.payload == {"request_id": str(request.id), "decision": "approve"}
    assert sent == [str(run.public_id)]


def test_decisions_and_expiry_resume_the_run_through_the_agents_service(parked, lead, monkeypatch):
    """The run's status is changed by agents.services.runs, called by the runtime's subject
    handler, never by approvals directly."""
    import agents.approval_handler

    calls = []
    real = agents.approval_handler.run_resume_after_approval

    def spy(**kwargs):
        calls.append((kwargs["request_id"], kwargs["outcome"]))
        return real(**kwargs)

    monkeypatch.setattr(agents.approval_handler, "run_resume_after_approval", spy)
    run, approved = parked()
    approval_decide(actor=lead, request=approved, decision="approve", reason="duplicate charge")
    assert AgentRun.objects.get(pk=run.pk).status == RunStatus.QUEUED
    _, expired = parked()
    shift(expired, minutes=241)
    assert approval_escalate(request_id=expired.pk)
    expired.refresh_from_db()
    shift(expired, minutes=61)
    assert approval_expire(request_id=expired.pk)
    assert calls == [(approved.id, "approve"), (expired.id, "expired")]
