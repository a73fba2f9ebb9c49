"""The switch confirmation opened on its own (a new tab, a bookmarked link) works as a plain
form: 'Engage now' engages and lands on the switches page (issue 18: it used to do nothing,
htmx:targetError #switch-panel)."""

from __future__ import annotations

import pytest

from agents.models import KillSwitch

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_the_standalone_confirm_page_engages_and_returns_to_the_switches(runtime, page_for):
    page = page_for("operator")
    errors = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto("/switches/tool/apply_credit/confirm/")
    page.fill("#switch-reason", "INC-77 ledger drift")
    page.click("[data-action=confirm]")
    page.wait_for_url("**/switches/")
    assert page.get_by_text("Switch tool:apply_credit engaged.").is_visible()
    assert page.locator("[data-switch='tool:apply_credit']").get_attribute("data-engaged") == "1"
    assert KillSwitch.objects.get(scope="tool", target="apply_credit").reason == "INC-77 ledger drift"
    # without a reason the browser refuses to submit; a whitespace reason is refused by the server
    page.goto("/switches/tool/apply_credit/confirm/")
    page.fill("#switch-reason", "   ")
    page.click("[data-action=confirm]")
    assert page.locator("[data-error]").is_visible()
    assert KillSwitch.objects.get(scope="tool", target="apply_credit").engaged  # release refused
    assert not [e for e in errors if "targetError" in e]
