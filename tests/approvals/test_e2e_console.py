"""End to end with a real Celery worker: start the credit run over the API, approve it in
the console (form post with CSRF), and the credit appears exactly once."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client

from agents.models import RunStatus
from approvals.models import Handoff
from support.models import CreditLedger
from tests.agents.conftest import REFUND
from tests.agents.test_e2e import status_of, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_approve_in_the_console_and_the_credit_appears_once(
    runtime, start_worker, token_client, svc_acme, lead
):
    worker = start_worker()
    api = token_client(svc_acme)
    response = api.post(
        "/api/v1/runs",
        content_type="application/json",
        data=json.dumps({"agent": "support", "tenant": "acme", "input": {"message": REFUND}}),
    )
    assert response.status_code == 201, response.content
    run_id = response.json()["id"]
    wait_for(lambda: status_of(run_id) == RunStatus.WAITING_APPROVAL, workers=[worker], what="park")
    request_id = api.get(f"/api/v1/runs/{run_id}").json()["pending_approval"]["id"]

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(lead)
    page = browser.get(f"/approvals/{request_id}/")
    assert page.status_code == 200
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.content).group(1).decode()
    assert (
        browser.post(f"/approvals/{request_id}/decide/", {"decision": "approve"}).status_code == 403
    )  # no CSRF
    posted = browser.post(
        f"/approvals/{request_id}/decide/",
        {"csrfmiddlewaretoken": token, "decision": "approve", "reason": "duplicate charge", "approve": "1"},
    )
    assert posted.status_code == 302, posted.content[:500]

    wait_for(lambda: status_of(run_id) == RunStatus.SUCCEEDED, workers=[worker], what="resume")
    assert list(CreditLedger.objects.values_list("amount_cents", flat=True)) == [4000]
    trace = api.get(f"/api/v1/runs/{run_id}/trace").json()
    approval = next(s for s in trace["steps"] if s["kind"] == "approval")
    assert approval["output"]["decided_by"] == "lead" and approval["output"]["decided_at"]
    assert not Handoff.objects.exists()
