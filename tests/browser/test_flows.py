"""The console's main flows in a real browser (Playwright + Debian chromium) against the
live server and a real Celery worker process. Screenshots of the main pages go to
docs/screenshots/ (shown in the README)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from agents.models import AgentRun, RunStatus
from approvals.models import ApprovalRequest
from support.models import CreditLedger
from tests.agents.conftest import REFUND

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

QUESTION = "What plan is customer C-1002 on?"


def _start_run_from_console(page, message: str) -> str:
    page.goto("/runs/")
    page.select_option("#run-tenant", "acme")
    page.fill("#run-message", message)
    page.click("[data-action=start-run]")
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}/$"))
    return page.url.rstrip("/").rsplit("/", 1)[1]


def test_start_a_run_approve_it_as_a_lead_and_see_it_finish(runtime, start_worker, page_for, screenshot):
    start_worker()
    ops = page_for("operator")
    run_id = _start_run_from_console(ops, REFUND)
    expect(ops.locator("#run-live")).to_have_attribute("data-run-status", "waiting_approval", timeout=30000)
    expect(ops.locator("[data-waiting]")).to_contain_text("apply_credit")
    screenshot(ops, "run-detail-waiting")

    lead = page_for("lead")
    lead.goto("/approvals/")
    request = ApprovalRequest.objects.get(subject_id=run_id)
    expect(lead.locator(f"[data-request='{request.id}']")).to_be_visible()
    screenshot(lead, "approvals")
    lead.click(f"[data-request='{request.id}'] [data-testid=open-request]")
    claim = lead.locator("[data-testid=claim]")
    if claim.count():
        claim.click()
    screenshot(lead, "approval-detail")
    lead.fill("#approve-reason", "duplicate charge confirmed")
    lead.click("[data-testid=approve]")
    expect(lead.locator("[data-testid=status]")).to_have_text(re.compile("approved"), timeout=15000)

    expect(ops.locator("#run-live")).to_have_attribute("data-run-status", "succeeded", timeout=30000)
    expect(ops.locator("[data-approval-wait=approved]")).to_be_visible()
    assert CreditLedger.objects.get().amount_cents == 4000
    screenshot(ops, "run-detail")
    ops.goto("/runs/")
    expect(ops.locator(f"[data-run='{run_id}']")).to_have_attribute("data-status", "succeeded")
    screenshot(ops, "runs")
    ops.goto("/")
    expect(ops.locator("[data-panel=task-types]")).to_contain_text("billing_refund")
    screenshot(ops, "dashboard")

    auditor = page_for("auditor")
    auditor.goto("/audit/")
    auditor.select_option("select[name=action]", "approval.decided")
    auditor.click("button:text('Search')")
    expect(auditor.locator("#audit-results")).to_contain_text("approval.decided")
    expect(auditor.locator("#audit-results")).to_contain_text("lead")
    screenshot(auditor, "audit")


def test_operator_flips_a_switch_and_a_credit_is_refused_while_a_lookup_works(
    runtime, start_worker, page_for, screenshot
):
    start_worker()
    ops = page_for("operator")
    ops.goto("/switches/")
    row = ops.locator("[data-switch='tool:apply_credit']")
    expect(row).to_have_attribute("data-engaged", "0")
    row.locator("[data-action=engage]").click()
    expect(ops.locator("[data-blast-radius]")).to_be_visible()
    ops.fill("#switch-reason", "INC-2041: credits applied twice")
    ops.fill("#switch-expiry", "120")
    screenshot(ops, "switch-confirm")
    ops.click("[data-action=confirm]")
    expect(ops.locator("[data-switch='tool:apply_credit']")).to_have_attribute("data-engaged", "1")
    expect(ops.locator("[data-history]")).to_contain_text("INC-2041")
    screenshot(ops, "switches")

    # The credit is refused before it even reaches a reviewer; the reads before it ran.
    _start_run_from_console(ops, REFUND)
    expect(ops.locator("#run-live")).to_have_attribute("data-run-status", "killed", timeout=30000)
    expect(ops.locator("[data-terminal-reason]")).to_contain_text("apply_credit refused")
    assert not CreditLedger.objects.exists()
    screenshot(ops, "run-detail-refused")

    _start_run_from_console(ops, QUESTION)
    expect(ops.locator("#run-live")).to_have_attribute("data-run-status", "succeeded", timeout=30000)
    expect(ops.locator("#run-live")).to_contain_text("lookup_subscription")

    ops.goto("/")
    expect(ops.locator("[data-engaged-switches]")).to_contain_text("tool:apply_credit")
    screenshot(ops, "dashboard-switch-engaged")
    assert AgentRun.objects.filter(status=RunStatus.KILLED).count() == 1
