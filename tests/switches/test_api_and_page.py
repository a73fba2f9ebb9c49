"""GET/PUT /api/v1/switches and the /switches/ page: who may, what bad input gets."""

from __future__ import annotations

import json

import pytest

from agents.models import KillSwitch
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def _put(client, scope, target, body):
    return client.put(
        f"/api/v1/switches/{scope}/{target}", data=json.dumps(body), content_type="application/json"
    )


def test_operator_flips_a_switch_over_the_api_and_reads_it_back(runtime, token_client, operator):
    client = token_client(operator)
    response = _put(client, "tool", "apply_credit", {"engaged": True, "reason": "INC-3", "expires_at": None})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["engaged"] and body["effective"] and body["changed_by"] == "operator"
    listed = client.get("/api/v1/switches").json()
    assert [(s["scope"], s["target"], s["engaged"]) for s in listed] == [("tool", "apply_credit", True)]
    response = _put(
        client, "global", "-", {"engaged": True, "reason": "stop", "expires_at": "2099-01-01T00:00:00Z"}
    )
    assert response.status_code == 200 and response.json()["target"] == "-"
    assert KillSwitch.objects.get(scope="global").target == ""
    assert _put(client, "global", "all", {"engaged": False, "reason": "clear"}).json()["engaged"] is False
    assert AuditEvent.objects.filter(action__startswith="switch.").count() == 3


@pytest.mark.parametrize(
    ("scope", "target", "body", "message"),
    [
        ("nope", "x", {"engaged": True, "reason": "r"}, "Unknown switch scope"),
        ("tool", "nope", {"engaged": True, "reason": "r"}, "Unknown tool"),
        ("tool", "apply_credit", {"engaged": True, "reason": " "}, "reason is required"),
        ("tool", "apply_credit", {"engaged": True}, "reason is required"),
        ("global", "x", {"engaged": True, "reason": "r"}, "global switch has no target"),
        (
            "tool",
            "apply_credit",
            {"engaged": True, "reason": "r", "expires_at": "2000-01-01T00:00:00Z"},
            "past",
        ),
        ("tool", "apply_credit", {"reason": "r"}, "engaged"),
    ],
)
def test_bad_scope_target_or_reason_is_422_with_a_clear_message(
    runtime, token_client, operator, scope, target, body, message
):
    response = _put(token_client(operator), scope, target, body)
    assert response.status_code == 422, response.content
    assert message in response.json()["error"]["message"]
    assert not KillSwitch.objects.exists()


def test_releasing_a_switch_that_is_not_engaged_is_409(runtime, token_client, operator):
    response = _put(token_client(operator), "tool", "apply_credit", {"engaged": False, "reason": "r"})
    assert response.status_code == 409


@pytest.mark.parametrize("persona", ["lead", "auditor", "outsider", "svc-acme"])
def test_non_operators_get_403_on_the_api(runtime, token_client, seeded, persona):
    client = token_client(seeded["users"][persona])
    response = _put(client, "tool", "apply_credit", {"engaged": True, "reason": "r"})
    assert response.status_code == 403
    assert not KillSwitch.objects.exists()
    listing = client.get("/api/v1/switches")
    assert listing.status_code == (200 if persona == "auditor" else 403)


@pytest.mark.parametrize("persona", ["lead", "auditor", "outsider", "accounts"])
def test_non_operators_get_404_on_the_page(runtime, login, seeded, persona):
    client = login(seeded["users"][persona])
    assert client.get("/switches/").status_code == 404
    assert client.get("/switches/tool/apply_credit/confirm/").status_code == 404
    response = client.post("/switches/tool/apply_credit/flip/", {"engaged": "1", "reason": "x"})
    assert response.status_code == 404
    assert not KillSwitch.objects.exists()


def test_anonymous_is_sent_to_login(runtime, client):
    response = client.get("/switches/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_page_shows_runbook_state_and_history(runtime, login, operator):
    from agents.services.switches import switch_engage

    switch_engage(actor=operator, scope="intent", target="billing_refund", reason="billing to humans")
    page = login(operator).get("/switches/").content.decode()
    assert "Runbook" in page and "which switch for which incident" in page
    assert 'data-switch="intent:billing_refund" data-engaged="1"' in page
    assert 'data-switch="tool:apply_credit" data-engaged="0"' in page
    assert 'data-switch="global:-"' in page
    assert "billing to humans" in page and "switch.engaged" in page  # history from the audit log


def test_confirmation_shows_the_blast_radius_and_asks_for_a_reason(start_run, step, login, operator):
    step(start_run("Customer C-1001 was billed twice in March, please refund the $40 duplicate"))
    client = login(operator)
    page = client.get("/switches/tool/apply_credit/confirm/", HTTP_HX_REQUEST="true").content.decode()
    assert "data-blast-radius" in page and 'id="switch-reason"' in page
    assert '<span class="stat" data-parked>1</span>' in page
    assert client.get("/switches/tool/nope/confirm/").status_code == 404


def test_htmx_flip_without_a_reason_comes_back_with_the_message_and_changes_nothing(runtime, login, operator):
    client = login(operator)
    response = client.post(
        "/switches/tool/apply_credit/flip/", {"engaged": "1", "reason": ""}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200 and response["HX-Retarget"] == "#switch-confirm"
    assert "reason is required" in response.content.decode()
    assert not KillSwitch.objects.exists()
    response = client.post("/switches/tool/apply_credit/flip/", {"engaged": "1", "reason": ""})
    assert response.status_code == 422


def test_htmx_flip_engages_and_releases_and_expiry_minutes_are_honoured(runtime, login, operator):
    client = login(operator)
    response = client.post(
        "/switches/tool/apply_credit/flip/",
        {"engaged": "1", "reason": "INC-4", "expires_in_minutes": "30"},
        HTTP_HX_REQUEST="true",
    )
    page = response.content.decode()
    assert response.status_code == 200 and 'data-switch="tool:apply_credit" data-engaged="1"' in page
    switch = KillSwitch.objects.get()
    assert switch.engaged and switch.expires_at is not None and switch.changed_by == operator
    response = client.post("/switches/tool/apply_credit/flip/", {"engaged": "0", "reason": "fixed"})
    assert response.status_code == 302
    assert not KillSwitch.objects.get().engaged
    bad = client.post(
        "/switches/tool/apply_credit/flip/", {"engaged": "1", "reason": "x", "expires_in_minutes": "-5"}
    )
    assert bad.status_code == 422 and "whole number of minutes" in bad.content.decode()


def test_an_expiry_without_a_time_zone_is_422_and_changes_nothing(runtime, token_client, operator):
    client = token_client(operator)
    body = {"engaged": True, "reason": "INC-9", "expires_at": "2099-01-01T00:00:00"}
    response = _put(client, "tool", "apply_credit", body)
    assert response.status_code == 422, response.content
    assert "time zone" in response.json()["error"]["message"]
    assert not KillSwitch.objects.filter(engaged=True).exists()
    assert not AuditEvent.objects.filter(action__startswith="switch.").exists()


def test_a_switch_on_a_tool_a_deploy_removed_can_still_be_released(runtime, login, token_client, operator):
    """Engaged on a tool that is no longer in the registry (the deploy renamed it) and on an
    intent no agent declares any more: the page lists them, the confirmation opens, and the
    page and the API release them. Engaging an unknown target is still refused, and
    releasing one never engaged says the target is unknown."""
    from agents.models import Agent
    from agents.services.switches import switch_engage
    from agents.tools.registry import REGISTRY

    support = Agent.objects.get(slug="support", is_active=True)
    declared = list(support.intents)
    Agent.objects.filter(pk=support.pk).update(intents=[*declared, "vip_escalation"])
    REGISTRY["retired_tool"] = REGISTRY["draft_reply"]
    try:
        switch_engage(actor=operator, scope="tool", target="retired_tool", reason="INC-9")
        switch_engage(actor=operator, scope="intent", target="vip_escalation", reason="INC-9")
    finally:
        del REGISTRY["retired_tool"]
        Agent.objects.filter(pk=support.pk).update(intents=declared)
    client = login(operator)
    page = client.get("/switches/").content.decode()
    assert 'data-switch="tool:retired_tool" data-engaged="1"' in page
    assert "retired_tool (no longer defined)" in page
    confirm = client.get("/switches/tool/retired_tool/confirm/")
    assert confirm.status_code == 200 and "Release <code>tool:retired_tool</code>" in confirm.content.decode()
    response = client.post("/switches/tool/retired_tool/flip/", {"engaged": "0", "reason": "gone"})
    assert response.status_code == 302
    assert not KillSwitch.objects.get(scope="tool").engaged
    page = client.get("/switches/").content.decode()
    assert 'data-switch="tool:retired_tool"' not in page  # gone from the catalogue once released

    api = token_client(operator)
    with_unknown = _put(api, "tool", "retired_tool", {"engaged": True, "reason": "again"})
    assert with_unknown.status_code == 422 and "Unknown tool" in with_unknown.json()["error"]["message"]
    never = _put(api, "tool", "never_was", {"engaged": False, "reason": "r"})
    assert never.status_code == 422 and "Unknown tool 'never_was'" in never.json()["error"]["message"]
    assert "vip_escalation (no longer defined)" in page
    assert _put(api, "intent", "vip_escalation", {"engaged": True, "reason": "x"}).status_code == 422
    assert _put(api, "intent", "vip_escalation", {"engaged": False, "reason": "ok"}).status_code == 200
    assert not KillSwitch.objects.filter(engaged=True).exists()
    released = list(AuditEvent.objects.filter(action="switch.released").values_list("object_id", flat=True))
    assert released == ["tool:retired_tool", "intent:vip_escalation"]
