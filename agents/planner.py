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
INTENTS = (INTENT_BILLING, INTENT_ACCOUNT, INTENT_QUESTION)

_CUSTOMER_RE = re.compile(r"\b([A-Z]-\d{4})\b")
_AMOUNT_RE = re.compile(r"\$\s?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{1,2}))?")
_BILLING_WORDS = re.compile(
    r"\b(refund|credit|billed twice|charged twice|double[- ]charged|duplicate)\b", re.I
)
_ACCOUNT_RE = re.compile(r"\b(suspend|close|closed|reactivate|re-activate)\b", re.I)


def parse_customer(text: str) -> str | None:
    match = _CUSTOMER_RE.search(text)
    return match.group(1) if match else None


def parse_amount_cents(text: str) -> int | None:
    match = _AMOUNT_RE.search(text)
    if not match:
        return None
    dollars = int(match.group(1).replace(",", ""))
    cents = int((match.group(2) or "0").ljust(2, "0"))
    return dollars * 100 + cents


def classify_intent(text: str) -> str:
    if _BILLING_WORDS.search(text):
        return INTENT_BILLING
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
