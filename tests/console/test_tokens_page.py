import hashlib
import re

import pytest
from django.test import Client

from console.models import ApiToken

pytestmark = pytest.mark.django_db


def test_tokens_page_needs_login():
    response = Client().get("/tokens/")
    assert response.status_code == 302


def test_issue_shows_the_secret_once_and_it_authenticates(seeded, operator, login):
    client = login(operator)
    page = client.post("/tokens/new/", {"name": "billing-sync"}).content.decode()
    secret = re.search(r"<pre data-token>(acp_[^<]+)</pre>", page).group(1)
    token = ApiToken.objects.get(user=operator, name="billing-sync")
    assert token.token_hash == hashlib.sha256(secret.encode()).hexdigest()  # only the hash
    assert Client(HTTP_AUTHORIZATION=f"Bearer {secret}").get("/api/v1/me").status_code == 200
    assert secret not in client.get("/tokens/").content.decode()


def test_revoke_own_token_and_it_stops_working(seeded, operator, login):
    client = login(operator)
    page = client.post("/tokens/new/", {"name": "temp"}).content.decode()
    secret = re.search(r"<pre data-token>(acp_[^<]+)</pre>", page).group(1)
    prefix = ApiToken.objects.get(user=operator, name="temp").prefix
    assert client.post(f"/tokens/{prefix}/revoke/").status_code == 200
    response = Client(HTTP_AUTHORIZATION=f"Bearer {secret}").get("/api/v1/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_revoked"


def test_cannot_revoke_someone_elses_token(seeded, operator, lead, login):
    from console.services import token_issue

    other, _ = token_issue(actor=lead, user=lead, name="lead's")
    response = login(operator).post(f"/tokens/{other.prefix}/revoke/")
    assert response.status_code == 404
    other.refresh_from_db()
    assert other.revoked_at is None


def test_nameless_token_is_refused_with_a_message(seeded, operator, login):
    response = login(operator).post("/tokens/new/", {"name": "  "})
    assert response.status_code == 422
    assert b"Give the token a name" in response.content
    assert not ApiToken.objects.filter(user=operator).exists()


def test_token_form_requires_csrf(seeded, operator):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    assert client.post("/tokens/new/", {"name": "x"}).status_code == 403
