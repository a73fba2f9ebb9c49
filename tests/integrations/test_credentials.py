"""Downstream credentials: encrypted at rest with Fernet, rotated with MultiFernet and a
command, never audited, never shown back by the admin, which only administrators open."""

from __future__ import annotations

import json

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.test import override_settings

from audit.models import AuditEvent
from audit.services import Actor
from integrations import crypto
from integrations.models import Credential, McpServer, ToolDefinition
from integrations.services import credential_store

pytestmark = pytest.mark.django_db
SYSTEM = Actor.system("tests")
SECRET = "bk_" + "9" * 8 + "-a-secret-nobody-should-read"


def test_a_credential_is_stored_encrypted_and_never_audited(acme):
    row = credential_store(
        actor=SYSTEM, tenant=acme, scope="billing", name="Authorization", prefix="Bearer ", secret=SECRET
    )
    row.refresh_from_db()
    assert SECRET not in row.ciphertext and row.ciphertext.startswith("gAAAA")  # a Fernet token
    assert crypto.decrypt(row.ciphertext) == SECRET
    event = AuditEvent.objects.get(action="credential.stored")
    assert event.payload == {
        "scope": "billing",
        "tool": None,
        "placement": "header",
        "name": "Authorization",
        "replaced": False,
    }
    again = credential_store(
        actor=SYSTEM, tenant=acme, scope="billing", name="Authorization", secret="new-one"
    )
    assert again.pk == row.pk and again.rotated_at is not None
    assert SECRET not in json.dumps(list(AuditEvent.objects.values_list("payload", flat=True)))


def test_key_rotation_reencrypts_with_the_newest_key(acme, settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.CREDENTIALS_KEYS = [old]
    row = credential_store(actor=SYSTEM, tenant=acme, scope="billing", name="X-Api-Key", secret=SECRET)
    settings.CREDENTIALS_KEYS = [new, old]  # the new key in front: both decrypt
    assert crypto.decrypt(Credential.objects.get(pk=row.pk).ciphertext) == SECRET
    call_command("credentials_reencrypt")
    settings.CREDENTIALS_KEYS = [new]  # the old key dropped
    assert crypto.decrypt(Credential.objects.get(pk=row.pk).ciphertext) == SECRET
    assert AuditEvent.objects.get(action="credential.reencrypted").payload == {"rows": 1}
    with override_settings(CREDENTIALS_KEYS=[old]), pytest.raises(crypto.CredentialUnreadable):
        crypto.decrypt(Credential.objects.get(pk=row.pk).ciphertext)


def test_a_malformed_key_setting_stops_the_app_without_echoing_it(monkeypatch):
    from console import settings as project_settings

    monkeypatch.setenv("CREDENTIALS_KEYS", "not-a-fernet-key-at-all")
    with pytest.raises(ImproperlyConfigured) as raised:
        project_settings._fernet_keys("CREDENTIALS_KEYS")
    assert "key #1 is not a Fernet key" in str(raised.value) and "not-a-fernet" not in str(raised.value)
    good = Fernet.generate_key().decode()
    monkeypatch.setenv("CREDENTIALS_KEYS", f"{good}, {Fernet.generate_key().decode()}")
    assert project_settings._fernet_keys("CREDENTIALS_KEYS")[0] == good


def test_a_credential_can_belong_to_one_tool_of_the_tenant_only(acme, globex):
    from console.errors import InvalidInput
    from integrations.services import tool_register

    theirs = tool_register(
        actor=SYSTEM,
        tenant=globex,
        name="their_tool",
        description="d",
        parameters={"type": "object"},
        tier="read",
        transport="http",
        http={"method": "GET", "url": "https://api.example.com/x"},
    )
    with pytest.raises(InvalidInput, match="another tenant's tool"):
        credential_store(actor=SYSTEM, tenant=acme, scope="billing", name="X-Key", secret=SECRET, tool=theirs)


def test_the_admin_stores_a_secret_and_never_shows_it_back(login, admin, acme):
    client = login(admin)
    response = client.post(
        "/admin/integrations/credential/add/",
        {
            "tenant": acme.pk,
            "scope": "billing",
            "tool": "",
            "placement": "header",
            "name": "X-Api-Key",
            "prefix": "",
            "secret": SECRET,
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    row = Credential.objects.get(tenant=acme, scope="billing")
    assert crypto.decrypt(row.ciphertext) == SECRET
    page = client.get(f"/admin/integrations/credential/{row.pk}/change/").content.decode()
    assert SECRET not in page and row.ciphertext not in page
    # a change without the secret is refused (it is never read back into the form)
    response = client.post(
        f"/admin/integrations/credential/{row.pk}/change/",
        {
            "tenant": acme.pk,
            "scope": "billing",
            "tool": "",
            "placement": "header",
            "name": "X-Other",
            "prefix": "",
            "secret": "",
        },
    )
    assert response.status_code == 200 and "Type the secret" in response.content.decode()
    assert Credential.objects.get(pk=row.pk).name == "X-Api-Key"


def test_the_admin_registers_and_edits_a_tool_through_the_services(login, admin, acme):
    client = login(admin)
    form = {
        "tenant": acme.pk,
        "name": "api_invoice",
        "description": "Read an invoice.",
        "parameters": json.dumps(
            {"type": "object", "properties": {"invoice_id": {"type": "string"}}, "required": ["invoice_id"]}
        ),
        "tier": "read",
        "transport": "http",
        "credential_scope": "billing",
        "http": json.dumps({"method": "GET", "url": "https://api.example.com/v1/invoices/{invoice_id}"}),
        "server": "",
        "remote_name": "",
        "timeout_seconds": "10",
        "max_attempts": "3",
        "max_result_chars": "8000",
        "enabled": "on",
        "side_effects": "",
        "note": "first",
        "versions-TOTAL_FORMS": "0",
        "versions-INITIAL_FORMS": "0",
    }
    response = client.post("/admin/integrations/tooldefinition/add/", form)
    assert response.status_code == 302, response.content.decode()[:3000]
    tool = ToolDefinition.objects.get(name="api_invoice")
    # an invalid edit is a form error and stores nothing
    bad = {**form, "http": json.dumps({"method": "GET", "url": "https://{invoice_id}.example.com/"})}
    response = client.post(f"/admin/integrations/tooldefinition/{tool.pk}/change/", bad)
    assert response.status_code == 200 and "http/url" in response.content.decode()
    assert tool.versions.count() == 1
    response = client.post(
        f"/admin/integrations/tooldefinition/{tool.pk}/change/",
        {**form, "tier": "write_low", "note": "it writes"},
    )
    assert response.status_code == 302
    assert [v.tier for v in tool.versions.order_by("version")] == ["read", "write_low"]
    assert AuditEvent.objects.filter(action="tool.version_created", object_id=str(tool.pk)).exists()


@pytest.mark.parametrize("persona", ["operator", "lead", "auditor", "outsider"])
def test_only_administrators_open_the_integrations_admin(login, seeded, persona):
    client = login(seeded["users"][persona])
    for page in ("credential", "tooldefinition", "mcpserver"):
        response = client.get(f"/admin/integrations/{page}/")
        assert response.status_code in (302, 403), (persona, page, response.status_code)


def test_the_admin_registers_an_mcp_server_and_imports_its_tools(login, admin, acme, billing_mcp):
    client = login(admin)
    for page in ("mcpserver", "tooldefinition", "credential"):
        assert client.get(f"/admin/integrations/{page}/add/").status_code == 200
    response = client.post(
        "/admin/integrations/mcpserver/add/",
        {
            "tenant": acme.pk,
            "slug": "billing",
            "name": "Billing",
            "transport": "streamable_http",
            "url": billing_mcp.url,
            "command": "[]",
            "timeout_seconds": "10",
            "is_active": "on",
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    server = McpServer.objects.get(slug="billing")
    response = client.post(
        "/admin/integrations/mcpserver/",
        {"action": "import_tools", "_selected_action": [server.pk]},
        follow=True,
    )
    assert "created 3" in response.content.decode()
    assert ToolDefinition.objects.filter(tenant=acme, source="mcp_import").count() == 3
    listing = client.get("/admin/integrations/tooldefinition/").content.decode()
    assert "refund_charge" in listing
