"""The runs API: authorisation per persona, Idempotency-Key semantics, read, trace, cancel."""

from __future__ import annotations

import json

import pytest

from agents.models import AgentRun, RunStatus
from tests.agents.conftest import REFUND

pytestmark = pytest.mark.django_db


def _post(client, body, key=None):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    return client.post("/api/v1/runs", data=json.dumps(body), content_type="application/json", **headers)


def body(message=REFUND, tenant="acme"):
    return {"agent": "support", "tenant": tenant, "input": {"message": message}}


def test_service_account_cannot_start_a_run_for_another_tenant(runtime, token_client, svc_acme):
    response = _post(token_client(svc_acme), body(tenant="globex"))
    assert response.status_code == 403
    assert "only for tenant acme" in response.json()["error"]["message"]
    assert not AgentRun.objects.exists()


def test_service_account_starts_a_run_for_its_tenant(runtime, token_client, svc_acme):
    response = _post(token_client(svc_acme), body())
    assert response.status_code == 201
    data = response.json()
    assert data["status"] == "queued" and data["tenant"] == "acme" and data["intent"] == "billing_refund"
    assert data["policy_version"] == 1 and len(data["trace_id"]) == 32


def test_idempotency_key_same_body_same_run_other_body_409(runtime, token_client, svc_acme):
    client = token_client(svc_acme)
    first = _post(client, body(), key="order-77")
    again = _post(client, body(), key="order-77")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    other = _post(client, body("What plan is customer C-1002 on?"), key="order-77")
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert AgentRun.objects.count() == 1


@pytest.mark.parametrize(
    "persona,status", [("outsider", 403), ("auditor", 403), ("lead", 403), ("operator", 201)]
)
def test_who_may_start_runs(runtime, token_client, persona, status):
    assert _post(token_client(runtime["users"][persona]), body()).status_code == status


def test_bad_input_says_what_is_wrong(runtime, token_client, svc_acme):
    client = token_client(svc_acme)
    response = _post(client, {"tenant": "acme", "input": {}})
    assert response.status_code == 422 and "message" in response.json()["error"]["message"]
    response = _post(client, {**body(), "intent": "astrology"})
    assert response.status_code == 422 and "not handled" in response.json()["error"]["message"]
    assert _post(client, body(tenant="nope")).status_code == 404


def test_get_run_and_trace_and_visibility(runtime, token_client, svc_acme, svc_globex, step):
    client = token_client(svc_acme)
    run_id = _post(client, body("What plan is customer C-1002 on?")).json()["id"]
    step(AgentRun.objects.get(public_id=run_id))
    data = client.get(f"/api/v1/runs/{run_id}").json()
    assert data["status"] == "succeeded" and data["usage"]["steps"] == 3
    assert data["result"]["message"].startswith("C-1002")
    trace = client.get(f"/api/v1/runs/{run_id}/trace").json()
    assert [s["seq"] for s in trace["steps"]] == list(range(1, len(trace["steps"]) + 1))
    tool = next(s for s in trace["steps"] if s["kind"] == "tool")
    assert tool["policy"] == {"decision": "allow", "version": 1, "rule": "tier:read"}
    assert tool["span_id"] and tool["invocation"]["idempotency_key"].startswith("idk_")
    model = next(s for s in trace["steps"] if s["kind"] == "model")
    assert model["tokens"]["prompt"] > 0 and model["prompt_hash"] and "messages" in model["input"]
    other = token_client(svc_globex)
    assert other.get(f"/api/v1/runs/{run_id}").status_code == 404
    assert other.get(f"/api/v1/runs/{run_id}/trace").status_code == 404
    assert client.get("/api/v1/runs/not-a-uuid").status_code == 404


def test_cancel_over_the_api(runtime, token_client, svc_acme, auditor):
    client = token_client(svc_acme)
    run_id = _post(client, body()).json()["id"]
    assert token_client(auditor).post(f"/api/v1/runs/{run_id}/cancel").status_code == 403
    response = client.post(
        f"/api/v1/runs/{run_id}/cancel", data=json.dumps({"reason": "dup"}), content_type="application/json"
    )
    assert response.status_code == 200 and response.json()["status"] == RunStatus.CANCELLED
    assert "dup" in response.json()["terminal_reason"]
    assert client.post(f"/api/v1/runs/{run_id}/cancel").status_code == 409
