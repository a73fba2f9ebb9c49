"""404 and 403 pages use the console's layout, every page names its icon, the skip link
leads to the content (issue 18)."""

from __future__ import annotations

import uuid

import pytest

pytestmark = pytest.mark.django_db


def test_a_404_uses_the_console_layout_with_the_readers_navigation(login, operator):
    client = login(operator)
    response = client.get(f"/runs/{uuid.uuid4()}/")
    assert response.status_code == 404
    page = response.content.decode()
    assert 'data-error="404"' in page and 'class="topbar"' in page and 'aria-label="Main"' in page
    assert 'href="/runs/"' in page  # the operator's own navigation


def test_a_404_for_a_visitor_shows_no_navigation(client):
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    page = response.content.decode()
    assert 'data-error="404"' in page and 'aria-label="Main"' not in page


def test_every_page_names_its_icon_and_the_icon_is_served(login, operator):
    client = login(operator)
    page = client.get("/").content.decode()
    assert 'rel="icon"' in page and "console/favicon.svg" in page
    assert 'class="skip-link" href="#main"' in page and '<main id="main"' in page
    redirect = client.get("/favicon.ico")
    assert redirect.status_code == 301 and redirect["Location"].endswith("console/favicon.svg")


def test_a_refused_csrf_token_is_a_403_in_the_console_layout_and_changes_nothing(operator):
    from django.test import Client

    from agents.models import KillSwitch

    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    response = client.post("/switches/tool/apply_credit/flip/", {"engaged": "1", "reason": "x"})
    assert response.status_code == 403
    page = response.content.decode()
    assert 'data-error="403"' in page and "has expired" in page and 'class="topbar"' in page
    assert not KillSwitch.objects.filter(engaged=True).exists()
