"""SLA: near-breach flag, breach escalates, expiry fails closed; sweeps never double-act."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.core import mail
from django.db import connection
from django.utils import timezone

from agents.approval_subject import run_subject
from agents.models import AgentRun, InvocationState, RunStatus, ToolInvocation
from approvals.models import ApprovalRequest, ApprovalStatus, Handoff, HandoffSource
from approvals.services import approval_escalate, approval_expire, approval_flag, approval_sla_sweep
from audit.models import AuditEvent
from support.models import CreditLedger

pytestmark = pytest.mark.django_db


def shift(request, **delta):
    """Move the request's clock back, as if it had been waiting that long."""
    d = timedelta(**delta)
    ApprovalRequest.objects.filter(pk=request.pk).update(
        created_at=request.created_at - d, due_at=request.due_at - d, near_due_at=request.near_due_at - d
    )
    request.refresh_from_db()


def test_near_deadline_is_flagged_once_at_eighty_percent(
    parked, django_capture_on_commit_callbacks, lead, lead2
):
    _, request = parked()  # billing-credits: SLA 240 min, flag at 192 min
    shift(request, minutes=190)
    assert approval_sla_sweep()["flagged"] == 0
    shift(request, minutes=3)
    with django_capture_on_commit_callbacks(execute=True):
        assert approval_sla_sweep() == {"expired": 0, "escalated": 0, "flagged": 1}
        assert approval_sla_sweep()["flagged"] == 0
    request.refresh_from_db()
    assert request.flagged_at is not None
    assert [sorted(m.to) for m in mail.outbox] == [sorted([lead.email, lead2.email])]
    assert "near its deadline" in mail.outbox[0].subject
    assert AuditEvent.objects.filter(action="approval.flagged").count() == 1


def test_breach_escalates_to_the_escalation_queue_and_notifies(
    parked, admin, django_capture_on_commit_callbacks
):
    from guardian.shortcuts import assign_perm

    from approvals.models import ReviewQueue

    escalations = ReviewQueue.objects.get(slug="escalations")
    boss = type(admin).objects.create_user("boss", email="boss@example.test")
    assign_perm("approvals.decide_reviewqueue", boss, escalations)
    _, request = parked()
    shift(request, minutes=241)
    with django_capture_on_commit_callbacks(execute=True):
        counts = approval_sla_sweep()
    assert counts["escalated"] == 1
    request.refresh_from_db()
    assert request.queue == escalations and request.escalated_from.slug == "billing-credits"
    assert request.status == ApprovalStatus.PENDING and request.due_at > timezone.now()
    assert any("boss@example.test" in m.to for m in mail.outbox)
    event = AuditEvent.objects.get(action="approval.escalated")
    assert event.payload["from_queue"] == "billing-credits" and event.payload["to_queue"] == "escalations"


def test_expiry_fails_closed_the_run_hands_off_with_a_summary(parked, step):
    run, request = parked()
    shift(request, minutes=241)
    assert approval_escalate(request_id=request.pk)
    request.refresh_from_db()
    shift(request, minutes=61)  # the escalation queue's SLA passes too
    assert approval_sla_sweep()["expired"] == 1
    request.refresh_from_db()
    assert request.status == ApprovalStatus.EXPIRED
    assert AgentRun.objects.get(pk=run.pk).status == RunStatus.QUEUED  # the run is told
    run = step(run)
    assert run.status == RunStatus.HANDED_OFF
    assert "expired" in run.terminal_reason and "failing closed" in run.terminal_reason
    assert "Proposed but not executed: apply_credit" in run.result["handoff_summary"]
    assert not CreditLedger.objects.exists()
    # the call it held will never run, and its row says so (not "awaiting approval")
    call = ToolInvocation.objects.get(pk=request.action_id)
    assert call.state == InvocationState.REFUSED and call.started_at is None
    handoff = Handoff.objects.of_subject(run_subject(run)).get()
    assert handoff.source == HandoffSource.EXPIRY and "apply_credit" in handoff.summary
    assert AuditEvent.objects.filter(action="handoff.created", object_id=str(handoff.id)).exists()


def test_a_stale_sweeper_does_not_act_twice(parked):
    # Sweeper A read its candidates; sweeper B acted first; A's conditional updates find nothing.
    _, request = parked()
    shift(request, minutes=241)
    assert approval_escalate(request_id=request.pk) is True
    assert approval_escalate(request_id=request.pk) is False
    request.refresh_from_db()
    shift(request, minutes=61)
    assert approval_expire(request_id=request.pk) is True
    assert approval_expire(request_id=request.pk) is False
    assert approval_flag(request_id=request.pk) is False
    assert AuditEvent.objects.filter(action="approval.escalated").count() == 1
    assert AuditEvent.objects.filter(action="approval.expired").count() == 1
    assert AuditEvent.objects.filter(action="run.resumed").count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_sweepers_never_double_act(parked):
    if connection.vendor != "postgresql":
        pytest.skip("concurrent connections need PostgreSQL")
    requests = [parked()[1] for _ in range(4)]
    for r in requests:
        shift(r, minutes=241)
    barrier = threading.Barrier(2)
    results: list[dict] = []

    def sweep():
        from django.db import connections

        try:
            barrier.wait()
            results.append(approval_sla_sweep())
        finally:
            connections.close_all()

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2  # both sweepers finished
    assert sum(r["escalated"] for r in results) == 4
    assert AuditEvent.objects.filter(action="approval.escalated").count() == 4
