"""The ``http`` transport against a real HTTP server (a stdlib server in a thread): URL
templates escape their arguments and cannot move the host, the response mapping bounds
what the model sees, the idempotency key and the tenant's credential (header or query)
go downstream, and each kind of failure lands in its failure class."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from agents.models import RunStatus, ToolInvocation
from agents.tools import get_tool
from agents.tools.registry import ToolError
from approvals.services import approval_decide
from audit.services import Actor
from console.errors import InvalidInput
from integrations import http_transport
from integrations.calls import call
from integrations.services import credential_store, tool_register
from tests.integrations.conftest import context_for, free_port

pytestmark = pytest.mark.django_db
SYSTEM = Actor.system("tests")
INVOICE_SCHEMA = {
    "type": "object",
    "properties": {"invoice_id": {"type": "string"}},
    "required": ["invoice_id"],
    "additionalProperties": False,
}


def register_invoice_tool(
    tenant, base_url: str, *, name: str = "api_invoice", scope: str = "billing-api", **kw
):
    """An HTTP read of the billing API's invoices for ``tenant``."""
    kw.setdefault("http", {"method": "GET", "url": base_url + "/v1/invoices/{invoice_id}"})
    return tool_register(
        actor=SYSTEM,
        tenant=tenant,
        name=name,
        description="Read an invoice from the billing API.",
        parameters=INVOICE_SCHEMA,
        tier="read",
        transport="http",
        credential_scope=scope,
        side_effects=False,
        **kw,
    )


def test_url_placeholders_are_escaped_as_one_path_segment():
    config = {"method": "GET", "url": "https://api.example.com/v1/invoices/{invoice_id}/lines"}
    for value, segment in [
        ("in_1", "in_1"),
        ("a/b?c#d", "a%2Fb%3Fc%23d"),
        ("..", "%2E%2E"),
        (".", "%2E"),
        ("x y", "x%20y"),
        (7, "7"),
    ]:
        method, url, params, body = http_transport.build(config, {"invoice_id": value})
        assert url == f"https://api.example.com/v1/invoices/{segment}/lines", value
        assert (method, params, body) == ("GET", {}, None)


def test_query_and_body_take_the_arguments_not_used_in_the_path():
    config = {
        "method": "POST",
        "url": "https://api.example.com/v1/customers/{customer}/refunds",
        "query": ["dry_run"],
    }
    _method, url, params, body = http_transport.build(
        config, {"customer": "C-1", "dry_run": True, "amount_cents": 400, "note": "dup"}
    )
    assert url.endswith("/customers/C-1/refunds") and params == {"dry_run": "true"}
    assert body == {"amount_cents": 400, "note": "dup"}


def test_a_configuration_that_could_move_the_call_or_hold_a_secret_is_refused():
    problems = http_transport.config_problems(
        {
            "method": "GET",
            "url": "https://{host}.example.com/x/{a.b}/{missing}",
            "headers": {"Authorization": "x"},
            "query": ["nope"],
        },
        {"type": "object", "properties": {"host": {"type": "string"}}, "required": ["host"]},
    )
    text = "; ".join(problems)
    assert "http/url" in text  # the host part may not hold a placeholder
    problems = http_transport.config_problems(
        {
            "method": "GET",
            "url": "https://api.example.com/{a.b}/{missing}",
            "headers": {"Authorization": "x"},
            "query": ["nope"],
        },
        INVOICE_SCHEMA,
    )
    text = "; ".join(problems)
    assert "{a.b} must be a plain argument name" in text
    assert "{missing} must be a required argument" in text
    assert "'Authorization' looks like a secret" in text
    assert "'nope' is not an argument" in text


def test_response_fields_pick_what_the_model_sees():
    payload = {"data": {"amount": 4000, "customer": {"code": "C-1"}, "lines": [{"sku": "pro"}]}}
    fields = {
        "amount": "data.amount",
        "customer": "data.customer.code",
        "sku": "data.lines.0.sku",
        "gone": "data.nope.deeper",
    }
    assert http_transport.shape({"response_fields": fields}, payload) == {
        "amount": 4000,
        "customer": "C-1",
        "sku": "pro",
        "gone": None,
    }
    assert http_transport.shape({}, [1, 2]) == {"result": [1, 2]}


@pytest.fixture
def invoice_tool(runtime, acme, billing_api, billing_secret):
    credential_store(actor=SYSTEM, tenant=acme, scope="billing-api", name="X-Api-Key", secret=billing_secret)
    return register_invoice_tool(
        acme,
        billing_api.url,
        idempotent=True,
        max_attempts=2,
        timeout_seconds=5,
        http={
            "method": "GET",
            "url": billing_api.url + "/v1/invoices/{invoice_id}",
            "response_fields": {"amount_cents": "data.amount", "customer": "data.customer.code"},
        },
    )


def test_an_http_tool_runs_with_its_credential_key_and_mapped_result(
    invoice_tool, billing_api, billing_secret, fake_model, start_run, step, acme
):
    fake_model(acme, ["api_invoice"], [("api_invoice", {"invoice_id": "in/1"})])
    run = step(start_run("What is on invoice in/1?"))
    assert run.status == RunStatus.SUCCEEDED, run.terminal_reason
    result = run.steps.get(kind="tool", name="api_invoice").output["result"]
    assert result == {"amount_cents": 4000, "customer": "C-1001"}
    (seen,) = billing_api.calls()
    invocation = ToolInvocation.objects.get(run=run)
    assert seen["path"] == "/v1/invoices/in%2F1" and seen["authorized"]
    assert (seen["idempotency_key"], seen["trace_id"]) == (invocation.idempotency_key, run.trace_id)


def test_a_credential_in_the_query_string_never_reaches_the_logs(
    runtime, acme, billing_api, billing_secret, fake_model, start_run, step, caplog
):
    caplog.set_level(logging.DEBUG)
    credential_store(
        actor=SYSTEM, tenant=acme, scope="billing-q", placement="query", name="api_key", secret=billing_secret
    )
    register_invoice_tool(acme, billing_api.url, name="api_invoice_q", scope="billing-q")
    fake_model(acme, ["api_invoice_q"], [("api_invoice_q", {"invoice_id": "in_2"})])
    run = step(start_run("What is on invoice in_2?"))
    assert run.status == RunStatus.SUCCEEDED, run.terminal_reason
    (seen,) = billing_api.calls()
    assert seen["authorized"] and seen["query"] == {"api_key": billing_secret}
    assert "HTTP Request: GET" in caplog.text and "api_key=[REDACTED]" in caplog.text
    assert billing_secret not in caplog.text


def test_an_http_write_runs_once_after_approval(
    runtime, acme, billing_api, billing_secret, fake_model, start_run, step, pending_request, admin
):
    credential_store(actor=SYSTEM, tenant=acme, scope="billing-api", name="X-Api-Key", secret=billing_secret)
    tool_register(
        actor=SYSTEM,
        tenant=acme,
        name="api_refund",
        description="Refund a charge.",
        parameters={
            "type": "object",
            "properties": {"charge_id": {"type": "string"}, "amount_cents": {"type": "integer"}},
            "required": ["charge_id", "amount_cents"],
        },
        tier="write_high",
        transport="http",
        credential_scope="billing-api",
        idempotent=True,
        http={"method": "POST", "url": billing_api.url + "/v1/refunds"},
    )
    fake_model(acme, ["api_refund"], [("api_refund", {"charge_id": "ch_9", "amount_cents": 500})])
    run = step(start_run("Refund ch_9"))
    assert run.status == RunStatus.WAITING_APPROVAL and billing_api.calls() == []
    approval_decide(actor=admin, request=pending_request(run), decision="approve", reason="ok")
    run = step(run)
    assert run.status == RunStatus.SUCCEEDED, run.terminal_reason
    (seen,) = billing_api.calls()
    assert seen["executed"] and seen["body"] == {"charge_id": "ch_9", "amount_cents": 500}
    assert seen["idempotency_key"] == ToolInvocation.objects.get(run=run).idempotency_key


@pytest.mark.parametrize(
    ("path", "failure_class", "code", "attempts"),
    [
        ("/v1/invoices/in_missing", "data", "http_404", 1),  # the arguments: back to the model
        ("/v1/flaky", "tool", "upstream_error", 2),  # 503: retried, then a person takes over
    ],
)
def test_http_failures_land_in_their_class(
    invoice_tool, billing_api, acme, path, failure_class, code, attempts
):
    definition = get_tool("api_invoice", acme.pk).func.args[0]
    definition = dataclasses.replace(definition, http={"method": "GET", "url": billing_api.url + path})
    with pytest.raises(ToolError) as raised:
        call(definition, context_for(acme, "api_invoice"), {"invoice_id": "x"})
    assert (raised.value.failure_class, raised.value.code) == (failure_class, code)
    assert raised.value.retryable == (attempts > 1)


def test_an_unreachable_endpoint_is_a_network_failure(invoice_tool, acme):
    definition = get_tool("api_invoice", acme.pk).func.args[0]
    definition = dataclasses.replace(
        definition, http={"method": "GET", "url": f"http://127.0.0.1:{free_port()}/x"}
    )
    with pytest.raises(ToolError) as raised:
        call(definition, context_for(acme, "api_invoice"), {"invoice_id": "x"})
    assert (raised.value.failure_class, raised.value.retryable) == ("network", True)


def test_a_refused_credential_is_a_logic_failure_and_the_run_fails(
    runtime, acme, billing_api, fake_model, start_run, step
):
    credential_store(
        actor=SYSTEM, tenant=acme, scope="billing-api", name="X-Api-Key", secret="wrong-key-123456"
    )
    register_invoice_tool(acme, billing_api.url)
    fake_model(acme, ["api_invoice"], [("api_invoice", {"invoice_id": "in_1"})])
    run = step(start_run("What is on invoice in_1?"))
    assert run.status == RunStatus.FAILED
    assert "refused the credential" in run.terminal_reason


def test_a_tool_without_its_credential_fails_closed(runtime, acme, billing_api, fake_model, start_run, step):
    register_invoice_tool(acme, billing_api.url, scope="nobody-has-it")
    fake_model(acme, ["api_invoice"], [("api_invoice", {"invoice_id": "in_1"})])
    run = step(start_run("What is on invoice in_1?"))
    assert run.status == RunStatus.FAILED and "needs a credential" in run.terminal_reason
    assert billing_api.calls() == []


def test_an_http_tool_with_a_host_placeholder_cannot_be_registered(runtime, acme):
    with pytest.raises(InvalidInput, match="http/url"):
        tool_register(
            actor=SYSTEM,
            tenant=acme,
            name="api_any",
            description="anything",
            parameters={"type": "object", "properties": {"host": {"type": "string"}}, "required": ["host"]},
            tier="read",
            transport="http",
            http={"method": "GET", "url": "https://{host}/x"},
        )
