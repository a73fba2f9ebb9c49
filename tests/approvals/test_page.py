"""The /approvals/ page and the item view: htmx partials, decisions without a reload,
bulk approve for low-risk items only, metrics chart."""

from __future__ import annotations

import pytest

from approvals.models import ApprovalRequest, ApprovalStatus
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db
HX = {"HTTP_HX_REQUEST": "true"}


def test_page_shows_queues_items_oldest_due_first_and_the_chart(parked, login, lead):
    _, first = parked()
    _, second = parked()
    page = login(lead).get("/approvals/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-queue="billing-credits"' in html and 'data-queue="account-changes"' not in html
    assert html.index(str(first.id)) < html.index(str(second.id))
    assert 'hx-trigger="every 5s"' in html and "<svg" in html and 'data-testid="metrics"' in html


def test_live_refresh_returns_only_the_partial(parked, login, lead):
    _, request = parked()
    part = login(lead).get("/approvals/?part=live", **HX)
    assert part.status_code == 200
    assert b"<html" not in part.content and str(request.id).encode() in part.content


def test_filters_narrow_the_list(parked, low_risk_request, login, lead):
    _, high = parked()
    _, low = low_risk_request()
    html = login(lead).get("/approvals/?tier=write_low").content.decode()
    assert str(low.id) in html and str(high.id) not in html
    assert login(lead).get("/approvals/?sla=bogus").status_code == 422


def test_page_is_404_for_people_without_a_queue(login, operator, outsider):
    assert login(operator).get("/approvals/").status_code == 404
    assert login(outsider).get("/approvals/").status_code == 404


def test_item_view_shows_summary_then_evidence_then_trace_on_demand(parked, login, lead):
    _, request = parked()
    html = login(lead).get(f"/approvals/{request.id}/").content.decode()
    assert (
        html.index('data-section="summary"')
        < html.index('data-section="evidence"')
        < html.index('data-section="trace"')
    )
    assert '<details data-testid="raw-trace">' in html  # collapsed
    for testid in ("claim", "approve", "reject", "edit-approve"):
        assert f'data-testid="{testid}"' in html
    trace = login(lead).get(f"/approvals/{request.id}/trace/", **HX)
    assert trace.status_code == 200 and b"apply_credit" in trace.content and b"<html" not in trace.content


def test_claim_approve_via_htmx_without_reload(parked, login, lead):
    _, request = parked()
    client = login(lead)
    claimed = client.post(f"/approvals/{request.id}/claim/", **HX)
    assert (
        claimed.status_code == 200
        and b"<html" not in claimed.content
        and b'data-testid="release"' in claimed.content
    )
    done = client.post(f"/approvals/{request.id}/decide/", {"decision": "approve", "reason": "ok"}, **HX)
    assert done.status_code == 200 and b'data-status="approved"' in done.content
    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPROVED


def test_reject_without_reason_shows_the_error_in_the_panel(parked, login, lead):
    _, request = parked()
    client = login(lead)
    response = client.post(f"/approvals/{request.id}/decide/", {"decision": "reject", "reason": ""}, **HX)
    assert (
        response.status_code == 200
        and b"data-error" in response.content
        and b"reason is required" in response.content
    )
    response = client.post(f"/approvals/{request.id}/decide/", {"decision": "reject", "reason": "no"})
    assert response.status_code == 302


def test_edit_and_approve_from_the_form_and_refusal_is_a_clear_403(parked, login, lead):
    _, request = parked()
    client = login(lead)
    raised = client.post(f"/approvals/{request.id}/decide/", {"decision": "edit", "amount_cents": "9000"})
    assert raised.status_code == 403 and b"lower the amount" in raised.content
    ok = client.post(
        f"/approvals/{request.id}/decide/",
        {"decision": "edit", "amount_cents": "2500", "reason": "partial"},
        **HX,
    )
    assert b'data-status="approved"' in ok.content and b"amount_cents" in ok.content
    request.refresh_from_db()
    assert request.approved_arguments["amount_cents"] == 2500 and request.edited


def test_bulk_approve_never_applies_to_write_high_and_audits_each(parked, low_risk_request, login, lead):
    _, high = parked()
    _, low1 = low_risk_request()
    _, low2 = low_risk_request()
    html = login(lead).get("/approvals/").content.decode()
    assert f'value="{low1.id}"' in html and f'value="{high.id}"' not in html  # no checkbox for write_high
    response = login(lead).post(
        "/approvals/bulk-approve/", {"ids": [str(low1.id), str(low2.id), str(high.id)]}, **HX
    )
    assert response.status_code == 200
    assert b"write_high is never bulk approved" in response.content
    statuses = dict(ApprovalRequest.objects.values_list("id", "status"))
    assert statuses[low1.id] == statuses[low2.id] == ApprovalStatus.APPROVED
    assert statuses[high.id] == ApprovalStatus.PENDING
    decided = AuditEvent.objects.filter(action="approval.decided").values_list("object_id", flat=True)
    assert sorted(decided) == sorted([str(low1.id), str(low2.id)])


# --- metrics: the user's queues and tenants only ----------------------------------------


def _acme_activity_in_billing_credits(parked, lead) -> None:
    """In acme, in "Billing credits": one decided request, one escalated out (a breach)
    and one still pending."""
    from approvals.services import approval_decide, approval_escalate
    from tests.approvals.test_sla import shift

    _, decided = parked()
    approval_decide(actor=lead, request=decided, decision="approve", reason="duplicate charge")
    _, breached = parked()
    shift(breached, minutes=241)
    assert approval_escalate(request_id=breached.pk)
    parked()


def test_metrics_count_only_the_tenants_the_reviewer_belongs_to(parked, lead, globex_lead):
    from approvals.selectors import queue_metrics

    _acme_activity_in_billing_credits(parked, lead)
    (theirs,) = queue_metrics(globex_lead)
    assert theirs["queue"].slug == "billing-credits"
    assert theirs["decisions"] == 0 and theirs["p50"] is None and theirs["p95"] is None
    assert theirs["breaches"] == 0 and theirs["backlog_age_min"] is None
    (control,) = queue_metrics(lead)
    assert control["decisions"] == 1 and control["breaches"] == 1 and control["backlog_age_min"] is not None


def test_approval_page_shows_a_reviewer_of_another_tenant_nothing_of_acme(parked, login, lead, globex_lead):
    """Neither the metrics table nor the queue card (count, capacity use) carries acme's
    requests into the page of a globex-only reviewer of the same queue."""
    _acme_activity_in_billing_credits(parked, lead)
    html = login(globex_lead).get("/approvals/").content.decode()
    row = html[html.index('data-metrics="billing-credits"') :]
    row = row[: row.index("</tr>")]
    assert "<td>0</td>" in row and "<td data-breaches>0</td>" in row and "min" not in row
    start = html.index('data-queue="billing-credits"')
    card = html[start : html.index("</section>", start)]  # their only queue
    assert '<div class="stat" data-count>0</div>' in card
    assert "capacity 500" in card and "/500" not in card
    lead_html = login(lead).get("/approvals/").content.decode()
    # the control: lead belongs to every tenant and sees the queue's capacity use
    assert "capacity 1/500" in lead_html and "<td data-breaches>1</td>" in lead_html
