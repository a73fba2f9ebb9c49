"""Fixtures for the approvals tests: parked credit runs on top of the shared runtime fixtures
(tests/conftest.py: runtime, start_run, step, pending_request)."""

from __future__ import annotations

import pytest

from agents.models import AgentRun

REFUND = "Customer C-1001 was billed twice in March, please refund the $40 duplicate"


CREDIT_150 = "Customer C-1003 was charged twice in February, please refund $150 of the duplicate"


@pytest.fixture
def parked(start_run, step, pending_request):
    """``parked(message=REFUND, **kw)`` steps a new run until it parks; returns (run, request)."""

    def make(message: str = REFUND, **kwargs):
        run = step(start_run(message, **kwargs))
        assert run.status == "waiting_approval", (run.status, run.terminal_reason)
        return run, pending_request(run)

    return make


def draft_request(run, *, step_seq: int, queue: str = "billing-credits", customer: str = "C-1002",
                  body: str = "Thanks, we are on it.", summary: str = "Draft a reply", **kwargs):
    """A pending request on ``run`` for a write_low draft_reply (as a force-approval switch
    would route it), made directly through the broker and request_approval."""
    from django.db import transaction

    from agents import broker, policy
    from agents.approval_subject import request_approval
    from agents.tools import get_tool

    with transaction.atomic():
        invocation = broker.invocation_propose(
            run=run,
            step_seq=step_seq,
            tool=get_tool("draft_reply"),
            arguments={"customer": customer, "body": body},
            decision="require_approval",
            state="awaiting_approval",
        )
        decision = policy.Decision(
            effect=policy.REQUIRE_APPROVAL,
            reason="forced approval for write_low",
            policy_version=1,
            rule_id="test",
            queue=queue,
            approvals_required=1,
        )
        return request_approval(run=run, invocation=invocation, decision=decision, summary=summary, **kwargs)


@pytest.fixture
def low_risk_request(start_run):
    """``low_risk_request(queue="billing-credits")``: a parked run whose pending request is a
    write_low draft_reply (as a force-approval switch would route it), made directly through
    the broker and request_approval."""
    from agents.models import RunStatus

    def make(queue: str = "billing-credits", **kwargs):
        run = start_run("Please draft a reply to customer C-1002")
        request = draft_request(run, step_seq=1, queue=queue, **kwargs)
        AgentRun.objects.filter(pk=run.pk).update(status=RunStatus.WAITING_APPROVAL)
        return run, request

    return make
