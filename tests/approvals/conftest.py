"""Fixtures for the runtime tests: demo data, the support agent, policy v1, and helpers
that start a run and step it in this process (the end-to-end tests use real workers)."""

from __future__ import annotations

import pytest

from agents.models import AgentRun


@pytest.fixture
def runtime(seeded):
    from agents.seed import seed_support_data

    seed_support_data(tenants=seeded["tenants"])
    return seeded


@pytest.fixture
def start_run(runtime):
    """``start_run(message, actor=svc-acme, tenant="acme", **kw)`` creates a run (not enqueued)."""
    from agents.services import run_start

    def start(message: str, *, actor=None, tenant: str = "acme", **kwargs) -> AgentRun:
        actor = actor or runtime["users"]["svc-acme"]
        kwargs.setdefault("enqueue", False)
        run, _ = run_start(actor=actor, tenant=tenant, message=message, **kwargs)
        return run

    return start


@pytest.fixture
def step():
    """``step(run)`` runs the step loop in this process until the run parks or ends."""
    from agents.runtime import run_execute

    def execute(run: AgentRun) -> AgentRun:
        run_execute(run_id=str(run.public_id), worker="pytest")
        run.refresh_from_db()
        return run

    return execute


@pytest.fixture
def pending_request():
    from approvals.models import ApprovalRequest

    def get(run: AgentRun) -> ApprovalRequest:
        return ApprovalRequest.objects.select_related("queue").get(run=run, status="pending")

    return get


REFUND = "Customer C-1001 was billed twice in March, please refund the $40 duplicate"


CREDIT_150 = "Customer C-1001 was billed twice in March, please refund the $150 duplicate"


@pytest.fixture
def parked(start_run, step, pending_request):
    """``parked(message=REFUND, **kw)`` steps a new run until it parks; returns (run, request)."""

    def make(message: str = REFUND, **kwargs):
        run = step(start_run(message, **kwargs))
        assert run.status == "waiting_approval", (run.status, run.terminal_reason)
        return run, pending_request(run)

    return make


@pytest.fixture
def low_risk_request(start_run):
    """``low_risk_request(queue="billing-credits")``: a parked run whose pending request is a
    write_low draft_reply (as a force-approval switch would route it), made directly through
    the broker and approval_request_create."""
    from django.db import transaction

    from agents import broker, policy
    from agents.models import AgentRun, RunStatus
    from agents.tools import get_tool
    from approvals.services import approval_request_create

    def make(queue: str = "billing-credits", **kwargs):
        run = start_run("Please draft a reply to customer C-1002")
        tool = get_tool("draft_reply")
        args = {"customer": "C-1002", "body": "Thanks, we are on it."}
        with transaction.atomic():
            invocation = broker.invocation_propose(
                run=run,
                step_seq=1,
                tool=tool,
                arguments=args,
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
            request = approval_request_create(
                run=run, invocation=invocation, decision=decision, summary="Draft a reply", **kwargs
            )
            AgentRun.objects.filter(pk=run.pk).update(status=RunStatus.WAITING_APPROVAL)
        return run, request

    return make
