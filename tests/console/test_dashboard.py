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


def test_dashboard_shows_runs_outcomes_spend_approvals_and_engaged_switches(
    start_run, step, login, operator, lead
):
    from agents.services.switches import switch_engage

    step(start_run("What plan is customer C-1002 on?"))
    step(start_run(REFUND))  # parks: one open approval
    switch_engage(actor=operator, scope="tool", target="apply_credit", reason="INC-5")
    client = login(operator)
    page = client.get("/").content.decode()
    assert 'data-engaged-switches="1"' in page and "tool:apply_credit" in page
    assert 'data-status="Succeeded"' in page and 'data-intent="general_question"' in page
    assert 'data-tenant="acme"' in page and "<svg" in page
    # the operator holds no review queue but watches every queue's SLA: counts and state,
    # no way into a queue (the approval page stays a 404 for them)
    panel = _panel(page)
    assert '<span class="stat" data-open-approvals>1</span>' in panel and "SLA watch" in panel
    assert 'data-queue="billing-credits"' in panel and "/approvals" not in panel
    assert client.get("/approvals/?queue=billing-credits").status_code == 404
    reviewer = _panel(login(lead).get("/").content.decode())
    assert '<span class="stat" data-open-approvals>1</span>' in reviewer and "your review queues" in reviewer
    assert 'href="/approvals/?queue=billing-credits"' in reviewer
    assert 'hx-trigger="every' in page
    live = client.get("/", HTTP_HX_REQUEST="true").content.decode()
    assert "<html" not in live and 'data-panel="status"' in live


def test_dashboard_only_counts_tenants_the_viewer_belongs_to(start_run, step, login, seeded):
    step(start_run("What plan is customer C-1002 on?"))
    page = login(seeded["users"]["outsider"]).get("/").content.decode()
    assert 'data-intent="general_question"' not in page and "No tenants you may see" in page


# --- the approvals panel: only the queues the viewer holds, only their tenants ----------


def _panel(html: str) -> str:
    start = html.index('data-panel="approvals"')
    return html[start : html.index("</section>", start)]


def _overdue(request) -> None:
    from datetime import timedelta

    from approvals.models import ApprovalRequest

    ApprovalRequest.objects.filter(pk=request.pk).update(due_at=request.created_at - timedelta(minutes=1))


def test_dashboard_shows_a_reviewer_only_the_queues_they_hold(
    start_run, step, pending_request, login, accounts, lead
):
    """``accounts`` reviews "Account changes" only: acme's pending credits in "Billing
    credits" (name, count, SLA state) are not on their dashboard, page or live partial."""
    for _ in range(3):
        _overdue(pending_request(step(start_run(REFUND))))
    client = login(accounts)
    for response in (client.get("/"), client.get("/", HTTP_HX_REQUEST="true")):
        html = response.content.decode()
        assert response.status_code == 200
        assert "Billing credits" not in html and "billing-credits" not in html
        panel = _panel(html)
        assert '<span class="stat" data-open-approvals>0</span>' in panel
        assert 'data-queue="account-changes"' in panel and "past SLA" not in panel
    # the control: the queue's reviewer sees the three, breached
    panel = _panel(login(lead).get("/").content.decode())
    assert '<span class="stat" data-open-approvals>3</span>' in panel and "3 past SLA" in panel
    assert 'data-queue="billing-credits"' in panel and "Billing credits" in panel


def test_dashboard_shows_a_reviewer_of_another_tenant_nothing_of_acme(
    start_run, step, pending_request, login, globex_lead
):
    """``globex_lead`` holds "Billing credits" too, but belongs to globex only: acme's
    pending (and overdue) credit in that queue is not counted on their dashboard."""
    _overdue(pending_request(step(start_run(REFUND))))
    html = login(globex_lead).get("/").content.decode()
    panel = _panel(html)
    assert '<span class="stat" data-open-approvals>0</span>' in panel
    assert 'data-queue="billing-credits"' in panel and "past SLA" not in panel and "breached" not in panel
    assert "acme" not in html.lower()
    from approvals.selectors import queue_overview

    (row,) = queue_overview(globex_lead)
    assert (row["pending"], row["breached"], row["pending_all"]) == (0, 0, None)
