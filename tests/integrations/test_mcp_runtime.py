"""Our own agents call MCP tools through the runtime's whole path: a real MCP server (the
demo billing server, streamable HTTP and stdio), a model that proposes the calls, the
policy, the approval queue, kill switches, the idempotency key passed downstream, the
trace and the audit log -- and the tenant's credential injected downstream, never seen by
the model, the trace, the audit log or the logs."""

from __future__ import annotations

import json
import logging

import pytest

from agents import broker, policy
from agents.models import AgentRun, InvocationState, Policy, RunStatus, Step, ToolInvocation
from agents.tools import get_tool
from agents.tools.registry import ToolError
from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from audit.models import AuditEvent
from audit.services import Actor
from integrations import mcp_client
from integrations.definitions import ServerSpec
from integrations.models import Credential, ToolDefinition
from integrations.services import (
    credential_store,
    mcp_server_register,
    mcp_tools_import,
    tool_version_create,
)

pytestmark = pytest.mark.django_db

SYSTEM = Actor.system("tests")
REFUND = {"charge_id": "ch_1b", "amount_cents": 4000, "reason": "duplicate charge"}


def _review(tenant, name, **changes):
    tool = ToolDefinition.objects.get(tenant=tenant, name=name)
    return tool_version_create(actor=SYSTEM, tool=tool, needs_review=False, note="reviewed", **changes)


def _imported(acme, billing_mcp, billing_secret):
    """acme's billing server and its key (a Bearer header), its tools imported (unreviewed)."""
    server = mcp_server_register(actor=SYSTEM, tenant=acme, slug="billing", url=billing_mcp.url)
    credential_store(
        actor=SYSTEM,
        tenant=acme,
        scope="billing",
        name="Authorization",
        prefix="Bearer ",
        secret=billing_secret,
    )
    return server, mcp_tools_import(actor=SYSTEM, server=server, credential_scope="billing")


@pytest.fixture
def billing_tools(runtime, acme, billing_mcp, billing_secret):
    """acme's billing server, its key, its tools imported and reviewed by an admin:
    get_invoice and echo_auth are reads, refund_charge a write_high that dedupes by key."""
    server, report = _imported(acme, billing_mcp, billing_secret)
    assert sorted(report.created) == ["echo_auth", "get_invoice", "refund_charge"]
    _review(acme, "get_invoice", tier="read", side_effects=False, idempotent=True)
    _review(acme, "echo_auth", tier="read", side_effects=False, idempotent=True)
    _review(acme, "refund_charge", idempotent=True)  # stays write_high: the policy wants a reviewer
    return server


def _tool_step(run, name) -> Step:
    return run.steps.filter(kind="tool", name=name).order_by("-seq").first()


def test_an_allowed_mcp_read_runs_and_its_result_is_recorded(
    billing_tools, billing_mcp, fake_model, start_run, step, acme
):
    fake_model(acme, ["get_invoice"], [("get_invoice", {"invoice_id": "in_1"})])
    run = step(start_run("What is on invoice in_1?"))
    assert run.status == RunStatus.SUCCEEDED, run.terminal_reason
    recorded = _tool_step(run, "get_invoice")
    assert recorded.ok and recorded.policy_decision == "allow"
    assert recorded.input["tool_version"] == 2  # imported as v1, reviewed into v2
    assert recorded.output["result"]["amount_cents"] == 4000
    invocation = ToolInvocation.objects.get(run=run, tool="get_invoice")
    assert invocation.state == InvocationState.SUCCEEDED
    (seen,) = billing_mcp.calls("get_invoice")
    assert seen["authorized"] and seen["arguments"] == {"invoice_id": "in_1"}
    assert (seen["idempotency_key"], seen["trace_id"]) == (invocation.idempotency_key, run.trace_id)
    executed = AuditEvent.objects.get(action="tool.executed", trace_id=run.trace_id)
    assert executed.payload["tool_version"] == 2


def test_a_write_parks_for_approval_then_runs_exactly_once_with_its_key(
    billing_tools, billing_mcp, fake_model, start_run, step, pending_request, admin
):
    fake_model(billing_tools.tenant, ["refund_charge"], [("refund_charge", REFUND)])
    run = step(start_run("Refund the duplicate charge ch_1b"))
    assert run.status == RunStatus.WAITING_APPROVAL
    request = pending_request(run)
    assert (request.queue.slug, request.tool, request.risk_tier) == (
        "escalations",
        "refund_charge",
        "write_high",
    )
    assert billing_mcp.calls("refund_charge") == []  # nothing downstream before a person decides

    approval_decide(actor=admin, request=request, decision="approve", reason="duplicate confirmed")
    run = step(run)
    assert run.status == RunStatus.SUCCEEDED, run.terminal_reason
    invocation = ToolInvocation.objects.get(run=run, tool="refund_charge")
    (call,) = billing_mcp.calls("refund_charge")
    assert call["executed"] and call["authorized"] and call["idempotency_key"] == invocation.idempotency_key

    # the broker replays the stored result; a retry that reaches the server is deduped there
    again = broker.broker_execute(
        run=run, invocation=invocation, tool=get_tool("refund_charge", run.tenant_id), lease_token="other"
    )
    assert again.ok and again.replayed
    ctx_run = AgentRun.objects.select_related("tenant").get(pk=run.pk)
    # as if the worker had died after the call, before recording its outcome
    ToolInvocation.objects.filter(pk=invocation.pk).update(state=InvocationState.APPROVED)
    invocation.refresh_from_db()
    retried = broker.broker_execute(
        run=ctx_run, invocation=invocation, tool=get_tool("refund_charge", run.tenant_id), lease_token="crash"
    )
    assert retried.ok and retried.result["replayed"] is True
    assert [c["executed"] for c in billing_mcp.calls("refund_charge")] == [True, False]


def test_a_kill_switch_engaged_after_approval_refuses_the_mcp_call(
    billing_tools, billing_mcp, fake_model, start_run, step, pending_request, admin, operator, token_client
):
    fake_model(billing_tools.tenant, ["refund_charge"], [("refund_charge", REFUND)])
    run = step(start_run("Refund the duplicate charge ch_1b"))
    approval_decide(actor=admin, request=pending_request(run), decision="approve", reason="ok")
    # the operator's switch, as the console and the API flip it
    response = token_client(operator).put(
        "/api/v1/switches/tool/refund_charge",
        {"engaged": True, "reason": "billing API incident"},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    run = step(run)
    assert run.status == RunStatus.KILLED
    assert "billing API incident" in run.terminal_reason
    assert billing_mcp.calls("refund_charge") == []
    assert ToolInvocation.objects.get(run=run).state == InvocationState.REFUSED


def test_an_unreviewed_imported_tool_needs_approval_even_when_the_policy_allows_its_tier(
    runtime, acme, billing_mcp, billing_secret, fake_model, start_run, step, pending_request
):
    _imported(acme, billing_mcp, billing_secret)
    tool = get_tool("get_invoice", acme.pk)
    assert tool.tier == "write_high" and tool.side_effects and not tool.idempotent
    assert "not been reviewed" in tool.forced_approval
    # the default policy already wants a reviewer for write_high...
    ctx = policy.ActionContext(tool="get_invoice", tier=tool.tier, arguments={}, tenant="acme", intent="x")
    assert policy.evaluate(policy.DEFAULT_RULES, 1, ctx).effect == policy.REQUIRE_APPROVAL
    # ...and a policy that allows every tier does not let an unreviewed tool through
    lenient = {"tiers": {"read": "allow", "write_low": "allow", "write_high": "allow"}, "rules": []}
    Policy.objects.update(is_active=False)
    Policy.objects.create(version=Policy.objects.count() + 100, rules=lenient, is_active=True)
    fake_model(acme, ["get_invoice"], [("get_invoice", {"invoice_id": "in_1"})])
    run = step(start_run("What is on invoice in_1?"))
    assert run.status == RunStatus.WAITING_APPROVAL
    assert "not been reviewed" in _tool_step(run, "get_invoice").output["decision"]["reason"]
    assert pending_request(run).tool == "get_invoice"
    assert billing_mcp.calls() == []


def test_the_credential_reaches_the_downstream_and_nothing_else(
    billing_tools, billing_mcp, billing_secret, fake_model, start_run, step, acme, caplog
):
    caplog.set_level(logging.DEBUG)
    fake_model(
        acme, ["get_invoice", "echo_auth"], [("get_invoice", {"invoice_id": "in_1"}), ("echo_auth", {})]
    )
    run = step(start_run("What is on invoice in_1?"))
    assert run.status == RunStatus.SUCCEEDED, run.terminal_reason
    assert all(c["authorized"] for c in billing_mcp.calls())
    assert [c["tool"] for c in billing_mcp.calls()] == ["get_invoice", "echo_auth"]
    # a careless downstream echoed it back: the broker masked it before anything kept it
    assert _tool_step(run, "echo_auth").output["result"] == {"you_sent": "[REDACTED]"}

    run.refresh_from_db()
    kept = [
        *[(s.input, s.output) for s in Step.objects.all()],
        *[(i.arguments, i.result, i.error) for i in ToolInvocation.objects.all()],
        *[e.payload for e in AuditEvent.objects.all()],
        *[(r.state, r.result, r.input) for r in AgentRun.objects.all()],
        *[(a.arguments, a.evidence) for a in ApprovalRequest.objects.all()],
    ]
    text = json.dumps(kept, default=str)
    assert billing_secret not in text
    assert billing_secret not in caplog.text
    assert billing_secret not in json.dumps(list(Credential.objects.values()), default=str)
    assert "[REDACTED]" in text


def test_a_globex_run_never_resolves_acmes_tool(
    billing_tools, billing_mcp, fake_model, start_run, step, acme, globex, svc_globex
):
    assert get_tool("get_invoice", acme.pk) is not None
    assert get_tool("get_invoice", globex.pk) is None
    assert get_tool("get_invoice") is None  # no tenant: global tools only
    model = fake_model(globex, ["get_invoice"], [("get_invoice", {"invoice_id": "in_1"})])
    run = step(start_run("What is on invoice in_1?", actor=svc_globex, tenant="globex"))
    assert model.offered[0] == []  # the model of a globex run is never even told of it
    refused = _tool_step(run, "get_invoice")
    assert not refused.ok and refused.output["error"]["code"] == "invalid_arguments"
    assert "not available" in refused.output["error"]["message"]
    assert billing_mcp.calls() == []
    assert not ToolInvocation.objects.filter(run=run).exists()


def test_an_mcp_tool_error_goes_back_to_the_model_as_data(
    billing_tools, billing_mcp, fake_model, start_run, step, acme
):
    fake_model(acme, ["get_invoice"], [("get_invoice", {"invoice_id": "in_missing"})])
    run = step(start_run("What is on invoice in_missing?"))
    failed = _tool_step(run, "get_invoice")
    assert not failed.ok and failed.failure_class == "data"
    assert "no invoice in_missing" in failed.output["error"]["message"]
    assert run.state["observations"][0]["error"]["code"] == "tool_error"
    assert run.status == RunStatus.SUCCEEDED  # the model answered after reading the error


def test_an_unreachable_mcp_server_is_a_network_failure_retried_then_handed_off(
    runtime, acme, fake_model, start_run, step
):
    from tests.integrations.conftest import free_port

    server = mcp_server_register(
        actor=SYSTEM, tenant=acme, slug="down", url=f"http://127.0.0.1:{free_port()}/mcp", timeout_seconds=2
    )
    from integrations.services import tool_register

    tool_register(
        actor=SYSTEM,
        tenant=acme,
        name="down_lookup",
        description="a lookup on a dead server",
        parameters={"type": "object", "properties": {}},
        tier="read",
        transport="mcp",
        server=server,
        remote_name="lookup",
        side_effects=False,
        idempotent=True,
        max_attempts=2,
    )
    fake_model(acme, ["down_lookup"], [("down_lookup", {})])
    run = step(start_run("Look it up"))
    assert run.status == RunStatus.HANDED_OFF
    failed = _tool_step(run, "down_lookup")
    assert failed.failure_class == "network" and failed.output["attempts"] == 2


def test_a_stdio_mcp_server_gets_its_credential_in_its_environment(
    runtime, acme, billing_stdio, billing_secret, fake_model, start_run, step
):
    server = mcp_server_register(
        actor=SYSTEM,
        tenant=acme,
        slug="billing-stdio",
        transport="stdio",
        command=billing_stdio.command,
        timeout_seconds=30,
    )
    credential_store(
        actor=SYSTEM,
        tenant=acme,
        scope="billing-stdio",
        placement="env",
        name="BILLING_API_KEY",
        secret=billing_secret,
    )
    report = mcp_tools_import(actor=SYSTEM, server=server, prefix="stdio_", credential_scope="billing-stdio")
    assert "stdio_get_invoice" in report.created
    _review(acme, "stdio_get_invoice", tier="read", side_effects=False, idempotent=True, timeout_seconds=30)
    fake_model(acme, ["stdio_get_invoice"], [("stdio_get_invoice", {"invoice_id": "in_7"})])
    run = step(start_run("What is on invoice in_7?"))
    assert run.status == RunStatus.SUCCEEDED, run.terminal_reason
    assert _tool_step(run, "stdio_get_invoice").output["result"]["invoice_id"] == "in_7"
    (seen,) = billing_stdio.calls("get_invoice")
    assert seen["authorized"] and seen["idempotency_key"].startswith("idk_")


def test_an_mcp_server_refusing_the_credential_is_a_logic_failure(billing_api):
    # the SDK folds HTTP errors into a generic JSON-RPC error; the status still decides
    server = ServerSpec(id="x", slug="api", transport="streamable_http", url=billing_api.url + "/mcp")
    with pytest.raises(ToolError) as raised:
        mcp_client.call_tool(server, "t", {}, injection=None, idempotency_key="k", trace_id="t", timeout=3)
    assert (raised.value.failure_class, raised.value.code) == ("logic", "credential_refused")


def test_a_reviewer_may_edit_an_mcp_call_and_the_edited_call_runs(
    billing_tools, billing_mcp, fake_model, start_run, step, pending_request, admin
):
    fake_model(billing_tools.tenant, ["refund_charge"], [("refund_charge", REFUND)])
    run = step(start_run("Refund the duplicate charge ch_1b"))
    request = pending_request(run)
    approval_decide(
        actor=admin,
        request=request,
        decision="approve",
        reason="half of it",
        arguments={**REFUND, "amount_cents": 2000},
    )
    run = step(run)
    assert run.status == RunStatus.SUCCEEDED, run.terminal_reason
    (call,) = billing_mcp.calls("refund_charge")
    assert call["executed"] and call["arguments"]["amount_cents"] == 2000
    assert call["idempotency_key"] == ToolInvocation.objects.get(run=run).idempotency_key
