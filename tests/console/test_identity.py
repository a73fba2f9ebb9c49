import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from console.models import ApiToken
from console.navigation import NAV
from console.services import token_issue, token_revoke

pytestmark = pytest.mark.django_db

PAGES = ["dashboard"] + [entry.url_name for entry in NAV]


def _existing_pages():
    from django.urls import NoReverseMatch

    urls = []
    for name in dict.fromkeys(PAGES):
        try:
            urls.append(reverse(name))
        except NoReverseMatch:
            continue
    return urls


def test_every_page_needs_login(seeded):
    client = Client()
    for url in _existing_pages():
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login")), url


def test_login_page_renders_with_csrf(client):
    response = client.get(reverse("login"))
    assert response.status_code == 200
    assert b"csrfmiddlewaretoken" in response.content


def test_login_with_demo_password_reaches_dashboard(seeded):
    from console.seed import demo_password

    client = Client(enforce_csrf_checks=True)
    page = client.get(reverse("login"))
    csrf = page.cookies["csrftoken"].value
    response = client.post(reverse("login"), {
        "username": "operator", "password": demo_password("operator"),
        "csrfmiddlewaretoken": csrf,
    })
    assert response.status_code == 302
    assert client.get(reverse("dashboard")).status_code == 200


def test_login_form_without_csrf_token_is_refused(seeded):
    client = Client(enforce_csrf_checks=True)
    response = client.post(reverse("login"), {"username": "operator", "password": "x"})
    assert response.status_code == 403


def _nav_names(client):
    html = client.get(reverse("dashboard")).content.decode()
    import re

    return set(re.findall(r'data-nav="([a-z_]+)"', html))


@pytest.mark.parametrize(
    ("persona", "allowed", "forbidden"),
    [
        ("operator", {"dashboard", "runs", "switches", "handoffs"}, {"audit", "approvals"}),
        ("lead", {"dashboard", "approvals", "handoffs"}, {"audit", "switches", "runs"}),
        ("auditor", {"dashboard", "audit"}, {"approvals", "switches", "runs", "handoffs"}),
        ("admin", {"dashboard", "audit", "approvals", "switches", "runs"}, set()),
        ("outsider", set(), {"dashboard", "audit", "approvals", "switches", "runs"}),
    ],
)
def test_each_role_sees_only_its_navigation(seeded, login, persona, allowed, forbidden):
    existing = {entry.url_name for entry in NAV if _resolves(entry.url_name)}
    names = _nav_names(login(seeded["users"][persona]))
    assert (allowed & existing) <= names
    assert not (forbidden & names)


def _resolves(name):
    from django.urls import NoReverseMatch

    try:
        reverse(name)
        return True
    except NoReverseMatch:
        return False


def test_token_is_stored_hashed_and_shown_once(seeded, operator):
    token, plaintext = token_issue(actor=operator, user=operator, name="ci")
    row = ApiToken.objects.get(pk=token.pk)
    assert plaintext not in (row.token_hash, row.prefix)
    assert len(row.token_hash) == 64 and row.token_hash != plaintext
    event = AuditEvent.objects.get(action="token.issued", object_id=str(token.pk))
    assert plaintext not in str(event.payload)


def test_issue_token_command_prints_token_on_last_line(seeded, capsys):
    from django.core.management import call_command

    call_command("issue_token", "svc-acme")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("acp_")
    response = Client(HTTP_AUTHORIZATION=f"Bearer {last}").get("/api/v1/me")
    assert response.status_code == 200
    assert response.json()["username"] == "svc-acme"


def test_issue_token_for_unknown_user_fails_clearly(seeded):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="No user named 'ghost'"):
        call_command("issue_token", "ghost")


def test_token_last_used_is_recorded(seeded, operator):
    token, plaintext = token_issue(actor=operator, user=operator)
    Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}").get("/api/v1/me")
    token.refresh_from_db()
    assert token.last_used_at is not None


def _api_error(response):
    assert response["Content-Type"].startswith("application/json")
    return response.json()["error"]


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "not_authenticated"),
        ("Token abc", "token_malformed"),
        ("Bearer", "token_malformed"),
        ("Bearer not-a-token", "token_malformed"),
        ("Bearer acp_deadbeef_nottherightsecretatall", "token_unknown"),
    ],
)
def test_api_refuses_bad_credentials_with_clear_401(seeded, header, code):
    client = Client(HTTP_AUTHORIZATION=header) if header else Client()
    response = client.get("/api/v1/me")
    assert response.status_code == 401
    error = _api_error(response)
    assert error["code"] == code
    assert error["message"]


def test_revoked_token_gets_401(seeded, operator):
    token, plaintext = token_issue(actor=operator, user=operator)
    token_revoke(actor=operator, token=token)
    response = Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}").get("/api/v1/me")
    assert response.status_code == 401
    assert _api_error(response)["code"] == "token_revoked"


def test_auth_failures_are_audited(seeded):
    Client(HTTP_AUTHORIZATION="Bearer acp_deadbeef_nope-nope-nope").get("/api/v1/me")
    assert AuditEvent.objects.filter(action="auth.denied",
                                     payload__code="token_unknown").exists()


def test_unknown_api_path_is_json_404(seeded):
    response = Client().get("/api/v1/no/such/thing")
    assert response.status_code == 404
    assert _api_error(response)["code"] == "not_found"


def test_session_api_write_requires_csrf(seeded, operator):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    token, _ = token_issue(actor=operator, user=operator)
    response = client.post(f"/api/v1/tokens/{token.prefix}/revoke")
    assert response.status_code == 401
    assert _api_error(response)["code"] == "csrf_failed"
    token.refresh_from_db()
    assert token.revoked_at is None


def test_user_can_revoke_own_token_but_not_anothers(seeded, operator, lead, token_client):
    own, _ = token_issue(actor=operator, user=operator)
    other, _ = token_issue(actor=lead, user=lead)
    client = token_client(operator)
    assert client.post(f"/api/v1/tokens/{own.prefix}/revoke").status_code == 200
    response = client.post(f"/api/v1/tokens/{other.prefix}/revoke")
    assert response.status_code == 404
    other.refresh_from_db()
    assert other.revoked_at is None


def test_me_reports_service_account_tenant(seeded, svc_acme, token_client):
    body = token_client(svc_acme).get("/api/v1/me").json()
    assert body["username"] == "svc-acme"
    assert body["service_account_tenant"] == "acme"


def test_seed_demo_twice_leaves_the_same_rows(db):
    from django.apps import apps
    from django.core.management import call_command

    call_command("seed_demo")
    counts = {m._meta.label: m.objects.count() for m in apps.get_models()}
    call_command("seed_demo")
    assert {m._meta.label: m.objects.count() for m in apps.get_models()} == counts
    assert User.objects.filter(username__in=["operator", "lead", "lead2", "accounts",
                                             "auditor", "admin", "svc-acme",
                                             "svc-globex"]).count() == 8
