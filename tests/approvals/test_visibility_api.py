"""Visibility and decision rights per queue for every persona, in the API and the console;
the list, detail, claim and decision endpoints."""

from __future__ import annotations

import json

import pytest
from guardian.shortcuts import assign_perm

from approvals.models import ApprovalRequest, ReviewQueue

pytestmark = pytest.mark.django_db

# persona -> sees Billing credits requests (list/detail), may decide
RIGHTS = {
    "lead": (True, True),
    "lead2": (True, True),
    "admin": (True, True),  # superuser
    "accounts": (False, False),
    "operator": (False, False),
    "auditor": (False, False),
    "outsider": (False, False),
    "svc-acme": (False, False),
}


def _post(client, url, **payload):
    return client.post(url, data=json.dumps(payload), content_type="application/json")


@pytest.mark.parametrize("persona", sorted(RIGHTS))
def test_visibility_and_decision_rights_per_persona(persona, parked, token_client, login, seeded):
    sees, decides = RIGHTS[persona]
    _, request = parked()
    user = seeded["users"][persona]
    api = token_client(user)
    listed = api.get("/api/v1/approvals")
    assert listed.status_code == 200
    assert (str(request.id) in [i["id"] for i in listed.json()["items"]]) is sees
    assert api.get(f"/api/v1/approvals/{request.id}").status_code == (200 if sees else 404)
    assert _post(api, f"/api/v1/approvals/{request.id}/claim").status_code == (200 if decides else 404)
    decided = _post(api, f"/api/v1/approvals/{request.id}/decisions", decision="approve", reason="ok")
    assert decided.status_code == (200 if decides else 404), decided.content
    if persona != "svc-acme":
        page = login(user)
        assert page.get(f"/approvals/{request.id}/").status_code == (200 if sees else 404)
        assert page.post(f"/approvals/{request.id}/claim/").status_code in ((302, 409) if sees else (404,))


def test_view_only_reviewer_sees_but_gets_403_with_reason_on_decide(parked, token_client, auditor):
    _, request = parked()
    from console.models import TenantMembership

    watcher = type(auditor).objects.create_user("watcher")
    TenantMembership.objects.create(user=watcher, tenant_id=request.tenant_id)
    assign_perm("approvals.view_reviewqueue", watcher, request.queue)
    api = token_client(watcher)
    assert api.get(f"/api/v1/approvals/{request.id}").status_code == 200
    response = _post(api, f"/api/v1/approvals/{request.id}/decisions", decision="approve")
    assert response.status_code == 403
    assert "may not decide in queue Billing credits" in response.json()["error"]["message"]


def test_reviewer_outside_tenant_gets_404(parked, token_client, lead):
    from console.models import TenantMembership

    _, request = parked()
    TenantMembership.objects.filter(user=lead, tenant_id=request.tenant_id).delete()
    assert token_client(lead).get(f"/api/v1/approvals/{request.id}").status_code == 404


def test_list_filters_status_and_queue_and_paginates(parked, token_client, lead):
    _, first = parked()
    _, second = parked()
    api = token_client(lead)
    body = api.get("/api/v1/approvals?status=pending&queue=billing-credits&limit=1").json()
    assert [i["id"] for i in body["items"]] == [str(first.id)]
    nxt = api.get(f"/api/v1/approvals?limit=1&cursor={body['next_cursor']}").json()
    assert [i["id"] for i in nxt["items"]] == [str(second.id)] and nxt["next_cursor"] is None
    assert api.get("/api/v1/approvals?queue=account-changes").json()["items"] == []
    import base64
    import json

    for forged in (["2026-01-01T00:00:00+00:00", 5], ["2026-01-01", str(first.id)], "x"):
        token = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("=")
        response = api.get(f"/api/v1/approvals?cursor={token}")
        assert response.status_code == 422 and "cursor" in response.json()["error"]["message"]
    assert api.get("/api/v1/approvals?status=approved").json()["items"] == []
    bad = api.get("/api/v1/approvals?status=maybe")
    assert bad.status_code == 422 and "status must be one of" in bad.json()["error"]["message"]


def test_detail_has_evidence_and_claim(parked, token_client, lead):
    _, request = parked()
    api = token_client(lead)
    assert _post(api, f"/api/v1/approvals/{request.id}/claim").json()["claim"]["by"] == "lead"
    detail = api.get(f"/api/v1/approvals/{request.id}").json()
    assert detail["tool"] == "apply_credit" and detail["amount_cents"] == 4000
    assert {e["tool"] for e in detail["evidence"]} >= {"lookup_subscription"}
    assert detail["claim"]["live"] is True and detail["sla_state"] == "ok"
    assert detail["requester"] == "svc-acme" and detail["trace_url"].endswith("/trace")


def test_decision_api_409_when_no_longer_pending(parked, token_client, lead, lead2):
    _, request = parked()
    assert (
        _post(token_client(lead), f"/api/v1/approvals/{request.id}/decisions", decision="approve").status_code
        == 200
    )
    again = _post(token_client(lead2), f"/api/v1/approvals/{request.id}/decisions", decision="approve")
    assert again.status_code == 409


def test_list_is_scoped_to_the_queues_held(low_risk_request, token_client, lead, accounts):
    low_risk_request(queue="account-changes")
    assert len(token_client(accounts).get("/api/v1/approvals").json()["items"]) == 1
    assert token_client(lead).get("/api/v1/approvals").json()["items"] == []
    assert ReviewQueue.objects.count() == 3 and ApprovalRequest.objects.count() == 1
