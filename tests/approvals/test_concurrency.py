"""Two reviewers deciding at once on PostgreSQL (real concurrent connections)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections

from agents.models import AgentRun, RunStatus
from approvals.models import ApprovalDecision, ApprovalRequest, ApprovalStatus
from approvals.services import approval_decide
from audit.models import AuditEvent
from console.errors import DomainError

pytestmark = pytest.mark.django_db(transaction=True)


def race(request_id, *reviewers, decision="approve"):
    barrier = threading.Barrier(len(reviewers))
    outcomes: dict[str, str] = {}

    def decide(user):
        try:
            request = ApprovalRequest.objects.select_related("queue").get(pk=request_id)
            barrier.wait()
            approval_decide(actor=user, request=request, decision=decision, reason="race")
            outcomes[user.username] = "ok"
        except DomainError as exc:
            outcomes[user.username] = f"{exc.status}"
        finally:
            connections.close_all()

    threads = [threading.Thread(target=decide, args=(u,)) for u in reviewers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


@pytest.mark.parametrize("round_", range(3))
def test_two_reviewers_at_once_exactly_one_wins_and_the_run_resumes_once(parked, lead, lead2, round_):
    if connection.vendor != "postgresql":
        pytest.skip("concurrent decisions need PostgreSQL")
    run, request = parked()
    outcomes = race(request.pk, lead, lead2)
    assert sorted(outcomes.values()) == ["409", "ok"], outcomes
    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPROVED
    assert ApprovalDecision.objects.filter(request=request).count() == 1
    assert AgentRun.objects.get(pk=run.pk).status == RunStatus.QUEUED
    assert AuditEvent.objects.filter(action="run.resumed", object_id=str(run.public_id)).count() == 1
    assert AuditEvent.objects.filter(action="approval.decided", object_id=str(request.id)).count() == 1


def test_dual_control_concurrent_approvals_count_both_and_resume_once(parked, lead, lead2):
    if connection.vendor != "postgresql":
        pytest.skip("concurrent decisions need PostgreSQL")
    from tests.approvals.conftest import CREDIT_150

    run, request = parked(CREDIT_150)
    outcomes = race(request.pk, lead, lead2)
    assert sorted(outcomes.values()) == ["ok", "ok"], outcomes
    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPROVED
    assert AuditEvent.objects.filter(action="run.resumed", object_id=str(run.public_id)).count() == 1
