"""Decisions at the service level: segregation of duties, dual control, edits, audit."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from agents.models import AgentRun, RunStatus
from approvals.models import ApprovalDecision, ApprovalStatus
from approvals.services import approval_decide
from audit.models import AuditEvent
from console.errors import Conflict, InvalidInput, PermissionDenied
from support.models import CreditLedger
from tests.approvals.conftest import CREDIT_150

pytestmark = pytest.mark.django_db


def refusals(request):
    return list(
        AuditEvent.objects.filter(action="approval.refused", object_id=str(request.id)).values_list(
            "payload", flat=True
        )
    )


def test_requester_cannot_approve_own_credit(parked, lead):
    lead.groups.add(Group.objects.get(name="operator"))  # a lead who may also start runs
    _, request = parked(actor=lead)
    assert request.requester_id == lead.pk
    with pytest.raises(PermissionDenied, match="Segregation of duties"):
        approval_decide(actor=lead, request=request, decision="approve", reason="mine")
    assert refusals(request) and "Segregation" in refusals(request)[0]["reason"]
    request.refresh_from_db()
    assert request.status == ApprovalStatus.PENDING and not ApprovalDecision.objects.exists()


def test_on_behalf_of_identity_cannot_approve(parked, lead, lead2):
    _, request = parked(on_behalf_of="lead2")
    with pytest.raises(PermissionDenied, match="Segregation"):
        approval_decide(actor=lead2, request=request, decision="approve", reason="")
    approval_decide(actor=lead, request=request, decision="approve", reason="ok")
    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPROVED


def test_dual_control_same_person_cannot_approve_twice(parked, lead):
    _, request = parked(CREDIT_150)
    assert request.approvals_required == 2
    approval_decide(actor=lead, request=request, decision="approve", reason="looks right")
    request.refresh_from_db()
    assert request.status == ApprovalStatus.PENDING
    with pytest.raises(PermissionDenied, match="already decided"):
        approval_decide(actor=lead, request=request, decision="approve", reason="again")
    request.refresh_from_db()
    assert request.status == ApprovalStatus.PENDING
    assert ApprovalDecision.objects.filter(request=request).count() == 1


def test_dual_control_two_distinct_reviewers_approve_and_the_run_resumes_once(parked, lead, lead2, step):
    run, request = parked(CREDIT_150)
    approval_decide(actor=lead, request=request, decision="approve", reason="dup")
    assert AgentRun.objects.get(pk=run.pk).status == RunStatus.WAITING_APPROVAL
    approval_decide(actor=lead2, request=request, decision="approve", reason="dup")
    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPROVED
    assert AgentRun.objects.get(pk=run.pk).status == RunStatus.QUEUED
    assert AuditEvent.objects.filter(action="run.resumed", object_id=str(run.public_id)).count() == 1
    run = step(run)
    assert run.status == RunStatus.SUCCEEDED
    assert list(CreditLedger.objects.values_list("amount_cents", flat=True)) == [15000]
    # the trace says who decided and when
    approval_step = run.steps.get(kind="approval")
    assert approval_step.output["decided_by"] == "lead, lead2" and approval_step.output["decided_at"]


def test_edit_over_the_limit_is_refused(parked, lead):
    _, request = parked()
    raised = dict(request.arguments, amount_cents=4500)
    with pytest.raises(PermissionDenied, match="lower the amount"):
        approval_decide(actor=lead, request=request, decision="approve", reason="", arguments=raised)
    huge = dict(request.arguments, amount_cents=200_000)
    with pytest.raises(PermissionDenied):
        approval_decide(actor=lead, request=request, decision="approve", reason="", arguments=huge)
    assert len(refusals(request)) == 2
    request.refresh_from_db()
    assert request.status == ApprovalStatus.PENDING and not request.edited


def test_edit_that_needs_dual_control_on_a_single_approval_request_is_refused(parked, lead):
    # $40 request edited to another customer or more approvals than the request has: refused
    _, request = parked()
    other = dict(request.arguments, customer="C-1002")
    with pytest.raises(PermissionDenied, match="customer"):
        approval_decide(actor=lead, request=request, decision="approve", reason="", arguments=other)


def test_edit_and_approve_records_the_diff_and_the_run_credits_the_edited_amount(parked, lead, step):
    run, request = parked()
    lower = dict(request.arguments, amount_cents=3000)
    approval_decide(actor=lead, request=request, decision="approve", reason="partial", arguments=lower)
    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPROVED and request.edited and request.edited_by == lead
    assert request.approved_arguments["amount_cents"] == 3000
    decision = ApprovalDecision.objects.get(request=request)
    assert decision.edited and decision.diff == {"amount_cents": {"from": 4000, "to": 3000}}
    event = AuditEvent.objects.get(action="approval.decided", object_id=str(request.id))
    assert event.payload["edited"] is True and event.payload["arguments"]["amount_cents"] == 3000
    assert event.payload["diff"] == {"amount_cents": {"from": 4000, "to": 3000}}
    run = step(run)
    assert run.status == RunStatus.SUCCEEDED
    assert list(CreditLedger.objects.values_list("amount_cents", flat=True)) == [3000]


def test_editor_cannot_be_the_second_approver_of_the_edited_proposal(parked, lead, lead2, admin, step):
    from guardian.shortcuts import assign_perm

    run, request = parked(CREDIT_150)
    # lead2 approves the original $150; lead edits it down to $120: a new proposal
    approval_decide(actor=lead2, request=request, decision="approve", reason="ok")
    approval_decide(
        actor=lead,
        request=request,
        decision="approve",
        reason="lower",
        arguments=dict(request.arguments, amount_cents=12000),
    )
    request.refresh_from_db()
    assert request.status == ApprovalStatus.PENDING and request.edited_by == lead
    with pytest.raises(PermissionDenied, match="you edited this proposal"):
        approval_decide(actor=lead, request=request, decision="approve", reason="second")
    # a third, distinct reviewer gives the second approval of the edited proposal
    third = type(lead).objects.create_user("lead3", email="lead3@example.test")
    assign_perm("approvals.decide_reviewqueue", third, request.queue)
    approval_decide(actor=third, request=request, decision="approve", reason="ok")
    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPROVED
    assert request.approved_arguments["amount_cents"] == 12000
    run = step(run)
    assert list(CreditLedger.objects.values_list("amount_cents", flat=True)) == [12000]


def test_reject_needs_a_reason_and_the_reason_goes_back_to_the_run(parked, lead, step):
    run, request = parked()
    with pytest.raises(InvalidInput):
        approval_decide(actor=lead, request=request, decision="reject", reason="  ")
    approval_decide(actor=lead, request=request, decision="reject", reason="not a duplicate charge")
    run = step(run)
    assert run.status == RunStatus.DENIED
    assert "not a duplicate charge" in run.terminal_reason and "lead" in run.terminal_reason
    assert not CreditLedger.objects.exists()


def test_decision_on_a_closed_request_is_409_and_audited(parked, lead, lead2):
    _, request = parked()
    approval_decide(actor=lead, request=request, decision="approve", reason="")
    with pytest.raises(Conflict):
        approval_decide(actor=lead2, request=request, decision="approve", reason="")
    assert any("already approved" in r["reason"] for r in refusals(request))


def test_every_decision_writes_its_audit_event(parked, lead, lead2):
    _, r1 = parked(CREDIT_150)
    approval_decide(actor=lead, request=r1, decision="approve", reason="a")
    approval_decide(actor=lead2, request=r1, decision="approve", reason="b")
    _, r2 = parked()
    approval_decide(actor=lead, request=r2, decision="reject", reason="no")
    events = AuditEvent.objects.filter(action="approval.decided")
    assert events.count() == 3
    keys = {"request_id", "decision", "reason", "tool", "arguments", "edited", "run_id"}
    for event in events:
        assert keys <= set(event.payload)
    assert sorted(e.actor_label for e in events) == ["lead", "lead", "lead2"]
