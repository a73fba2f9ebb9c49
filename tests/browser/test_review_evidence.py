"""The reviewer sees the check (issue 16), in a real browser: a support lead opens parked
credits on the live server and reads proposed vs evidence, the charges, the customer's credit
history and, for a credit whose charge was credited while it waited, the warning beside the
Approve button. With UPDATE_SCREENSHOTS=1 the pictures go to docs/screenshots/.

The runs are parked in this process by a small model client (no worker is needed to read a
page, and the picture does not depend on the scripted planner's wording).
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from agents import runtime as rt
from tests.approvals.test_review_evidence import (
    BIG,
    GOOD,
    ROUTE,
    ProposesCredit,
    broker_credit,
    install_credit_agent,
    past_credit,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
WIDE = {"width": 1440, "height": 900}


def test_a_lead_reads_the_evidence_check_and_the_warning_when_a_charge_was_credited(
    runtime, acme, start_run, step, pending_request, page_for, screenshot, monkeypatch
):
    proposal: dict = {}
    monkeypatch.setitem(rt.MODEL_CLIENTS, ROUTE, lambda agent: ProposesCredit(dict(proposal)))
    install_credit_agent(acme)

    def park(message: str, arguments: dict):
        proposal.clear()
        proposal.update(arguments)
        run = step(start_run(message, intent="billing_refund"))
        assert run.status == "waiting_approval", (run.status, run.terminal_reason)
        return run, pending_request(run)

    # C-1003's $499 February duplicate, with a goodwill credit from last month in its history
    past_credit(acme, "C-1003", 2500, days=24, ticket_number="C-1003-T1", reason="Invoice question: goodwill")
    _, good = park("C-1003 was charged twice in February, please refund the $499 duplicate", BIG)
    # C-1001's $40 March duplicate, then credited by another call while the request waits
    _, stale = park("Customer C-1001 was billed twice in March, please refund the $40 duplicate", GOOD)
    credit = broker_credit(start_run("C-1001: refund the March duplicate", intent="billing_refund"))

    lead = page_for("lead")
    lead.set_viewport_size(WIDE)
    lead.goto("/approvals/")
    row = lead.locator(f"[data-request='{stale.id}']")
    expect(row.locator("[data-check=fail]")).to_be_visible()
    expect(row).to_contain_text("was already credited on")
    expect(lead.locator(f"[data-request='{good.id}'] [data-check=ok]")).to_contain_text("$499.00 justified")

    lead.goto(f"/approvals/{good.id}/")
    check = lead.get_by_role("heading", name="Evidence check")
    expect(check).to_be_visible()
    compare = lead.get_by_role("table", name="Proposed vs evidence")
    expect(compare).to_be_visible()
    expect(compare.locator("[data-row=amount]")).to_contain_text("$499.00")
    expect(compare.locator("[data-row=amount]")).to_contain_text("matches")
    expect(compare.locator("[data-row=ticket]")).to_contain_text("C-1003-T2, a ticket of C-1003")
    charge = lead.locator("[data-charge=ch_2_2b]")
    expect(charge).to_contain_text("3 February 2026")
    expect(charge).to_contain_text("a second charge that month")
    expect(lead.get_by_role("heading", name="Credits to C-1003, last 90 days")).to_be_visible()
    expect(lead.locator("[data-testid=credit-history]")).to_contain_text("Invoice question: goodwill")
    expect(lead.locator("[data-testid=verdict]")).to_contain_text("Approving credits $499.00 to C-1003")
    # the raw JSON is there, folded
    raw = lead.locator("[data-testid=raw-check] pre")
    expect(raw).to_be_hidden()
    lead.locator("[data-testid=raw-check] summary").click()
    expect(raw).to_contain_text('"justified_cents": 49900')
    lead.locator("[data-testid=raw-check] summary").click()
    screenshot(lead, "approval-evidence")

    lead.goto(f"/approvals/{stale.id}/")
    day = credit.created_at.strftime("%-d %B %Y")
    problems = lead.get_by_role("group", name="Approving will fail")
    expect(problems).to_be_visible()
    expect(problems).to_contain_text(f"Charge ch_0_3b was already credited on {day} (credit #{credit.pk})")
    expect(lead.locator("[data-charge=ch_0_3b]")).to_have_attribute("data-credited", "1")
    verdict = lead.get_by_role("alert").filter(has_text="Approving will fail")
    expect(verdict).to_be_visible()
    expect(verdict).to_contain_text(
        re.compile(rf"Approving will fail:\s*Charge ch_0_3b was already credited on {day}")
    )
    approve = lead.locator("[data-testid=approve]")
    expect(approve).to_have_attribute("aria-describedby", "approve-verdict")
    expect(lead.locator(f"[data-testid=credit-history] [data-credit='{credit.pk}']")).to_be_visible()
    screenshot(lead, "approval-evidence-warning")
