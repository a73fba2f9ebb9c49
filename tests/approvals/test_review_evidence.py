"""The reviewer sees the check (issue 16): a proposed ``apply_credit`` shows, on the item view,
the queue page and the API, what the tool's review hook says of it, read at page view:
proposed vs evidence, the charges it makes good, the customer's credits of the last 90 days,
and a warning in plain words when approving would fail.

The parked runs here do not depend on the scripted planner: a small model client reads the
customer's subscription and tickets, then proposes the credit it is given.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta
from unittest import mock

import pytest
from django.db import transaction
from django.utils import timezone

from agents import broker, policy
from agents import runtime as rt
from agents.approval_subject import request_approval
from agents.llm.base import ModelResponse
from agents.models import Agent, ToolInvocation
from agents.tools import REGISTRY, get_tool
from approvals.models import ApprovalStatus
from approvals.services import approval_decide
from console.templatetags.console_extras import cents, readable_date
from support.models import CreditLedger, Customer

pytestmark = pytest.mark.django_db
HX = {"HTTP_HX_REQUEST": "true"}

REFUND = "Customer C-1001 was billed twice in March, please refund the $40 duplicate"
GOOD = {
    "customer": "C-1001",
    "amount_cents": 4000,
    "currency": "USD",
    "reason": "March duplicate",
    "ticket": "C-1001-T2",
    "charges": ["ch_0_3b"],
}
BIG = {
    "customer": "C-1003",
    "amount_cents": 49900,
    "currency": "USD",
    "reason": "February duplicate",
    "ticket": "C-1003-T2",
    "charges": ["ch_2_2b"],
}
ROUTE = "proposes-credit"


class ProposesCredit:
    """A model that looks up the customer's subscription and tickets, proposes one credit with
    the arguments it was given, and finishes once that call is decided."""

    def __init__(self, arguments: dict):
        self.arguments = arguments

    def complete(self, request):
        done = {o["tool"] for o in request.state.get("observations", [])}
        customer = self.arguments["customer"]
        if "lookup_subscription" not in done:
            action = {"type": "tool_call", "tool": "lookup_subscription", "arguments": {"customer": customer}}
        elif "search_tickets" not in done:
            action = {"type": "tool_call", "tool": "search_tickets", "arguments": {"customer": customer}}
        elif "apply_credit" not in done:
            action = {
                "type": "tool_call",
                "tool": "apply_credit",
                "arguments": self.arguments,
                "rationale": f"{customer} was charged twice in one month (ticket "
                f"{self.arguments.get('ticket')}); credit the duplicate charge.",
            }
        else:
            action = {"type": "final", "message": "The credit was decided.", "summary": "done"}
        return ModelResponse(action=action, model=ROUTE, prompt_tokens=5, completion_tokens=5)


def install_credit_agent(tenant) -> None:
    """``tenant``'s own support agent, driven by the client registered under ``ROUTE``
    (a tenant's agent wins over the shared one)."""
    Agent.objects.create(
        tenant=tenant,
        slug="support",
        version=1,
        name="Proposes a credit",
        model_route=[ROUTE],
        allowed_tools=["lookup_subscription", "search_tickets", "apply_credit"],
        intents=["billing_refund"],
        max_steps=12,
        max_tokens=20_000,
        max_wall_seconds=300,
        max_cost_usd=1,
    )


@pytest.fixture
def park_credit(acme, start_run, step, pending_request, monkeypatch):
    """``park_credit(message=REFUND, **changes)``: a run of acme's support agent that proposes
    ``GOOD`` with ``changes`` and parks for approval; returns (run, request)."""
    proposal: dict = {}
    monkeypatch.setitem(rt.MODEL_CLIENTS, ROUTE, lambda agent: ProposesCredit(dict(proposal)))
    install_credit_agent(acme)

    def park(message: str = REFUND, **changes):
        proposal.clear()
        proposal.update(GOOD, **changes)
        run = step(start_run(message, intent="billing_refund"))
        assert run.status == "waiting_approval", (run.status, run.terminal_reason)
        return run, pending_request(run)

    return park


@pytest.fixture
def credit_now(start_run):
    """``credit_now(**changes)``: another run's approved ``apply_credit`` of ``GOOD`` with
    ``changes`` runs through the broker meanwhile; returns its credit."""
    counter = iter(range(1, 1000))

    def credit(**changes) -> CreditLedger:
        run = start_run(f"C-1001 says they were charged twice ({next(counter)})", intent="billing_refund")
        return broker_credit(run, **changes)

    return credit


def broker_credit(run, *, step_seq: int = 1, **changes) -> CreditLedger:
    """``run`` credits ``GOOD`` with ``changes`` through the broker, as an approved call runs."""
    tool = get_tool("apply_credit")
    invocation = broker.invocation_propose(
        run=run, step_seq=step_seq, tool=tool, arguments={**GOOD, **changes}
    )
    outcome = broker.broker_execute(run=run, invocation=invocation, tool=tool, lease_token=f"L{step_seq}")
    ToolInvocation.objects.filter(pk=invocation.pk).update(**broker.invocation_finish_fields(outcome))
    assert outcome.ok, outcome.error
    return CreditLedger.objects.get(pk=outcome.result["credit_id"])


def filed_directly(run, arguments: dict, *, step_seq: int = 60):
    """A pending apply_credit request filed without the runtime's pre-check (as a request filed
    before the tool checked its evidence): the page must still say what is wrong."""
    with transaction.atomic():
        invocation = broker.invocation_propose(
            run=run,
            step_seq=step_seq,
            tool=get_tool("apply_credit"),
            arguments=arguments,
            decision="require_approval",
            state="awaiting_approval",
        )
        decision = policy.Decision(
            effect=policy.REQUIRE_APPROVAL,
            reason="credits need a lead",
            policy_version=1,
            rule_id="test",
            queue="billing-credits",
            approvals_required=1,
        )
        return request_approval(run=run, invocation=invocation, decision=decision, summary="A credit")


def visible_text(html: str) -> str:
    """What a person reads without opening anything: <details> (raw JSON, the trace, the
    edit form) and every tag with its attributes removed."""
    html = re.sub(r"<details.*?</details>", " ", html, flags=re.S)
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def section(html: str, testid: str) -> str:
    start = html.index(f'data-testid="{testid}"')
    return html[start : html.index("</section>", start)]


def past_credit(tenant, code: str, amount_cents: int, *, days: int, **fields) -> CreditLedger:
    """A credit made ``days`` ago (the ledger is append-only: its time is set as it is written)."""
    customer = Customer.objects.get(tenant=tenant, code=code)
    with mock.patch("django.utils.timezone.now", return_value=timezone.now() - timedelta(days=days)):
        return CreditLedger.objects.create(
            tenant=tenant,
            customer=customer,
            amount_cents=amount_cents,
            idempotency_key=f"past-{code}-{days}",
            **{"reason": "Goodwill", **fields},
        )


# --- the item view ----------------------------------------------------------------------


def test_the_history_lists_the_customers_credits_of_the_last_90_days(park_credit, login, lead, acme):
    recent = past_credit(
        acme, "C-1001", 1500, days=10, ticket_number="C-1001-T1", reason="Late invoice goodwill"
    )
    older = past_credit(acme, "C-1001", 900, days=120)
    other = past_credit(acme, "C-1002", 700, days=3)
    _, request = park_credit()
    html = login(lead).get(f"/approvals/{request.id}/").content.decode()
    check = section(html, "review")
    assert "<h3>Credits to C-1001, last 90 days</h3>" in check
    history = check[check.index('data-testid="credit-history"') :]
    history = history[: history.index("</table>")]
    assert f'data-credit="{recent.pk}"' in history
    assert f'data-credit="{older.pk}"' not in history and f'data-credit="{other.pk}"' not in history
    assert "$15.00" in history and "<code>C-1001-T1</code>" in history and "Late invoice goodwill" in history
    assert readable_date(recent.created_at) in history
    assert re.search(r"<th scope=\"col\">When</th>", history)
    # a goodwill credit that took no charge leaves this one creditable
    assert 'data-testid="check-ok"' in check and "matches" in check


def test_a_good_credit_reads_as_a_person_reads_it_with_the_raw_json_one_click_away(park_credit, login, lead):
    _, request = park_credit()
    html = login(lead).get(f"/approvals/{request.id}/").content.decode()
    check = section(html, "review")
    # proposed vs evidence: the amount both ways, the ticket it answers, the charge it makes good
    assert 'data-row="amount"' in check and check.count("$40.00") >= 2 and "matches" in check
    assert "<code>C-1001-T2</code>, a ticket of C-1001" in check
    charge = check[check.index('data-charge="ch_0_3b"') :]
    assert 'data-duplicate="1" data-credited="0"' in charge
    assert "2 March 2026" in charge and "Yes</span>, a second charge that month" in charge
    assert 'data-testid="check-ok"' in check and "Approving will fail" not in html
    assert "No credits to C-1001 in the last 90 days." in check
    # beside the Approve button, in plain words, and the button points at it
    verdict = html[html.index('data-testid="verdict"') :]
    assert 'data-verdict="ok"' in verdict[:60]
    assert (
        "Approving credits $40.00 to C-1001 for <code>ch_0_3b</code> (ticket <code>C-1001-T2</code>)"
        in verdict
    )
    assert 'aria-describedby="approve-verdict"' in html
    # money and dates as a person reads them, never raw cents or ISO strings in the main view
    text = visible_text(html)
    assert "$40.00" in text and "2 March 2026" in text
    assert readable_date(request.due_at) in text and re.search(r"\d{1,2} \w{3} \d{4}, \d\d:\d\d UTC", text)
    assert not re.search(r"\b4000\b", text), text
    assert not re.search(r"\d{4}-\d{2}-\d{2}", text), text
    # the raw JSON stays one click away: the arguments, the check and each tool result
    for testid in ("arguments-raw", "raw-check"):
        assert re.search(rf'<details class="raw" data-testid="{testid}">', html)
    raw_check = html[html.index('data-testid="raw-check"') :]
    assert "&quot;amount_cents&quot;: 4000" in raw_check[: raw_check.index("</details>")]
    assert "&quot;date&quot;: &quot;2026-03-02&quot;" in raw_check[: raw_check.index("</details>")]
    assert '<details class="raw" data-evidence="lookup_subscription">' in html
    assert '<details class="raw" data-evidence="search_tickets">' in html
    # the order a reviewer reads in: what the agent concluded, the check, the decision
    assert (
        html.index('data-section="summary"')
        < html.index('data-section="check"')
        < html.index('data-testid="actions"')
        < html.index('data-section="evidence"')
    )


def test_a_charge_credited_after_the_request_was_filed_is_a_warning_beside_approve(
    park_credit, credit_now, step, login, lead
):
    run, request = park_credit()
    page = f"/approvals/{request.id}/"
    assert "Approving will fail" not in login(lead).get(page).content.decode()
    credit = credit_now()  # meanwhile another call credits the same charge
    html = login(lead).get(page).content.decode()
    day = readable_date(credit.created_at, "day")
    assert day == timezone.now().strftime("%-d %B %Y")
    # in the check: a warning (a labelled group) and the charge's row says so
    check = section(html, "review")
    problems = check[check.index('data-testid="check-problems"') :]
    assert 'role="group" aria-labelledby="check-problems-heading"' in check
    assert "Approving will fail" in problems
    assert (
        f"Charge <code>ch_0_3b</code> was already credited on {day} (credit #{credit.pk}), "
        "after this request was filed."
    ) in problems
    assert (
        "The proposed $40.00 is more than the evidence justifies: nothing of the named charges "
        "is left to credit."
    ) in problems
    row = check[check.index('data-charge="ch_0_3b"') :]
    assert 'data-credited="1"' in row and f"by credit #{credit.pk} on" in row
    assert readable_date(credit.created_at) in row and "UTC" in row
    # the history shows the credit that took it
    assert f'data-credit="{credit.pk}"' in check
    # next to the Approve button, in plain words, announced to assistive technology
    verdict = html[html.index('id="approve-verdict"') : html.index('data-testid="approve"')]
    assert 'role="alert"' in verdict and 'data-verdict="fail"' in verdict
    assert re.search(
        rf"Approving will fail:</strong>\s*<ul>\s*<li[^>]*>Charge <code>ch_0_3b</code> was already "
        rf"credited on {day} \(credit #{credit.pk}\)",
        verdict,
    )
    text = visible_text(html)
    assert f"Approving will fail: Charge ch_0_3b was already credited on {day}" in text
    # the queue page warns before the item is even opened
    queue = login(lead).get("/approvals/").content.decode()
    row = queue[queue.index(f'data-request="{request.id}"') :]
    row = row[: row.index("</tr>")]
    assert 'data-check="fail"' in row and "was already credited on" in row
    # and the tool does refuse it: the warning was true
    approval_decide(actor=lead, request=request, decision="approve", reason="looks fine")
    step(run)
    invocation = ToolInvocation.objects.get(run=run, tool="apply_credit")
    assert invocation.error["code"] == "already_credited"
    assert CreditLedger.objects.count() == 1


def test_an_edit_that_would_exceed_the_evidence_is_refused_with_the_warning_shown(
    park_credit, credit_now, login, lead
):
    _, request = park_credit()
    credit_now()
    client = login(lead)
    html = client.get(f"/approvals/{request.id}/").content.decode()
    edit = html[html.index('data-testid="edit"') :]
    assert "now $40.00, the evidence justifies $0.00; may only go down" in edit
    # lower than proposed, still above what the evidence justifies: the tool would refuse it
    refused = client.post(
        f"/approvals/{request.id}/decide/", {"decision": "edit", "amount_cents": "3000", "reason": "partial"}
    )
    assert refused.status_code == 422
    body = refused.content.decode()
    assert "The tool would refuse the edited arguments" in body and "data-error" in body
    assert 'data-verdict="fail"' in body and "Approving will fail" in body
    # over htmx the panel is swapped with the same error and the check
    swapped = client.post(
        f"/approvals/{request.id}/decide/",
        {"decision": "edit", "amount_cents": "3000", "reason": "partial"},
        **HX,
    ).content.decode()
    assert "<html" not in swapped and "would refuse the edited arguments" in swapped
    assert 'data-testid="check-problems"' in swapped
    request.refresh_from_db()
    assert request.status == ApprovalStatus.PENDING and not request.edited


def test_the_check_follows_an_accepted_edit_and_says_when_a_credit_is_partial(park_credit, login, lead):
    _, request = park_credit(message="C-1003 was charged twice in February, refund the $499 duplicate", **BIG)
    assert request.approvals_required == 2  # from $100 a credit needs two leads
    client = login(lead)
    html = client.get(f"/approvals/{request.id}/").content.decode()
    assert "$499.00" in section(html, "review") and "3 February 2026" in html
    edited = client.post(
        f"/approvals/{request.id}/decide/",
        {"decision": "edit", "amount_cents": "30000", "reason": "half now"},
        **HX,
    )
    body = edited.content.decode()
    check = body[body.index('data-testid="review"') :]
    # the arguments under review are the edited ones: $300.00 against the $499.00 justified
    assert 'data-testid="check-below"' in check
    assert "The proposed $300.00 is below the $499.00 the evidence justifies: a partial credit." in check
    assert "proposed is below" in check
    assert "amount: $499.00 &rarr; $300.00" in body  # the decision's diff, readable
    request.refresh_from_db()
    assert request.approved_arguments["amount_cents"] == 30000 and request.status == "pending"


def test_a_request_filed_without_the_check_shows_every_problem_in_plain_words(park_credit, login, lead):
    run, _ = park_credit()
    over = filed_directly(run, {**GOOD, "amount_cents": 40000}, step_seq=60)
    foreign = filed_directly(run, {**GOOD, "ticket": "C-1002-T1", "charges": ["ch_2_2b"]}, step_seq=61)
    bare = filed_directly(run, {"customer": "C-1001", "amount_cents": 4000, "reason": "x"}, step_seq=62)
    client = login(lead)
    html = client.get(f"/approvals/{over.id}/").content.decode()
    assert "The proposed $400.00 is more than the $40.00 the evidence justifies." in html
    assert "proposed is above" in html
    html = client.get(f"/approvals/{foreign.id}/").content.decode()
    assert "Charge <code>ch_2_2b</code> is not a duplicate charge of C-1001 in this tenant" in html
    assert "Ticket <code>C-1002-T1</code> is not one of C-1001's tickets in this tenant." in html
    assert 'data-duplicate="0"' in html
    html = client.get(f"/approvals/{bare.id}/").content.decode()
    assert "The proposal names no ticket it answers." in html
    assert "The proposal names no charge it makes good: there is no evidence for this credit." in html
    assert 'data-testid="no-charges"' in html
    assert html.count('data-verdict="fail"') == 1


def test_a_decided_request_is_not_said_to_fail_when_its_own_credit_took_the_charge(
    park_credit, step, login, lead
):
    run, request = park_credit()
    approval_decide(actor=lead, request=request, decision="approve", reason="duplicate confirmed")
    run = step(run)
    assert run.status == "succeeded", run.terminal_reason
    html = login(lead).get(f"/approvals/{request.id}/").content.decode()
    assert "Approving will fail" not in html and 'data-testid="verdict"' not in html
    assert "This request is approved. The check shows the state now" in html  # said as such
    assert 'data-testid="check-problems"' not in html
    assert f'data-credit="{CreditLedger.objects.get().pk}"' in html


def test_a_tool_without_its_own_template_gets_the_generic_check(low_risk_request, login, lead, monkeypatch):
    tool = get_tool("draft_reply")
    seen = []

    def review(tenant_id, arguments):
        seen.append((tenant_id, arguments))
        return {
            "customer": arguments["customer"],
            "open_tickets": ["C-1002-T1"],
            "sent_before": False,
            "problems": [{"code": "stale", "message": "The customer replied since."}],
        }

    _, request = low_risk_request()
    client = login(lead)
    assert 'data-testid="review"' not in client.get(f"/approvals/{request.id}/").content.decode()
    monkeypatch.setitem(REGISTRY, "draft_reply", dataclasses.replace(tool, review=review))
    html = client.get(f"/approvals/{request.id}/").content.decode()
    assert seen == [(request.tenant_id, request.arguments)]
    check = section(html, "review")
    assert "<dt>Open tickets</dt><dd>C-1002-T1</dd>" in check and "<dt>Sent before</dt><dd>no</dd>" in check
    assert "The customer replied since." in check and 'data-testid="raw-check"' in check
    assert "Approving will fail:" in html and 'data-verdict="fail"' in html


def test_the_queue_page_shows_the_check_of_the_first_pending_rows(park_credit, login, lead, monkeypatch):
    from approvals import views

    run, first = park_credit()
    over = filed_directly(run, {**GOOD, "amount_cents": 40000}, step_seq=60)
    third = filed_directly(run, GOOD, step_seq=61)
    monkeypatch.setattr(views, "REVIEW_ROWS", 2)
    html = login(lead).get("/approvals/").content.decode()

    def row(request):
        part = html[html.index(f'data-request="{request.id}"') :]
        return part[: part.index("</tr>")]

    assert '<span class="chip ok" data-check="ok">Evidence: $40.00 justified</span>' in row(first)
    assert 'data-check="fail"' in row(over)
    assert "The proposed $400.00 is more than the $40.00 the evidence justifies." in row(over)
    assert 'data-testid="row-check"' not in row(third)  # past the first REVIEW_ROWS: open it
    assert "<strong>$400.00</strong>" in row(over) and "USD" not in row(over)


# --- who may see it ---------------------------------------------------------------------


def test_someone_who_may_not_see_the_request_gets_404_and_no_check(
    park_credit, login, token_client, globex_lead, accounts, outsider, operator, monkeypatch
):
    _, request = park_credit()
    calls = []
    tool = get_tool("apply_credit")
    monkeypatch.setitem(
        REGISTRY,
        "apply_credit",
        dataclasses.replace(tool, review=lambda *a: calls.append(a) or tool.review(*a)),
    )
    for user in (globex_lead, accounts, outsider, operator):
        page = login(user).get(f"/approvals/{request.id}/")
        assert page.status_code == 404 and b"ch_0_3b" not in page.content
        api = token_client(user).get(f"/api/v1/approvals/{request.id}")
        assert api.status_code == 404 and "review" not in api.json() and b"ch_0_3b" not in api.content
    # globex's lead holds the queue: the queue page lists nothing of acme's, checks nothing
    queue = login(globex_lead).get("/approvals/").content.decode()
    assert str(request.id) not in queue and "ch_0_3b" not in queue
    assert calls == []


# --- the API ----------------------------------------------------------------------------


def test_the_api_detail_carries_the_review_read_live(park_credit, credit_now, token_client, lead):
    _, request = park_credit()
    api = token_client(lead)
    detail = api.get(f"/api/v1/approvals/{request.id}").json()
    review = detail["review"]
    assert (review["customer"], review["ticket"], review["amount_cents"], review["justified_cents"]) == (
        "C-1001",
        "C-1001-T2",
        4000,
        4000,
    )
    assert review["charges"] == [
        {
            "ref": "ch_0_3b",
            "date": "2026-03-02",
            "amount_cents": 4000,
            "duplicate": True,
            "credited": False,
            "credit_id": None,
            "credited_at": None,
        }
    ]
    assert review["problems"] == [] and review["history"] == []
    # the rest of the contract is unchanged
    assert detail["tool"] == "apply_credit" and detail["amount_cents"] == 4000 and detail["evidence"]
    credit = credit_now()
    review = api.get(f"/api/v1/approvals/{request.id}").json()["review"]
    assert review["charges"][0]["credited"] is True and review["charges"][0]["credit_id"] == credit.pk
    assert [p["code"] for p in review["problems"]] == ["already_credited", "over_amount"]
    assert review["justified_cents"] == 0 and review["history"][0]["credit_id"] == credit.pk
    # the list stays as it was: the check is on the detail only
    listed = api.get("/api/v1/approvals").json()["items"]
    assert listed and all("review" not in item for item in listed)
    schema = api.get("/api/v1/openapi.json").json()["components"]["schemas"]
    assert "review" in schema["ApprovalDetailOut"]["properties"]
    assert "review" not in schema["ApprovalDetailOut"].get("required", [])


def test_the_api_review_is_null_for_a_tool_without_a_hook(low_risk_request, token_client, lead):
    _, request = low_risk_request()
    detail = token_client(lead).get(f"/api/v1/approvals/{request.id}").json()
    assert detail["tool"] == "draft_reply" and detail["review"] is None


# --- the filters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "currency", "expected"),
    [
        (4000, "USD", "$40.00"),
        (49900, "usd", "$499.00"),
        (123456789, "USD", "$1,234,567.89"),
        (-250, "USD", "-$2.50"),
        (4000, "EUR", "40.00 EUR"),
        (None, "USD", ""),
        ("x", "USD", "x"),
    ],
)
def test_cents_reads_as_money(value, currency, expected):
    assert cents(value, currency) == expected


def test_readable_date_reads_days_and_moments():
    from datetime import UTC, date, datetime

    assert readable_date("2026-03-02") == "2 March 2026"
    assert readable_date(date(2026, 2, 3)) == "3 February 2026"
    assert readable_date("2026-12-06T04:17:55.123456+00:00") == "6 Dec 2026, 04:17 UTC"
    assert readable_date("2026-12-06T05:17:00+01:00") == "6 Dec 2026, 04:17 UTC"
    assert readable_date(datetime(2026, 12, 6, 4, 17, tzinfo=UTC)) == "6 Dec 2026, 04:17 UTC"
    assert readable_date("2026-12-06T04:17:00+00:00", "day") == "6 December 2026"
    assert readable_date(None) == "" and readable_date("soon") == "soon"
