"""Tools as data: registered and edited only through the services (validated, audited,
versioned), resolved per tenant, cached per process against the switches' version key,
and a breaker per downstream."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from agents import switches
from agents.llm.breaker import CircuitBreaker
from agents.tools import get_tool
from agents.tools.registry import ToolError, known_tool_names
from audit.models import AuditEvent
from audit.services import Actor
from console.errors import Conflict, InvalidInput, PermissionDenied
from integrations import resolver
from integrations.calls import breaker_for, call
from integrations.models import ToolDefinition, ToolVersion
from integrations.services import (
    mcp_server_register,
    tool_register,
    tool_version_activate,
    tool_version_create,
)
from tests.integrations.conftest import context_for, free_port

pytestmark = pytest.mark.django_db
SYSTEM = Actor.system("tests")
SCHEMA = {"type": "object", "properties": {"invoice_id": {"type": "string"}}, "required": ["invoice_id"]}
HTTP = {"method": "GET", "url": "https://billing.example.com/v1/invoices/{invoice_id}"}


def _register(tenant=None, name="lookup_invoice", **kw):
    return tool_register(
        actor=SYSTEM,
        tenant=tenant,
        name=name,
        description="Read an invoice.",
        parameters=SCHEMA,
        tier=kw.pop("tier", "read"),
        transport="http",
        http=HTTP,
        **kw,
    )


def test_every_edit_is_a_new_audited_version_and_the_runtime_sees_the_active_one(acme):
    tool = _register(acme)
    first = tool.active_version
    second = tool_version_create(
        actor=SYSTEM, tool=tool, description="Read one invoice by id.", tier="write_low", note="clearer"
    )
    tool.refresh_from_db()
    assert (first.version, second.version, tool.active_version_id) == (1, 2, second.pk)
    first.refresh_from_db()
    assert (first.description, first.tier) == ("Read an invoice.", "read")  # kept as it was
    resolved = get_tool("lookup_invoice", acme.pk)
    assert (resolved.description, resolved.tier) == ("Read one invoice by id.", "write_low")
    event = AuditEvent.objects.get(action="tool.version_created")
    assert event.payload["changes"] == {"description": "Read one invoice by id.", "tier": "write_low"}
    assert (event.payload["version"], event.payload["previous"], event.payload["note"]) == (2, 1, "clearer")
    assert AuditEvent.objects.filter(action="tool.registered", object_id=str(tool.pk)).exists()

    tool_version_activate(actor=SYSTEM, tool=tool, version=1)  # a rollback
    assert get_tool("lookup_invoice", acme.pk).tier == "read"
    assert AuditEvent.objects.get(action="tool.version_activated").payload == {
        "name": "lookup_invoice",
        "version": 1,
        "previous": 2,
    }
    # an edit that changes nothing stores nothing
    assert tool_version_create(actor=SYSTEM, tool=tool).version == 1


def test_a_tenant_sees_its_own_and_global_tools_only(acme, globex):
    _register(acme, name="acme_only")
    _register(None, name="everyone")
    assert get_tool("acme_only", acme.pk) is not None and get_tool("acme_only", globex.pk) is None
    assert get_tool("everyone", acme.pk) is not None and get_tool("everyone", globex.pk) is not None
    assert get_tool("everyone") is not None and get_tool("acme_only") is None
    assert {"acme_only", "everyone"} <= known_tool_names()


def test_names_never_shadow_code_tools_or_global_tools(acme, globex):
    with pytest.raises(Conflict, match="registered in code"):
        _register(acme, name="apply_credit")
    _register(None, name="shared_lookup")
    with pytest.raises(Conflict, match="never shadows"):
        _register(acme, name="shared_lookup")
    _register(acme, name="tenant_lookup")
    _register(globex, name="tenant_lookup")  # two tenants, one name each: fine
    with pytest.raises(Conflict, match="never shadows"):
        _register(None, name="tenant_lookup")
    with pytest.raises(Conflict, match="already exists"):
        _register(acme, name="tenant_lookup")
    with pytest.raises(InvalidInput, match="letters, digits"):
        _register(acme, name="bad name!")


def test_a_definition_is_validated_before_it_is_stored(acme, globex):
    with pytest.raises(InvalidInput, match="JSON Schema"):
        tool_register(
            actor=SYSTEM,
            tenant=acme,
            name="x",
            description="d",
            parameters={"type": 12},
            tier="read",
            transport="http",
            http=HTTP,
        )
    with pytest.raises(InvalidInput, match="tier"):
        _register(acme, name="y", tier="god_mode")
    server = mcp_server_register(actor=SYSTEM, tenant=globex, slug="theirs", url="http://127.0.0.1:9/mcp")
    with pytest.raises(InvalidInput, match="own tenant's servers"):
        tool_register(
            actor=SYSTEM,
            tenant=acme,
            name="z",
            description="d",
            parameters=SCHEMA,
            tier="read",
            transport="mcp",
            server=server,
            remote_name="z",
        )
    with pytest.raises(InvalidInput, match="registered in code"):
        tool_register(
            actor=SYSTEM,
            name="not_in_code",
            description="d",
            parameters=SCHEMA,
            tier="read",
            transport="python",
        )
    assert not ToolDefinition.objects.filter(name__in=["x", "y", "z", "not_in_code"]).exists()


def test_only_administrators_change_tools(acme, lead, admin):
    with pytest.raises(PermissionDenied):
        tool_register(
            actor=lead,
            tenant=acme,
            name="by_lead",
            description="d",
            parameters=SCHEMA,
            tier="read",
            transport="http",
            http=HTTP,
        )
    assert tool_register(
        actor=admin,
        tenant=acme,
        name="by_admin",
        description="d",
        parameters=SCHEMA,
        tier="read",
        transport="http",
        http=HTTP,
    ).pk


def test_an_operator_can_switch_off_a_data_tool(acme, operator, token_client, login):
    _register(acme, name="lookup_invoice")
    assert "lookup_invoice (registered tool)" in login(operator).get("/switches/").content.decode()
    response = token_client(operator).put(
        "/api/v1/switches/tool/lookup_invoice",
        {"engaged": True, "reason": "incident"},
        content_type="application/json",
    )
    assert response.status_code == 200 and response.json()["engaged"] is True


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="the trigger is PostgreSQL's")
def test_a_stored_version_cannot_be_changed_in_the_database(acme):
    from django.db import DatabaseError, transaction

    version = _register(acme).active_version
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE integrations_toolversion SET tier = 'read' WHERE id = %s", [version.pk])
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM integrations_toolversion WHERE id = %s", [version.pk])


def test_resolution_is_cached_per_process_until_the_version_key_moves(
    acme, monkeypatch, django_capture_on_commit_callbacks
):
    tool = _register(acme)
    resolver.invalidate_local()
    # as in a worker between steps (outside a transaction): the cache is used
    monkeypatch.setattr(resolver, "connection", type("C", (), {"in_atomic_block": False})())
    with CaptureQueriesContext(connection) as first:
        assert get_tool("lookup_invoice", acme.pk).tier == "read"
    with CaptureQueriesContext(connection) as again:
        for _ in range(20):
            assert get_tool("lookup_invoice", acme.pk) is not None
    assert len(first) == 1 and len(again) == 0
    with django_capture_on_commit_callbacks(execute=True):
        tool_version_create(actor=SYSTEM, tool=tool, tier="write_low")  # bumps the key on commit
    assert get_tool("lookup_invoice", acme.pk).tier == "write_low"
    # a key that cannot be read: the database every time (correct, not cheap)
    monkeypatch.setattr(
        switches, "read_version", lambda: (_ for _ in ()).throw(switches.SwitchStoreUnavailable())
    )
    with CaptureQueriesContext(connection) as degraded:
        get_tool("lookup_invoice", acme.pk)
        get_tool("lookup_invoice", acme.pk)
    assert len(degraded) == 2


def test_code_tools_never_touch_the_database(acme):
    with CaptureQueriesContext(connection) as queries:
        for _ in range(10):
            assert get_tool("lookup_subscription", acme.pk) is not None
    assert len(queries) == 0


def test_the_breaker_opens_after_repeated_downstream_failures(acme):
    tool = tool_register(
        actor=SYSTEM,
        tenant=acme,
        name="dead_api",
        description="d",
        parameters=SCHEMA,
        tier="read",
        transport="http",
        http={"method": "GET", "url": f"http://127.0.0.1:{free_port()}/{{invoice_id}}"},
    )
    definition = get_tool("dead_api", acme.pk).func.args[0]
    breaker = breaker_for(definition)
    assert isinstance(breaker, CircuitBreaker) and breaker.state() == "closed"
    codes = []
    for _ in range(breaker.failures + 1):
        with pytest.raises(ToolError) as raised:
            call(definition, context_for(acme, "dead_api"), {"invoice_id": "1"})
        codes.append(raised.value.code)
    assert codes == ["network"] * breaker.failures + ["circuit_open"]
    assert raised.value.failure_class == "tool" and not raised.value.retryable
    breaker.reset()
    assert ToolVersion.objects.filter(tool=tool).count() == 1


def test_import_command_registers_the_servers_tools_for_review(runtime, acme, billing_mcp, capsys):
    mcp_server_register(actor=SYSTEM, tenant=acme, slug="billing", url=billing_mcp.url)
    call_command("import_mcp_tools", "billing", "--tenant", "acme", "--prefix", "billing_")
    out = capsys.readouterr().out
    assert "created   billing_refund_charge" in out and "need approval" in out
    version = ToolDefinition.objects.get(tenant=acme, name="billing_refund_charge").active_version
    assert (version.tier, version.needs_review, version.remote_name, version.idempotent) == (
        "write_high",
        True,
        "refund_charge",
        False,
    )
    assert version.parameters["required"] == ["charge_id", "amount_cents", "reason"]
    call_command("import_mcp_tools", "billing", "--tenant", "acme", "--prefix", "billing_")
    assert "unchanged billing_refund_charge" in capsys.readouterr().out
    imports = AuditEvent.objects.filter(action="mcp_server.tools_imported").values_list("payload", flat=True)
    assert [sorted(p["unchanged"]) for p in imports if p["unchanged"]] == [
        ["billing_echo_auth", "billing_get_invoice", "billing_refund_charge"]
    ]
