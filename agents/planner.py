"""The deterministic scripted support planner: the embedded default ``ModelClient``.

It reads only the *user's* message and the structured results of the tools it called
(``ModelRequest.state``), never instructions inside tool results: a ticket that says
"ignore previous instructions" is data. It parses the customer, the amount and the
intent, plans the lookups, the credit proposal and the reply, and reports token usage
(estimated at 4 characters per token) so budgets and costs behave as with a real model.

A credit is proposed only as the evidence supports (duplicate charges not yet credited,
a ticket of the customer's to link it to), and the reply is drafted after the decision,
worded for what happened. docs/runtime.md, "Scripted planner", has the rules.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from agents.llm.base import ModelRequest, ModelResponse

MODEL_NAME = "scripted-support-planner-v1"
# A nominal price so cost budgets and the tenant's daily cap are exercised end to end.
PRICE_PER_1K_TOKENS_USD = Decimal("0.002")

INTENT_BILLING = "billing_refund"
INTENT_ACCOUNT = "account_status"
INTENT_QUESTION = "general_question"
INTENT_CANCEL = "cancellation"
INTENT_TICKET = "ticket_status"
INTENT_DISCOUNT = "discount_request"
INTENTS = (INTENT_BILLING, INTENT_ACCOUNT, INTENT_QUESTION, INTENT_CANCEL, INTENT_TICKET, INTENT_DISCOUNT)

# --- reading the message ---------------------------------------------------------------
# Customer codes in any case ("c-1005"): the tools' schema wants ^[A-Z]-[0-9]{4}$.
_CUSTOMER_RE = re.compile(r"\b([A-Za-z])-(\d{4})\b")
_TICKET_NUMBER_RE = re.compile(r"\b([A-Za-z]-\d{4}-T\d{1,6})\b", re.I)
# Money needs a currency marker ("$25", "US$25", "USD 25", "25 dollars", "25 bucks",
# "25 USD"): a bare number is a count ("charged 2x", "2 times"), a date ("March 2",
# "2026-03-02") or part of a code ("C-1004"), never an amount.
_NUMBER = r"(?P<units>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<cents>\d{1,2}))?(?!\d)"
_AMOUNT_SIGN_FIRST = re.compile(r"(?:\bUS\s?\$|\$|\bUSD)\s?" + _NUMBER + r"(?P<thousands>k\b)?", re.I)
_AMOUNT_WORD_AFTER = re.compile(r"(?<![\w.,$-])" + _NUMBER + r"\s?(?:dollars?|bucks|usd)\b", re.I)
# "forty dollars", "twenty-five bucks": whole dollars from 1 to 99 in words. Larger ones
# ("a hundred and forty dollars") are not read, rather than read as $40.
_UNITS = tuple(
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split()
)
_TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_WORD_VALUES = {word: n for n, word in enumerate(_UNITS, 1)} | {w: 10 * n for n, w in enumerate(_TENS, 2)}
_TENS_ALT, _DIGIT_ALT, _UNITS_ALT = "|".join(_TENS), "|".join(_UNITS[:9]), "|".join(_UNITS)
_AMOUNT_IN_WORDS = re.compile(
    r"(?<!hundred )(?<!thousand )(?<!and )"
    rf"\b(?:(?P<tens>{_TENS_ALT})(?:[- ](?P<unit>{_DIGIT_ALT}))?|(?P<small>{_UNITS_ALT}))"
    r"\s+(?:dollars?|bucks)\b",
    re.I,
)

_TICKET_STATUS_RE = re.compile(
    r"\b(?:status|updates?|news|progress|answered|replied|responded|heard back|hear back"
    r"|any (?:reply|response|answer)|no (?:reply|response|answer)|follow(?:ed)?[- ]?up"
    r"|looked at|still open|resolved|been closed"
    r"|(?:anyone|someone|somebody|you)\s+(?:yet\s+)?(?:reply|respond|answer|look at))\b",
    re.I,
)
_TICKET_NOUN_RE = re.compile(r"\b(?:tickets?|cases?|complaints?)\b", re.I)
# "what's the status of my refund", "any update on my request": a status question, not a
# new refund request
_REQUEST_STATUS_RE = re.compile(
    r"\b(?:status of|updates? on|news on|progress on|any (?:update|news))\b[^.?!]{0,40}"
    r"\b(?:refund|request|credit)\b",
    re.I,
)
# "cancel my subscription", "I want to cancel"; not "I cancelled but ..." (past: a billing
# story) nor "cancel the duplicate charge" (a refund)
_CANCEL_RE = re.compile(
    r"\b(?:cancel|cancell?ing|cancell?ation|unsubscribe|terminate)\b"
    r"(?!\s+(?:the|that|this|a|one|my|our|their)?\s*(?:duplicate|double|extra|second|last)?\s*"
    r"(?:charges?|payments?|transactions?|invoices?)\b)"
    r"|\b(?:end|stop|close|quit)\s+(?:my|our|the|their|his|her)\s+(?:subscription|membership|contract|plan)\b",
    re.I,
)
_BILLING_RE = re.compile(
    r"\b(?:refunds?|refunded|refunding|reimburs\w*|chargebacks?|credit(?![\s-]*cards?\b)s?|credited"
    r"|duplicates?|duplicated|over-?charged?|over-?charging|over-?billed"
    r"|double[- ]?(?:billed|charged|charges?|billing|payments?)"
    r"|money back|(?:wrong|incorrect|extra|unexpected) (?:charges?|payments?)|charged too much"
    r"|(?:charged|billed|paid|debited|took|taken|charging|billing)\b[^.?!]{0,40}?"
    r"\b(?:twice|two times|2 times|2x|x2|double|three times|3 times|3x|again))(?!\w)",
    re.I,
)
# "wants $5000 back", "give them their 25 dollars back": an amount to return
_MONEY_BACK_RE = re.compile(r"\b(?:back|returned?|reimburse)\b", re.I)
_DISCOUNT_RE = re.compile(
    r"\b(?:discounts?|discounted|coupons?|promo(?:tion(?:al)?)?(?: codes?)?|vouchers?|cheaper"
    r"|lower(?:[- ]priced| (?:the |my |our |their )?(?:price|rate|bill|cost))"
    r"|reduced? (?:the |my |our |their )?(?:price|rate|bill|cost)|price (?:cut|reduction|match)"
    r"|too expensive|special (?:offer|deal|price|rate|pricing)|better (?:price|deal|rate)"
    r"|loyalty (?:offer|pricing))\b",
    re.I,
)
_ACCOUNT_RE = re.compile(r"\b(suspend|close|closed|reactivate|re-activate)\b", re.I)


def parse_customer(text: str) -> str | None:
    """The first customer code in the text, upper case ("c-1005" -> "C-1005")."""
    match = _CUSTOMER_RE.search(text)
    return f"{match.group(1).upper()}-{match.group(2)}" if match else None


def parse_ticket_number(text: str) -> str | None:
    match = _TICKET_NUMBER_RE.search(text)
    return match.group(1).upper() if match else None


def parse_amount_cents(text: str) -> int | None:
    """The first amount of money in the text, in cents; None when there is none.

    "$25", "$12.50", "$1,200", "$5k", "US$25", "USD 25", "25 USD", "25 dollars", "25 bucks",
    "forty dollars".
    """
    found = [
        m
        for m in (
            _AMOUNT_SIGN_FIRST.search(text),
            _AMOUNT_WORD_AFTER.search(text),
            _AMOUNT_IN_WORDS.search(text),
        )
        if m
    ]
    if not found:
        return None
    match = min(found, key=lambda m: m.start())
    if match.re is _AMOUNT_IN_WORDS:
        words = [w.lower() for w in match.group("tens", "unit", "small") if w]
        return sum(_WORD_VALUES[w] for w in words) * 100
    units = int(match.group("units").replace(",", ""))
    cents = units * 100 + int((match.group("cents") or "0").ljust(2, "0"))
    if match.groupdict().get("thousands"):
        cents *= 1000
    return cents or None


def classify_intent(text: str) -> str:
    """The request's intent from its wording. Order matters: a status question about a
    refund is not a new refund, a cancellation wins over the refund it may mention, and
    a refund over a discount."""
    if (_TICKET_STATUS_RE.search(text) and (_TICKET_NOUN_RE.search(text) or parse_ticket_number(text))) or (
        _REQUEST_STATUS_RE.search(text)
    ):
        return INTENT_TICKET
    if _CANCEL_RE.search(text):
        return INTENT_CANCEL
    if _BILLING_RE.search(text) or (parse_amount_cents(text) is not None and _MONEY_BACK_RE.search(text)):
        return INTENT_BILLING
    if _DISCOUNT_RE.search(text):
        return INTENT_DISCOUNT
    if _ACCOUNT_RE.search(text):
        return INTENT_ACCOUNT
    return INTENT_QUESTION


def _account_target(text: str) -> str:
    lowered = text.lower()
    if "reactivate" in lowered or "re-activate" in lowered:
        return "active"
    if "close" in lowered:
        return "closed"
    return "suspended"


# --- wording ---------------------------------------------------------------------------

_MONTHS = tuple(
    "January February March April May June July August September October November December".split()
)


def _dollars(cents: int) -> str:
    return f"${cents / 100:,.2f}"


def human_date(value: Any) -> str:
    """'2026-03-02' or an ISO timestamp as a person reads it: '2 March 2026'."""
    text = str(value or "")
    try:
        day = date.fromisoformat(text[:10])
    except ValueError:
        return text
    return f"{day.day} {_MONTHS[day.month - 1]} {day.year}"


def _human_month(value: str) -> str:
    """'2026-03' -> 'March 2026'."""
    return human_date(f"{value}-01").split(" ", 1)[-1] if len(value) == 7 else value


def _tool(name: str, arguments: dict[str, Any], rationale: str) -> dict[str, Any]:
    return {"type": "tool_call", "tool": name, "arguments": arguments, "rationale": rationale}


def _final(message: str, summary: str = "") -> dict[str, Any]:
    return {"type": "final", "message": message, "summary": summary or message}


def _handoff(reason: str, summary: str) -> dict[str, Any]:
    return {"type": "handoff", "reason": reason, "summary": summary}


def _greeting(lookup: dict[str, Any]) -> str:
    name = lookup.get("name") or ""
    return f"Hello {name}," if name else "Hello,"


# --- the billing evidence --------------------------------------------------------------


@dataclass(frozen=True)
class DuplicateCharge:
    """One charge beyond the first of its month (lookup_subscription's
    ``duplicate_charges[].duplicates[]``): the charges a credit can make good."""

    ref: str
    date: str
    amount_cents: int
    month: str
    count: int  # charges in that month
    credited: bool
    credit_id: Any = None


def duplicate_charges(lookup: dict[str, Any]) -> list[DuplicateCharge]:
    found = []
    for sub in lookup.get("subscriptions") or []:
        for group in sub.get("duplicate_charges") or []:
            for charge in group.get("duplicates") or []:
                found.append(
                    DuplicateCharge(
                        ref=str(charge.get("ref", "")),
                        date=str(charge.get("date", "")),
                        amount_cents=int(charge.get("amount_cents") or 0),
                        month=str(group.get("month", "")),
                        count=int(group.get("count") or 2),
                        credited=bool(charge.get("credited")),
                        credit_id=charge.get("credit_id"),
                    )
                )
    return [charge for charge in found if charge.ref and charge.amount_cents > 0]


def _charges_text(charges: list[DuplicateCharge], *, human: bool = False) -> str:
    """'duplicate charge ch_0_3b on 2026-03-02', or the charges' list; ``human``: '... of 2
    March 2026 (reference ch_0_3b)'."""
    if human and all(c.date for c in charges):
        items = [f"{human_date(c.date)} (reference {c.ref})" for c in charges]
        noun = "duplicate charge of" if len(charges) == 1 else "duplicate charges of"
    elif human:
        items = [c.ref for c in charges]
        noun = "duplicate charge" if len(charges) == 1 else "duplicate charges"
    else:
        items = [f"{c.ref} on {c.date}" if c.date else c.ref for c in charges]
        noun = "duplicate charge" if len(charges) == 1 else "duplicate charges"
    listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return f"{noun} {listed}"


@dataclass(frozen=True)
class CreditProposal:
    amount_cents: int
    charges: list[DuplicateCharge]
    requested_cents: int | None
    justified_cents: int  # every creditable charge together

    def note(self) -> str:
        """What the reviewer should know about the amount against the request."""
        evidence = _charges_text(self.charges)
        if self.requested_cents is not None and self.requested_cents > self.justified_cents:
            return (
                f"customer asked for {_dollars(self.requested_cents)}; the evidence supports "
                f"{_dollars(self.justified_cents)} ({evidence})"
            )
        if self.requested_cents is not None and self.requested_cents < self.justified_cents:
            charged = sum(c.amount_cents for c in self.charges)
            return (
                f"customer asked for {_dollars(self.requested_cents)}; proposing it against the "
                f"{evidence} ({_dollars(charged)})"
            )
        return f"the evidence supports {_dollars(self.amount_cents)} ({evidence})"


def credit_proposal(requested_cents: int | None, creditable: list[DuplicateCharge]) -> CreditProposal:
    """Only what the evidence supports: the requested amount when the creditable charges
    cover it (against the one charge that covers it, else the fewest in date order), all of
    them when nothing or more was asked."""
    justified = sum(c.amount_cents for c in creditable)
    if requested_cents is None or requested_cents >= justified:
        return CreditProposal(justified, list(creditable), requested_cents, justified)
    covering = [c for c in creditable if c.amount_cents >= requested_cents]
    if covering:
        one = min(covering, key=lambda c: (c.amount_cents, c.date, c.ref))
        return CreditProposal(requested_cents, [one], requested_cents, justified)
    chosen: list[DuplicateCharge] = []
    for charge in sorted(creditable, key=lambda c: (c.date, c.ref)):
        chosen.append(charge)
        if sum(c.amount_cents for c in chosen) >= requested_cents:
            break
    return CreditProposal(requested_cents, chosen, requested_cents, justified)


_BILLING_TICKET_STRONG = re.compile(r"\b(?:billed|refunds?|refunded|duplicates?|twice|double)\b", re.I)
_BILLING_TICKET_WEAK = re.compile(r"\b(?:billing|charged?|charges|invoices?)\b", re.I)


def billing_ticket(tickets: list[dict[str, Any]], customer: str, wanted: str | None = None) -> dict | None:
    """The customer's ticket a credit answers: the one the message names, else the newest
    that asks about a duplicate or a refund, else the newest about a charge, else their
    newest. None when they have none."""
    own = [t for t in tickets if t.get("customer") == customer and t.get("number")]
    for ticket in own:
        if wanted and ticket["number"].upper() == wanted:
            return ticket
    for pattern in (_BILLING_TICKET_STRONG, _BILLING_TICKET_WEAK, None):
        matching = [
            t for t in own if pattern is None or pattern.search(f"{t.get('subject', '')} {t.get('body', '')}")
        ]
        if matching:
            return max(matching, key=lambda t: str(t.get("created_at", "")))
    return None


def _account_facts(customer: str, lookup: dict[str, Any]) -> str:
    """The facts a person taking over needs: plan, price, statuses, recent credits."""
    name = lookup.get("name")
    parts = [f"{customer} {name}: account" if name else f"{customer}: account"]
    parts[0] += f" {lookup.get('status', 'unknown')}"
    subs = lookup.get("subscriptions") or []
    for sub in subs:
        parts.append(
            f"{sub.get('plan')} plan at {sub.get('monthly_price')}/month, subscription {sub.get('status')}"
        )
    if not subs:
        parts.append("no subscription")
    credits = lookup.get("recent_credits") or []
    if credits:
        latest = credits[0]
        parts.append(
            f"{len(credits)} credit(s) in the last 90 days, latest {latest.get('amount')} "
            f"on {human_date(latest.get('created_at'))}"
        )
    return "; ".join(parts)


def _credited_on(lookup: dict[str, Any], credit_id: Any) -> str:
    for credit in lookup.get("recent_credits") or []:
        if credit_id is not None and credit.get("credit_id") == credit_id:
            return human_date(credit.get("created_at"))
    return ""


@dataclass(frozen=True)
class _Turn:
    """What one planning turn reads: the message, its customer, the tools' last observations."""

    message: str
    customer: str | None
    done: dict[str, dict[str, Any]]
    order: dict[str, int]

    def after(self, tool: str, other: str) -> bool:
        """Did ``tool`` last run after ``other``'s last run?"""
        return tool in self.order and self.order[tool] > self.order.get(other, -1)


class ScriptedSupportPlanner:
    """Plans the support scenario from structured state. Deterministic: same state, same action."""

    def __init__(self, *, name: str = MODEL_NAME):
        self.name = name

    def complete(self, request: ModelRequest) -> ModelResponse:
        began = time.perf_counter()
        action = self.plan(request.state)
        prompt = json.dumps(request.messages, sort_keys=True, default=str)
        raw = json.dumps(action, sort_keys=True)
        prompt_tokens = max(1, len(prompt) // 4)
        completion_tokens = max(1, len(raw) // 4)
        cost = Decimal(prompt_tokens + completion_tokens) * PRICE_PER_1K_TOKENS_USD / 1000
        return ModelResponse(
            action=action,
            model=self.name,
            route="scripted",
            raw=raw,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=float(cost.quantize(Decimal("0.000001"))),
            latency_ms=(time.perf_counter() - began) * 1000,
            prompt_hash=hashlib.sha256(prompt.encode()).hexdigest(),
        )

    # -- the plan ---------------------------------------------------------------------

    def plan(self, state: dict[str, Any]) -> dict[str, Any]:
        message = state.get("message", "")
        intent = state.get("intent") or classify_intent(message)
        customer = parse_customer(message)
        observations = [obs for obs in state.get("observations", []) if obs.get("tool")]
        turn = _Turn(
            message=message,
            customer=customer,
            done={obs["tool"]: obs for obs in observations},
            order={obs["tool"]: index for index, obs in enumerate(observations)},
        )

        credit = turn.done.get("apply_credit")
        if credit is not None and not credit.get("ok"):
            return self._credit_not_made(turn, credit)
        failed = [obs for obs in turn.done.values() if not obs.get("ok")]
        if failed:
            obs = failed[-1]
            error = (obs.get("error") or {}).get("message", "the tool failed")
            return _handoff(f"{obs['tool']} failed: {error}", f"Could not complete the request: {error}")
        unreadable = [
            obs["tool"] for obs in turn.done.values() if (obs.get("result") or {}).get("truncated") is True
        ]
        if unreadable:
            return _handoff(
                f"{unreadable[0]} returned more than the planner reads; a person must review",
                "A tool result was too large to read in full.",
            )

        if customer is None:
            return self._no_customer(intent, turn)
        if intent == INTENT_TICKET:
            return self._ticket_status(turn)

        if "lookup_subscription" not in turn.done:
            return _tool(
                "lookup_subscription",
                {"customer": customer},
                f"Look up {customer}'s subscription and recent charges.",
            )
        lookup = turn.done["lookup_subscription"]["result"]
        if intent == INTENT_CANCEL:
            return self._cancellation(turn, lookup)
        if intent == INTENT_DISCOUNT:
            return self._discount(turn, lookup)

        if "search_tickets" not in turn.done:
            return _tool(
                "search_tickets",
                {"customer": customer, "limit": 5},
                f"Read {customer}'s recent tickets for context.",
            )
        tickets = turn.done["search_tickets"]["result"].get("tickets", [])
        if intent == INTENT_BILLING:
            return self._billing(turn, lookup, tickets)
        if intent == INTENT_ACCOUNT:
            return self._account(turn)
        subs = lookup.get("subscriptions", [])
        if not subs:
            text = f"{customer} has no subscription."
        else:
            text = (
                f"{customer} ({lookup.get('name', '')}) is on the {subs[0]['plan']} plan at "
                f"{subs[0]['monthly_price']}/month, status {lookup.get('status')}."
            )
        text += f" {len(tickets)} recent ticket(s)."
        return _final(text)

    # -- requests a person handles, answers from the tools ----------------------------

    def _no_customer(self, intent: str, turn: _Turn) -> dict[str, Any]:
        if intent == INTENT_QUESTION:
            if "search_tickets" not in turn.done:
                return _tool("search_tickets", {"limit": 5}, "No customer named; list recent tickets.")
            count = len(turn.done["search_tickets"]["result"].get("tickets", []))
            return _final(f"Found {count} recent tickets in this workspace.", "Listed recent tickets.")
        if intent == INTENT_CANCEL:
            return _handoff(
                "cancellation requested with no customer code (e.g. C-1001); no tool cancels a "
                "subscription, a person must identify the customer and handle it",
                "A cancellation request that names no customer.",
            )
        if intent == INTENT_DISCOUNT:
            return _handoff(
                "discount requested with no customer code (e.g. C-1001); discounts are decided by a person",
                "A discount request that names no customer.",
            )
        if intent == INTENT_TICKET:
            return _handoff(
                "ticket status asked with no customer code or ticket number (e.g. C-1001-T2); "
                "a person must identify the customer",
                "A ticket status question that names no customer or ticket.",
            )
        return _handoff(
            "no customer code (e.g. C-1001) in the request",
            "The request names no customer; a person must identify them.",
        )

    def _ticket_status(self, turn: _Turn) -> dict[str, Any]:
        customer, wanted = turn.customer, parse_ticket_number(turn.message)
        if "search_tickets" not in turn.done:
            return _tool(
                "search_tickets",
                {"customer": customer, "limit": 20 if wanted else 5},
                f"Find {wanted or 'the recent tickets'} of {customer} to answer the status question.",
            )
        tickets = [
            t
            for t in turn.done["search_tickets"]["result"].get("tickets", [])
            if t.get("customer") == customer
        ]
        if wanted:
            tickets = [t for t in tickets if str(t.get("number", "")).upper() == wanted]
            if not tickets:
                return _handoff(
                    f"ticket {wanted} was not found among {customer}'s tickets; a person must check",
                    f"{customer} asked about ticket {wanted}, which search_tickets did not find.",
                )
        if not tickets:
            return _final(f"{customer} has no support tickets on file.")
        listed = "; ".join(
            f'{t["number"]} "{t.get("subject", "")}", opened {human_date(t.get("created_at"))}'
            for t in tickets
        )
        if wanted:
            text = f"Ticket {listed} ({customer})."
        else:
            text = f"{customer} has {len(tickets)} ticket(s) on file, newest first: {listed}."
        text += " Replies are not recorded with the tickets here."
        return _final(text)

    def _cancellation(self, turn: _Turn, lookup: dict[str, Any]) -> dict[str, Any]:
        facts = _account_facts(turn.customer, lookup)
        asked = parse_amount_cents(turn.message)
        also = f" The request also mentions {_dollars(asked)}." if asked else ""
        return _handoff(
            f"cancellation requested: no tool cancels a subscription, a person must handle it ({facts})",
            f"{turn.customer} asks to cancel. {facts}.{also}",
        )

    def _discount(self, turn: _Turn, lookup: dict[str, Any]) -> dict[str, Any]:
        facts = _account_facts(turn.customer, lookup)
        return _handoff(
            f"discount requested: discounts are decided by a person ({facts})",
            f"{turn.customer} asks for a discount or a lower price. {facts}.",
        )

    def _account(self, turn: _Turn) -> dict[str, Any]:
        customer, message = turn.customer, turn.message
        target = _account_target(message)
        if "update_account_status" not in turn.done:
            return _tool(
                "update_account_status",
                {"customer": customer, "status": target, "reason": f"Requested: {message[:200]}"},
                f"Set {customer}'s account to {target} as requested.",
            )
        return _final(
            f"{customer}'s account is now {turn.done['update_account_status']['result'].get('status')}."
        )

    # -- billing: a credit only as the evidence supports, the reply after the decision --

    def _billing(self, turn: _Turn, lookup: dict[str, Any], tickets: list[dict[str, Any]]) -> dict[str, Any]:
        customer = turn.customer
        if "apply_credit" in turn.done:  # made (a failure was handled before)
            return self._credit_made(turn, lookup)
        duplicates = duplicate_charges(lookup)
        asked = parse_amount_cents(turn.message)
        asked_text = f" ({_dollars(asked)})" if asked else ""
        if not duplicates:
            return _handoff(
                "no duplicate charge in the last charges; a person must review",
                f"{customer} asked for a refund{asked_text}; lookup_subscription shows no duplicate "
                f"charge. {_account_facts(customer, lookup)}.",
            )
        ticket = billing_ticket(tickets, customer, parse_ticket_number(turn.message))
        creditable = [c for c in duplicates if not c.credited]
        if not creditable:
            return self._already_credited(turn, lookup, duplicates, ticket)
        if ticket is None:
            return _handoff(
                "no ticket to link the credit to; a person must review",
                f"{customer} has {_charges_text(creditable)} not yet credited, but no ticket.",
            )
        proposal = credit_proposal(asked, creditable)
        months = sorted({c.month for c in proposal.charges})
        if len(proposal.charges) == 1:
            times = "twice" if proposal.charges[0].count == 2 else f"{proposal.charges[0].count} times"
            story = f"{customer} was billed {times} in {_human_month(months[0])}"
        else:
            story = f"{customer} was billed more than once in {' and '.join(_human_month(m) for m in months)}"
        return _tool(
            "apply_credit",
            {
                "customer": customer,
                "amount_cents": proposal.amount_cents,
                "currency": "USD",
                "reason": f"Refund of the {_charges_text(proposal.charges)}; ticket {ticket['number']}"[:500],
                "ticket": ticket["number"],
                "charges": [c.ref for c in proposal.charges],
            },
            f"{story}: {proposal.note()}. Propose a {_dollars(proposal.amount_cents)} credit for "
            f"ticket {ticket['number']}.",
        )

    def _already_credited(
        self, turn: _Turn, lookup, duplicates: list[DuplicateCharge], ticket
    ) -> dict[str, Any]:
        """Every duplicate was credited before: never a second credit; say so."""
        customer = turn.customer
        dates = {_credited_on(lookup, c.credit_id) for c in duplicates} - {""}
        when = f" on {dates.pop()}" if len(dates) == 1 else ""
        total = _dollars(sum(c.amount_cents for c in duplicates))
        if "draft_reply" not in turn.done:
            body = (
                f"{_greeting(lookup)}\n\nthe {_charges_text(duplicates, human=True)} was already "
                f"refunded{when} ({total}), so there is nothing more to credit for it. If you see another "
                "charge you do not recognise, reply to this message.\n"
            )
            arguments = {"customer": customer, "body": body}
            if ticket:
                arguments["ticket"] = ticket["number"]
            return _tool(
                "draft_reply",
                arguments,
                f"No new credit: {_charges_text(duplicates)} already credited{when}; tell the customer.",
            )
        text = (
            f"No new credit for {customer}: the {_charges_text(duplicates)} ({total}) was already "
            f"credited{when}; reply drafted."
        )
        return _final(text)

    def _credit_made(self, turn: _Turn, lookup: dict[str, Any]) -> dict[str, Any]:
        """The credit was approved and applied: the reply says what was credited."""
        obs = turn.done["apply_credit"]
        result, arguments = obs.get("result") or {}, obs.get("arguments") or {}
        amount = _dollars(int(result.get("amount_cents") or arguments.get("amount_cents") or 0))
        ticket = result.get("ticket") or arguments.get("ticket")
        refs = list(result.get("charges") or arguments.get("charges") or [])
        known = {c.ref: c for c in duplicate_charges(lookup)}
        charges = [known.get(ref) or DuplicateCharge(ref, "", 0, "", 2, True) for ref in refs]
        if not turn.after("draft_reply", "apply_credit"):
            what = f" for the {_charges_text(charges, human=True)}" if charges else ""
            body = (
                f"{_greeting(lookup)}\n\nwe have credited {amount} to your account{what}. "
                "We are sorry for the trouble.\n"
            )
            arguments = {"customer": turn.customer, "body": body}
            if ticket:
                arguments["ticket"] = ticket
            return _tool("draft_reply", arguments, f"The {amount} credit was applied; tell the customer.")
        what = f" for the {_charges_text(charges)}" if charges else ""
        return _final(f"Credited {amount} to {turn.customer}{what} (ticket {ticket}); reply drafted.")

    def _credit_not_made(self, turn: _Turn, obs: dict[str, Any]) -> dict[str, Any]:
        """apply_credit did not run. Rejected by a reviewer or denied by policy (the
        runtime's closing turn): a reply that promises nothing, then final. Anything else
        (the tool's evidence checks, errors): a person takes over, no reply."""
        error = obs.get("error") or {}
        closed = obs.get("decision") in ("rejected", "deny") or error.get("code") in ("rejected", "denied")
        message = error.get("message", "the tool failed")
        if not closed:
            return _handoff(f"apply_credit failed: {message}", f"No credit was made: {message}")
        if turn.after("draft_reply", "apply_credit"):
            draft = turn.done["draft_reply"]
            if not draft.get("ok"):
                failure = (draft.get("error") or {}).get("message", "the tool failed")
                return _handoff(
                    f"draft_reply failed: {failure}", f"No credit was made ({message}); no reply drafted."
                )
            return _final(f"No credit for {turn.customer}: {message}. A reply saying so is drafted.")
        lookup = (turn.done.get("lookup_subscription") or {}).get("result") or {}
        body = (
            f"{_greeting(lookup)}\n\nwe reviewed your request and are not able to issue a credit at "
            "this time. If you have questions about your charges, reply to this message.\n"
        )
        arguments = {"customer": obs.get("arguments", {}).get("customer") or turn.customer, "body": body}
        if obs.get("arguments", {}).get("ticket"):
            arguments["ticket"] = obs["arguments"]["ticket"]
        return _tool("draft_reply", arguments, "No credit was made; tell the customer without promising one.")
