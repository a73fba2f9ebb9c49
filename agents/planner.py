"""The deterministic scripted support planner: the embedded default ``ModelClient``.

It reads only the *user's* message and the structured results of the tools it called
(``ModelRequest.state``), never instructions inside tool results: a ticket that says
"ignore previous instructions" is data. It parses the customer, the amount and the
intent, plans the lookups, the draft and the credit proposal, and reports token usage
(estimated at 4 characters per token) so budgets and costs behave as with a real model.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
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
_UNITS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
          "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
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
    found = [m for m in (_AMOUNT_SIGN_FIRST.search(text), _AMOUNT_WORD_AFTER.search(text),
                         _AMOUNT_IN_WORDS.search(text)) if m]
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


def _dollars(cents: int) -> str:
    return f"${cents / 100:,.2f}"


def _tool(name: str, arguments: dict[str, Any], rationale: str) -> dict[str, Any]:
    return {"type": "tool_call", "tool": name, "arguments": arguments, "rationale": rationale}


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
        done = {obs["tool"]: obs for obs in state.get("observations", []) if obs.get("tool")}

        failed = [obs for obs in done.values() if not obs.get("ok")]
        if failed:
            obs = failed[-1]
            error = (obs.get("error") or {}).get("message", "the tool failed")
            return {
                "type": "handoff",
                "reason": f"{obs['tool']} failed: {error}",
                "summary": f"Could not complete the request: {error}",
            }

        if customer is None:
            if intent == INTENT_QUESTION and "search_tickets" not in done:
                return _tool("search_tickets", {"limit": 5}, "No customer named; list recent tickets.")
            if intent == INTENT_QUESTION:
                count = len(done["search_tickets"]["result"].get("tickets", []))
                return {
                    "type": "final",
                    "message": f"Found {count} recent tickets in this workspace.",
                    "summary": "Listed recent tickets.",
                }
            return {
                "type": "handoff",
                "reason": "no customer code (e.g. C-1001) in the request",
                "summary": "The request names no customer; a person must identify them.",
            }

        if "lookup_subscription" not in done:
            return _tool(
                "lookup_subscription",
                {"customer": customer},
                f"Look up {customer}'s subscription and recent charges.",
            )
        lookup = done["lookup_subscription"]["result"]
        subs = lookup.get("subscriptions", [])
        sub = subs[0] if subs else None

        if "search_tickets" not in done:
            return _tool(
                "search_tickets",
                {"customer": customer, "limit": 5},
                f"Read {customer}'s recent tickets for context.",
            )

        if intent == INTENT_QUESTION:
            if sub is None:
                text = f"{customer} has no subscription."
            else:
                text = (
                    f"{customer} ({lookup.get('name', '')}) is on the {sub['plan']} plan at "
                    f"{sub['monthly_price']}/month, status {lookup.get('status')}."
                )
            tickets = done["search_tickets"]["result"].get("tickets", [])
            text += f" {len(tickets)} recent ticket(s)."
            return {"type": "final", "message": text, "summary": text}

        if intent == INTENT_ACCOUNT:
            target = _account_target(message)
            if "update_account_status" not in done:
                return _tool(
                    "update_account_status",
                    {"customer": customer, "status": target, "reason": f"Requested: {message[:200]}"},
                    f"Set {customer}'s account to {target} as requested.",
                )
            text = f"{customer}'s account is now {done['update_account_status']['result'].get('status')}."
            return {"type": "final", "message": text, "summary": text}

        # billing_refund
        amount = parse_amount_cents(message)
        duplicates = sub.get("duplicate_charges", []) if sub else []
        if amount is None and duplicates:
            amount = duplicates[0]["amount_cents"]
        if amount is None:
            return {
                "type": "handoff",
                "reason": "no amount in the request and no duplicate charge found",
                "summary": f"{customer} asked for a refund; no duplicate charge is visible.",
            }
        evidence = (
            f"duplicate charge in {duplicates[0]['month']} ({duplicates[0]['count']} charges of "
            f"{_dollars(duplicates[0]['amount_cents'])})"
            if duplicates
            else "no duplicate charge visible in the last charges"
        )
        if "draft_reply" not in done:
            body = (
                f"Hello {lookup.get('name', '')}, we are sorry about the {evidence}. We are "
                f"crediting {_dollars(amount)} to your account; you will see it on your next invoice."
            )
            return _tool(
                "draft_reply",
                {"customer": customer, "body": body},
                "Draft the reply for the customer while the credit is reviewed.",
            )
        if "apply_credit" not in done:
            return _tool(
                "apply_credit",
                {
                    "customer": customer,
                    "amount_cents": amount,
                    "currency": "USD",
                    "reason": f"Goodwill refund: {evidence}",
                },
                f"{customer} was billed twice ({evidence}); propose a {_dollars(amount)} credit.",
            )
        credit = done["apply_credit"]["result"]
        text = f"Credited {credit.get('amount', _dollars(amount))} to {customer}; reply drafted."
        return {"type": "final", "message": text, "summary": text}
