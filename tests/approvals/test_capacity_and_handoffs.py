"""Backpressure (capacity throttles intake) and the human handoff queue."""

from __future__ import annotations

import pytest

from agents.approval_subject import run_subject
from agents.models import RunStatus
from approvals.models import ApprovalRequest, Handoff, HandoffSource, HandoffStatus, ReviewQueue
from approvals.services import handoff_resolve, handoff_take
from audit.models import AuditEvent
from console.errors import Conflict, InvalidInput
from tests.agents.conftest import REFUND

pytestmark = pytest.mark.django_db


def test_a_full_queue_throttles_intake_and_the_run_hands_off(start_run, step, parked, login, lead):
    ReviewQueue.objects.filter(slug="billing-credits").update(capacity=1)
    parked()  # fills the queue
    run = step(start_run(REFUND))
    assert run.status == RunStatus.HANDED_OFF
    assert "Review queue full" in run.terminal_reason
    assert ApprovalRequest.objects.filter(status="pending").count() == 1
    handoff = Handoff.objects.of_subject(run_subject(run)).get()
    assert handoff.source == HandoffSource.BACKPRESSURE and handoff.status == HandoffStatus.OPEN
    assert "apply_credit" in handoff.summary
    assert AuditEvent.objects.filter(action="approval.throttled", object_id=str(run.public_id)).exists()
    page = login(lead).get("/approvals/")
    assert b"data-throttled" in page.content and b"Intake throttled" in page.content


def test_take_resolve_and_close_a_handoff_with_a_note(start_run, step, operator, lead, login):
    ReviewQueue.objects.filter(slug="billing-credits").update(capacity=1)
    step(start_run(REFUND))
    run = step(start_run(REFUND))
    handoff = Handoff.objects.of_subject(run_subject(run)).get()
    with pytest.raises(InvalidInput):
        handoff_resolve(actor=operator, handoff=handoff, note=" ")
    handoff_take(actor=operator, handoff=handoff)
    with pytest.raises(Conflict):
        handoff_take(actor=lead, handoff=handoff)
    with pytest.raises(Conflict, match="operator took this handoff"):
        handoff_resolve(actor=lead, handoff=handoff, note="done")
    handoff = handoff_resolve(actor=operator, handoff=handoff, note="Credited $40 by hand")
    assert handoff.status == HandoffStatus.RESOLVED and handoff.note == "Credited $40 by hand"
    with pytest.raises(Conflict, match="already resolved"):
        handoff_resolve(actor=operator, handoff=handoff, note="again")
    actions = set(AuditEvent.objects.filter(object_id=str(handoff.id)).values_list("action", flat=True))
    assert {"handoff.created", "handoff.taken", "handoff.resolved"} <= actions


def test_handoff_page_for_operators_and_reviewers_only(
    start_run, step, login, operator, lead, auditor, outsider
):
    ReviewQueue.objects.filter(slug="billing-credits").update(capacity=1)
    step(start_run(REFUND))
    run = step(start_run(REFUND))
    handoff = Handoff.objects.of_subject(run_subject(run)).get()
    page = login(operator).get("/handoffs/")
    assert page.status_code == 200 and str(handoff.id).encode() in page.content
    assert b'data-testid="take"' in page.content
    assert login(lead).get("/handoffs/").status_code == 200
    for user in (auditor, outsider):
        assert login(user).get("/handoffs/").status_code == 404
        assert login(user).post(f"/handoffs/{handoff.id}/take/").status_code == 404
    taken = login(operator).post(f"/handoffs/{handoff.id}/take/", HTTP_HX_REQUEST="true")
    assert taken.status_code == 200 and b'data-status="taken"' in taken.content
    done = login(operator).post(f"/handoffs/{handoff.id}/resolve/", {"note": "called the customer"})
    assert done.status_code == 302
    handoff.refresh_from_db()
    assert handoff.status == HandoffStatus.RESOLVED


def test_database_keeps_resolved_final(start_run, step, operator):
    from django.db import connection, transaction
    from django.db.utils import DatabaseError

    if connection.vendor != "postgresql":
        pytest.skip("trigger is PostgreSQL-only")
    ReviewQueue.objects.filter(slug="billing-credits").update(capacity=1)
    step(start_run(REFUND))
    handoff = Handoff.objects.of_subject(run_subject(step(start_run(REFUND)))).get()
    handoff_resolve(actor=operator, handoff=handoff, note="done")
    with pytest.raises(DatabaseError, match="Cannot update"), transaction.atomic():
        Handoff.objects.filter(pk=handoff.pk).update(status="open")


def test_budget_exhausted_run_lands_in_the_handoff_queue(start_run, step):
    run = start_run("What plan is customer C-1002 on?", budgets={"max_steps": 1})
    run = step(run)
    assert run.status == RunStatus.BUDGET_EXHAUSTED, run.terminal_reason
    assert Handoff.objects.of_subject(run_subject(run)).get().source == HandoffSource.BUDGET
