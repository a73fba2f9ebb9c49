"""The minimal decision endpoint: rights per persona, segregation of duties, 409, resume."""

from __future__ import annotations

import json

import pytest

from agents.approval_subject import requests_of
from agents.models import AgentRun, RunStatus
from tests.agents.conftest import REFUND

pytestmark = pytest.mark.django_db


@pytest.fixture
def parked(start_run, step):
    run = step(start_run(REFUND))
    return run, requests_of(run).get()


def _decide(client, request_id, **payload):
    return client.post(
        f"/api/v1/approvals/{request_id}/decisions", data=json.dumps(payload), content_type="application/json"
    )


@pytest.mark.parametrize(
    "persona,status",
    [("outsider", 404), ("accounts", 404), ("auditor", 404), ("svc-acme", 404), ("operator", 404)],
)
def test_only_billing_reviewers_see_the_request(parked, token_client, seeded, persona, status):
    _, request = parked
    response = _decide(token_client(seeded["users"][persona]), request.id, decision="approve")
    assert response.status_code == status


def test_lead_approves_and_the_run_is_queued_for_resume(parked, token_client, lead):
    run, request = parked
    response = _decide(token_client(lead), request.id, decision="approve", reason="ok")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "approved" and response.json()["approvals"] == 1
    assert AgentRun.objects.get(pk=run.pk).status == RunStatus.QUEUED
    again = _decide(token_client(lead), request.id, decision="approve", reason="ok")
    assert again.status_code == 409


def test_reject_without_reason_is_422_and_with_reason_200(parked, token_client, lead):
    _, request = parked
    assert _decide(token_client(lead), request.id, decision="reject").status_code == 422
    response = _decide(token_client(lead), request.id, decision="reject", reason="not a duplicate")
    assert response.status_code == 200 and response.json()["status"] == "rejected"


def test_on_behalf_of_identity_gets_403(start_run, step, token_client, lead, svc_acme):
    run = step(start_run(REFUND, actor=svc_acme, on_behalf_of="lead"))
    request = requests_of(run).get()
    response = _decide(token_client(lead), request.id, decision="approve")
    assert response.status_code == 403 and "Segregation" in response.json()["error"]["message"]


def test_database_allows_one_decision_per_reviewer(parked, lead):
    from django.db import IntegrityError, transaction

    from approvals.models import ApprovalDecision

    _, request = parked
    ApprovalDecision.objects.create(request=request, reviewer=lead, decision="approve")
    with pytest.raises(IntegrityError), transaction.atomic():
        ApprovalDecision.objects.create(request=request, reviewer=lead, decision="approve")
