"""The dashboard: runs by status, outcomes by task type, spend, approvals, switches."""

from __future__ import annotations

import pytest

from console.selectors import percentile
from tests.agents.conftest import REFUND

pytestmark = pytest.mark.django_db


def test_percentile_is_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0


def test_dashboard_shows_runs_outcomes_spend_approvals_and_engaged_switches(start_run, step, login, operator):
    from agents.services import switch_engage

    step(start_run("What plan is customer C-1002 on?"))
    step(start_run(REFUND))  # parks: one open approval
    switch_engage(actor=operator, scope="tool", target="apply_credit", reason="INC-5")
    client = login(operator)
    page = client.get("/").content.decode()
    assert 'data-engaged-switches="1"' in page and "tool:apply_credit" in page
    assert 'data-status="Succeeded"' in page and 'data-intent="general_question"' in page
    assert '<span class="stat" data-open-approvals>1</span>' in page
    assert 'data-tenant="acme"' in page and "<svg" in page
    assert 'hx-trigger="every' in page
    live = client.get("/", HTTP_HX_REQUEST="true").content.decode()
    assert "<html" not in live and 'data-panel="status"' in live


def test_dashboard_only_counts_tenants_the_viewer_belongs_to(start_run, step, login, seeded):
    step(start_run("What plan is customer C-1002 on?"))
    page = login(seeded["users"]["outsider"]).get("/").content.decode()
    assert 'data-intent="general_question"' not in page and "No tenants you may see" in page
