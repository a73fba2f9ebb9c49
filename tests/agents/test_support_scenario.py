"""The support scenario through the real step loop and database (issue 16): credits only as
the billing evidence supports, the reply drafted after the decision and worded for it, the
requests a person must handle handed off. The planner's turn-by-turn logic is tested in
test_planner_flow.py; here the tools, the policy, the approval and the closing turn run."""

from __future__ import annotations

import pytest

from agents.approval_subject import requests_of
from agents.models import RunStatus, ToolInvocation
from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from support.models import CreditLedger, ReplyDraft
from tests.agents.conftest import REFUND

pytestmark = pytest.mark.django_db

PROMISES = ("we have credited", "we are crediting", "you will see", "will be credited")


def _tools(run) -> list[str]:
    return list(run.steps.filter(kind="tool").order_by("seq").values_list("name", flat=True))


def test_approved_credit_is_applied_once_and_the_reply_is_drafted_after_it(
    start_run, step, pending_request, lead
):
    run = step(start_run(REFUND))
    assert run.status == RunStatus.WAITING_APPROVAL
    assert not ReplyDraft.objects.exists()  # nothing promised before the decision
    request = pending_request(run)
    assert request.arguments["ticket"] == "C-1001-T2" and request.arguments["charges"] == ["ch_0_3b"]
    approval_decide(actor=lead, request=request, decision="approve", reason="duplicate confirmed")
    run = step(run)
    assert run.status == RunStatus.SUCCEEDED, run.terminal_reason
    assert _tools(run) == ["lookup_subscription", "search_tickets", "apply_credit", "apply_credit",
                           "draft_reply"]
    credit = CreditLedger.objects.get()
    draft = ReplyDraft.objects.get()
    assert credit.amount_cents == 4000 and credit.ticket_number == "C-1001-T2"
    assert draft.created_at >= credit.created_at
    assert "$40.00" in draft.body and "2 March 2026" in draft.body


def test_rejected_credit_gets_a_reply_that_promises_nothing_and_the_run_ends_denied(
    start_run, step, pending_request, lead
):
    run = step(start_run(REFUND))
    request = pending_request(run)
    approval_decide(actor=lead, request=request, decision="reject", reason="already refunded by phone")
    run = step(run)
    assert run.status == RunStatus.DENIED
    assert "rejected by lead" in run.terminal_reason and run.failure_class == "policy"
    assert not CreditLedger.objects.exists()
    draft = ReplyDraft.objects.get()
    assert not any(p in draft.body.lower() for p in PROMISES), draft.body
    # the closing turn ran a write_low tool, never another credit or approval
    assert ToolInvocation.objects.filter(run=run, tool="apply_credit").count() == 1
    assert requests_of(run).count() == 1


@pytest.mark.parametrize(
    "message",
    [
        "Customer C-1001 was billed twice in March, please refund the $400 duplicate",
        "c-1001 wants $900 back, they were double billed",
    ],
)
def test_a_request_above_the_evidence_is_proposed_at_what_the_evidence_supports(
    message, start_run, step, pending_request
):
    run = step(start_run(message))
    request = pending_request(run)
    assert request.arguments["amount_cents"] == 4000 and request.arguments["charges"] == ["ch_0_3b"]
    assert "evidence supports $40.00" in request.summary


def test_the_same_duplicate_is_not_proposed_again_after_it_was_credited(
    start_run, step, pending_request, lead
):
    first = step(start_run(REFUND))
    approval_decide(actor=lead, request=pending_request(first), decision="approve", reason="ok")
    assert step(first).status == RunStatus.SUCCEEDED
    again = step(start_run("C-1001 says they were charged twice in March, give them their 40 dollars back"))
    assert again.status == RunStatus.SUCCEEDED, again.terminal_reason
    assert "apply_credit" not in _tools(again)
    assert CreditLedger.objects.count() == 1
    reply = ReplyDraft.objects.filter(run=again).get()
    assert "already" in reply.body and not any(p in reply.body.lower() for p in PROMISES)


def test_no_duplicate_charge_means_no_credit_proposal(start_run, step):
    run = step(start_run("Customer C-1002 was charged twice, please refund $99"))
    assert run.status == RunStatus.HANDED_OFF
    assert "no duplicate" in run.terminal_reason
    assert "apply_credit" not in _tools(run)
    assert not ReplyDraft.objects.exists() and not ApprovalRequest.objects.exists()


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("I want to cancel my subscription, customer C-1004", "cancel"),
        ("Can C-1004 get a discount on the team plan?", "discount"),
    ],
)
def test_cancellations_and_discounts_go_to_a_person_with_the_facts(message, expected, start_run, step):
    run = step(start_run(message))
    assert run.status == RunStatus.HANDED_OFF
    assert expected in run.terminal_reason.lower()
    assert "plan" in run.result["handoff_summary"].lower()
    writes = ToolInvocation.objects.filter(run=run, tool__in=["apply_credit", "update_account_status"])
    assert not writes.exists()


def test_a_ticket_status_question_is_answered_from_the_tickets(start_run, step):
    run = step(start_run("What's the status of ticket C-1001-T2?"))
    assert run.status == RunStatus.SUCCEEDED
    assert "C-1001-T2" in run.result["message"] and "Billed twice in March" in run.result["message"]
    assert "plan" not in run.result["message"].lower()
