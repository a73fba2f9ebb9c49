"""Bad input to every console form is a page with a message (4xx), never a 500, and
changes nothing."""

import pytest

from agents.models import AgentRun, KillSwitch

pytestmark = pytest.mark.django_db

GARBAGE = [
    {},
    {"tenant": "nope", "message": "hi"},
    {"tenant": "acme", "message": ""},
    {"tenant": "acme", "message": "x" * 100_000, "intent": "\x00"},
    {"engaged": "maybe", "reason": ""},
    {"engaged": "1", "reason": "r", "expires_in_minutes": "-5"},
    {"engaged": "1", "reason": "r", "expires_in_minutes": "soon"},
    {"decision": "maybe", "reason": "", "amount_cents": "lots"},
    {"decision": "approve_edited", "amount_cents": "999999999"},
    {"ids": ["not-a-uuid", "00000000-0000-0000-0000-000000000000"]},
    {"note": ""},
]
FORMS = [
    "/runs/",
    "/switches/tool/apply_credit/flip/",
    "/switches/bogus/x/flip/",
    "/switches/global/-/flip/",
    "/approvals/bulk-approve/",
    "/approvals/00000000-0000-0000-0000-000000000000/decide/",
    "/approvals/00000000-0000-0000-0000-000000000000/claim/",
    "/handoffs/00000000-0000-0000-0000-000000000000/resolve/",
    "/tokens/new/",
    "/tokens/nope/revoke/",
]


@pytest.mark.parametrize("persona", ["admin", "operator", "lead", "auditor", "outsider"])
def test_garbage_in_console_forms_never_gets_a_500_and_changes_nothing(seeded, login, persona):
    from agents.seed import seed_runtime
    from support.seed import seed_support_data

    seed_support_data(tenants=seeded["tenants"])
    seed_runtime()
    client = login(seeded["users"][persona])
    for url in FORMS:
        for data in GARBAGE:
            response = client.post(url, data)
            assert response.status_code < 500, f"{persona} POST {url} {str(data)[:60]}"
            assert response.status_code != 200 or b"error" in response.content.lower() \
                or url.startswith(("/approvals/bulk", "/tokens/")), f"{persona} POST {url} {data}"
    assert not AgentRun.objects.exists()
    assert not KillSwitch.objects.filter(engaged=True).exists()
