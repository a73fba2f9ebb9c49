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
