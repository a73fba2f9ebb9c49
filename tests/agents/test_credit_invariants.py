"""Credit invariants live in ``apply_credit`` itself (support/credits.py), so every caller
meets them: the broker executing an approved call, a model-driven agent proposing one, and a
reviewer editing one. Each refusal is a typed error, and nothing is written."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from agents import broker
from agents.llm.base import ModelResponse
from agents.models import Agent, InvocationState, RunStatus, ToolInvocation
from agents.tools import get_tool
from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from audit.models import AuditEvent
from console.errors import InvalidInput
from support.credits import credit_evidence
from support.models import CreditedCharge, CreditLedger, Subscription
from tests.agents.conftest import REFUND

pytestmark = pytest.mark.django_db
postgres_only = pytest.mark.skipif("connection.vendor != 'postgresql'", reason="needs PostgreSQL")

GOOD = {"customer": "C-1001", "amount_cents": 4000, "currency": "USD", "reason": "March duplicate",
        "ticket": "C-1001-T2", "charges": ["ch_0_3b"]}


def _execute(run, step_seq=1, **changes):
    """Run apply_credit through the broker, as an approved call runs (no runtime pre-check)."""
    tool = get_tool("apply_credit")
    arguments = {**GOOD, **changes}
    invocation = broker.invocation_propose(run=run, step_seq=step_seq, tool=tool, arguments=arguments)
    outcome = broker.broker_execute(run=run, invocation=invocation, tool=tool, lease_token=f"L{step_seq}")
    # the runtime records the outcome in its step; here, directly
    ToolInvocation.objects.filter(pk=invocation.pk).update(**broker.invocation_finish_fields(outcome))
    return outcome


def _refused(outcome, code):
    assert not outcome.ok, outcome.result
    assert outcome.error["code"] == code, outcome.error
    assert outcome.error["message"].startswith("apply_credit refused:")
    return outcome.error["message"]


def test_a_credit_the_evidence_supports_is_applied_with_its_ticket_and_charge(start_run):
    outcome = _execute(start_run(REFUND))
    assert outcome.ok and outcome.result["charges"] == ["ch_0_3b"] and outcome.result["ticket"] == "C-1001-T2"
    credit = CreditLedger.objects.get()
    assert (credit.amount_cents, credit.ticket_number) == (4000, "C-1001-T2")
    charge = CreditedCharge.objects.get()
    assert (charge.credit_id, charge.charge_ref, str(charge.charge_date), charge.charge_amount_cents) == (
        credit.pk, "ch_0_3b", "2026-03-02", 4000)
    event = AuditEvent.objects.get(action="credit.applied")
    assert event.payload["charges"] == ["ch_0_3b"] and event.payload["ticket"] == "C-1001-T2"


def test_an_amount_above_what_the_charges_justify_is_refused(start_run):
    message = _refused(_execute(start_run(REFUND), amount_cents=40000), "over_amount")
    assert "$400.00" in message and "$40.00" in message
    assert not CreditLedger.objects.exists() and not CreditedCharge.objects.exists()


def test_a_charge_is_credited_once_ever_whatever_the_key(start_run):
    first = start_run(REFUND)
    assert _execute(first).ok
    # another run, another idempotency key, even a smaller amount: the charge is spent
    later = start_run("C-1001 says they were charged twice in March, refund $20")
    message = _refused(_execute(later, amount_cents=2000), "already_credited")
    assert "ch_0_3b" in message and "already credited" in message
    assert CreditLedger.objects.count() == 1
    # the same call replayed under its own key is still the first result, not a refusal
    again = _execute(first)
    assert again.ok and again.replayed


def test_a_charge_or_ticket_of_another_customer_or_tenant_is_refused(start_run):
    run = start_run(REFUND)
    # C-1003's duplicate charge, credited to C-1001
    _refused(_execute(run, step_seq=1, charges=["ch_2_2b"]), "charge_not_found")
    # a regular (not duplicate) charge of C-1001 itself
    _refused(_execute(run, step_seq=2, charges=["ch_0_3"]), "charge_not_found")
    # another customer's ticket, and another tenant's
    _refused(_execute(run, step_seq=3, ticket="C-1002-T1"), "ticket_not_found")
    _refused(_execute(run, step_seq=4, ticket="G-2001-T2"), "ticket_not_found")
    # globex has a ch_0_3b too; it is never visible from acme, and acme's is not globex's
    foreign = credit_evidence(tenant_id=run.tenant_id, arguments={**GOOD, "customer": "G-2001"})
    assert foreign.problems[0][0] == "not_found"
    assert not CreditLedger.objects.exists()


def test_a_credit_with_no_evidence_is_refused(start_run):
    run = start_run(REFUND)
    _refused(_execute(run, step_seq=1, charges=[]), "no_evidence")
    arguments = {k: v for k, v in GOOD.items() if k != "ticket"}
    assert credit_evidence(tenant_id=run.tenant_id, arguments=arguments).problems[0][0] == "no_evidence"
    # the schema names both as required, so a model learns it before it reaches the tool
    problems = get_tool("apply_credit").validate({"customer": "C-1001", "amount_cents": 4000, "reason": "x"})
    assert any("ticket" in p for p in problems) and any("charges" in p for p in problems)
    assert not CreditLedger.objects.exists()


class FixedCredit:
    """A model that proposes one credit of its own choosing, then stops."""

    def __init__(self, arguments):
        self.arguments = arguments

    def complete(self, request):
        observations = request.state.get("observations", [])
        if not observations:
            action = {"type": "tool_call", "tool": "apply_credit", "arguments": self.arguments}
        else:
            action = {"type": "handoff", "reason": "the tool refused", "summary": "stopped"}
        return ModelResponse(action=action, model="fixed", prompt_tokens=5, completion_tokens=5)


def test_a_model_driven_agent_hits_the_same_wall_before_any_reviewer_sees_it(
    start_run, step, acme, monkeypatch
):
    from agents import runtime as rt

    monkeypatch.setitem(rt.MODEL_CLIENTS, "fixed", lambda agent: FixedCredit({**GOOD, "amount_cents": 90000}))
    Agent.objects.create(tenant=acme, slug="support", version=7, name="Fixed", model_route=["fixed"],
                         allowed_tools=["apply_credit"], intents=["billing_refund"])
    run = step(start_run("Customer C-1001 was billed twice, refund $900"))
    assert run.status == RunStatus.HANDED_OFF
    refused = run.steps.get(kind="tool", name="apply_credit")
    assert not refused.ok and refused.output["error"]["code"] == "over_amount"
    assert run.state["observations"][0]["error"]["code"] == "over_amount"  # the model was told why
    assert not ApprovalRequest.objects.exists() and not CreditLedger.objects.exists()
    assert not ToolInvocation.objects.filter(tool="apply_credit").exists()
    failed = AuditEvent.objects.get(action="tool.failed", trace_id=run.trace_id)
    assert failed.payload["error"]["code"] == "over_amount"


def test_a_charge_credited_while_the_request_waited_is_refused_at_execution(
    start_run, step, pending_request, lead
):
    run = step(start_run(REFUND))
    request = pending_request(run)
    assert request.arguments["charges"] == ["ch_0_3b"]
    # meanwhile another call credits the same charge
    assert _execute(start_run("refund C-1001's March duplicate")).ok
    approval_decide(actor=lead, request=request, decision="approve", reason="ok")
    run = step(run)
    assert CreditLedger.objects.count() == 1
    invocation = ToolInvocation.objects.get(run=run, tool="apply_credit")
    assert invocation.state == InvocationState.FAILED and invocation.error["code"] == "already_credited"
    assert run.status != RunStatus.SUCCEEDED or "already" in run.result.get("message", "")


def test_an_edit_the_tool_would_refuse_is_a_clear_4xx_and_changes_nothing(
    start_run, step, pending_request, lead
):
    run = step(start_run(REFUND))
    request = pending_request(run)
    foreign = dict(request.arguments, charges=["ch_2_2b"])
    with pytest.raises(InvalidInput, match="Charge ch_2_2b is not a duplicate charge of C-1001"):
        approval_decide(actor=lead, request=request, decision="approve", reason="", arguments=foreign)
    request.refresh_from_db()
    assert request.status == "pending" and not request.edited


@postgres_only
def test_concurrent_credits_of_one_charge_under_different_keys_give_one_credit(start_run, transactional_db):
    runs = [start_run(f"{REFUND} ({n})") for n in range(4)]
    tool = get_tool("apply_credit")
    invocations = [
        broker.invocation_propose(run=run, step_seq=1, tool=tool, arguments=GOOD) for run in runs
    ]
    outcomes, barrier = [], threading.Barrier(len(runs))

    def go(run, invocation):
        try:
            barrier.wait()
            outcomes.append(broker.broker_execute(run=run, invocation=invocation, tool=tool, lease_token="L"))
        finally:
            connection.close()

    threads = [threading.Thread(target=go, args=pair) for pair in zip(runs, invocations, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 4
    assert sorted(o.ok for o in outcomes) == [False, False, False, True]
    assert {o.error["code"] for o in outcomes if not o.ok} == {"already_credited"}
    assert CreditLedger.objects.count() == 1 and CreditedCharge.objects.count() == 1


def test_lookup_subscription_says_which_duplicates_are_credited(start_run):
    run = start_run(REFUND)
    assert _execute(run).ok
    sub = Subscription.objects.get(customer__code="C-1001", tenant=run.tenant)
    assert len(sub.charges) == 4
    ctx_run = start_run("What plan is C-1001 on?")
    tool = get_tool("lookup_subscription")
    invocation = broker.invocation_propose(
        run=ctx_run, step_seq=1, tool=tool, arguments={"customer": "C-1001"}
    )
    result = broker.broker_execute(run=ctx_run, invocation=invocation, tool=tool, lease_token="L").result
    group = result["subscriptions"][0]["duplicate_charges"][0]
    assert group["month"] == "2026-03" and group["refs"] == ["ch_0_3", "ch_0_3b"]
    assert group["duplicates"] == [{"ref": "ch_0_3b", "date": "2026-03-02", "amount_cents": 4000,
                                    "credited": True, "credit_id": CreditLedger.objects.get().pk}]
    assert [c["charges"] for c in result["recent_credits"]] == [["ch_0_3b"]]
