"""Bad input anywhere in the public API is a clear JSON error, never a 500 or an HTML page."""

import json

import pytest

pytestmark = pytest.mark.django_db

GARBAGE_BODIES = [
    "", "not json", "[]", "null", "42", '{"agent": 5}', '{"tenant": {"x": 1}}',
    json.dumps({"agent": "support", "tenant": "acme", "input": "a string"}),
    json.dumps({"agent": "support", "tenant": "nope", "input": {"message": "hi"}}),
    json.dumps({"agent": "no-such-agent", "tenant": "acme", "input": {"message": "hi"}}),
    json.dumps({"agent": "support", "tenant": "acme", "input": {"message": ""}}),
    json.dumps({"agent": "support", "tenant": "acme", "input": {"message": "x" * 200_000}}),
    json.dumps({"decision": "maybe", "reason": 3}),
    json.dumps({"engaged": "sometimes", "reason": ""}),
    json.dumps({"engaged": True, "reason": "r", "expires_at": "yesterday"}),
]

ENDPOINTS = [
    ("post", "/api/v1/runs"),
    ("post", "/api/v1/runs/not-a-uuid/cancel"),
    ("get", "/api/v1/runs/00000000-0000-0000-0000-000000000000"),
    ("get", "/api/v1/runs/not-a-uuid/trace"),
    ("post", "/api/v1/approvals/not-a-uuid/decisions"),
    ("post", "/api/v1/approvals/00000000-0000-0000-0000-000000000000/claim"),
    ("get", "/api/v1/approvals?status=bogus&queue=%00"),
    ("put", "/api/v1/switches/bogus/thing"),
    ("put", "/api/v1/switches/tool/apply_credit"),
    ("get", "/api/v1/audit/events?since=tomorrow&cursor=%%%"),
    ("get", "/api/v1/audit/export?format=xml"),
]


@pytest.mark.parametrize("persona", ["admin", "operator", "svc-acme"])
def test_garbage_never_gets_a_500(seeded, token_client, persona):
    from agents.seed import seed_runtime
    from support.seed import seed_support_data

    seed_support_data(tenants=seeded["tenants"])
    seed_runtime()
    client = token_client(seeded["users"][persona])
    for method, path in ENDPOINTS:
        for body in GARBAGE_BODIES if method in {"post", "put"} else [None]:
            kwargs = {"data": body, "content_type": "application/json"} if body is not None else {}
            response = getattr(client, method)(path, **kwargs)
            where = f"{persona} {method.upper()} {path} {str(body)[:60]!r}"
            assert response.status_code < 500, where
            if response.status_code >= 400:
                assert response["Content-Type"].startswith("application/json"), where
                error = response.json()["error"]
                assert error["code"] and error["message"], where
