"""What a goodwill credit may be: the evidence check ``apply_credit`` runs before it writes.

The invariants live here, in the tool's own code, so a model-driven agent meets them as the
scripted planner does (docs/runtime.md, "Credit invariants"):

- a credit names the ticket it answers and the charge(s) it makes good (``no_evidence``);
- the ticket is one of this customer's, in this tenant (``ticket_not_found``);
- each charge is a *duplicate* charge of this customer's subscriptions in this tenant: a
  second or later charge of one subscription in one month (``charge_not_found``);
- no charge is credited twice, ever, whatever the idempotency key (``already_credited``;
  ``CreditedCharge``'s unique constraint is the last word under concurrency);
- the amount is at most the sum of the named charges (``over_amount``).

``credit_evidence`` reads; it is what the runtime checks a proposal with before it parks
for approval, what the reviewer's page shows, and what the tool checks again (under the
customer's row lock) right before it writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.utils import timezone

from support.models import CreditedCharge, CreditLedger, Customer, Subscription, Ticket

HISTORY_DAYS = 90


def _dollars(cents: int) -> str:
    return f"${cents / 100:,.2f}"


def duplicate_groups(charges: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Months with more than one charge of one subscription. ``duplicates`` are the charges
    after the month's first: the ones a credit can make good."""
    by_month: dict[str, list[dict[str, Any]]] = {}
    for charge in charges:
        by_month.setdefault(str(charge.get("date", ""))[:7], []).append(charge)
    groups = []
    for month, items in by_month.items():
        if len(items) < 2:
            continue
        ordered = sorted(items, key=lambda c: str(c.get("date", "")))
        groups.append(
            {
                "month": month,
                "count": len(items),
                "amount_cents": ordered[-1]["amount_cents"],
                "refs": [c.get("ref", "") for c in ordered],
                "duplicates": ordered[1:],
            }
        )
    return groups


@dataclass
class Evidence:
    """A proposed credit against what the tenant's own tables say."""

    customer: Customer | None
    ticket: Ticket | None
    amount_cents: int | None
    charges: list[dict[str, Any]] = field(default_factory=list)  # the named charges, checked
    justified_cents: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (code, message)
    history: list[dict[str, Any]] = field(default_factory=list)  # credits, last 90 days

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "customer": self.customer.code if self.customer else None,
            "ticket": self.ticket.number if self.ticket else None,
            "amount_cents": self.amount_cents,
            "justified_cents": self.justified_cents,
            "charges": self.charges,
            "problems": [{"code": code, "message": message} for code, message in self.problems],
            "history": self.history,
        }


def credited_charges(*, tenant_id, customer: Customer) -> dict[str, CreditedCharge]:
    """This customer's credited charges by reference (ever)."""
    rows = CreditedCharge.objects.filter(tenant_id=tenant_id, customer=customer).select_related("credit")
    return {row.charge_ref: row for row in rows.order_by()}


def credit_history(*, tenant_id, customer: Customer, days: int = HISTORY_DAYS) -> list[dict[str, Any]]:
    """The customer's credits of the last ``days`` days, newest first."""
    since = timezone.now() - timedelta(days=days)
    credits = (
        CreditLedger.objects.filter(tenant_id=tenant_id, customer=customer, created_at__gte=since)
        .prefetch_related("charges")
        .order_by("-created_at", "-pk")
    )
    return [
        {
            "credit_id": credit.pk,
            "amount_cents": credit.amount_cents,
            "amount": _dollars(credit.amount_cents),
            "charges": [c.charge_ref for c in credit.charges.all()],
            "ticket": credit.ticket_number,
            "reason": credit.reason,
            "created_at": credit.created_at.isoformat(),
        }
        for credit in credits
    ]


def creditable_charges(*, tenant_id, customer: Customer) -> dict[str, dict[str, Any]]:
    """Every duplicate charge of the customer's subscriptions, by reference."""
    found: dict[str, dict[str, Any]] = {}
    subscriptions = Subscription.objects.filter(tenant_id=tenant_id, customer=customer).order_by()
    for charges in subscriptions.values_list("charges", flat=True):
        for group in duplicate_groups(list(charges or [])):
            for charge in group["duplicates"]:
                if charge.get("ref"):
                    found[charge["ref"]] = {**charge, "month": group["month"]}
    return found


def credit_evidence(*, tenant_id, arguments: dict[str, Any], history: bool = False) -> Evidence:
    """Check ``apply_credit`` arguments against the tenant's tables; never raises for bad
    arguments (each problem is listed with its code)."""
    amount = arguments.get("amount_cents")
    evidence = Evidence(customer=None, ticket=None, amount_cents=amount if isinstance(amount, int) else None)
    code = arguments.get("customer")
    customer = (
        Customer.objects.filter(tenant_id=tenant_id, code=code).order_by().first()
        if isinstance(code, str)
        else None
    )
    if customer is None:
        evidence.problems.append(("not_found", f"Customer {code} not found in this tenant."))
        return evidence
    evidence.customer = customer
    if history:
        evidence.history = credit_history(tenant_id=tenant_id, customer=customer)

    number = arguments.get("ticket")
    if not number:
        evidence.problems.append(
            ("no_evidence", "A credit must name the customer's ticket it answers (argument 'ticket').")
        )
    else:
        evidence.ticket = (
            Ticket.objects.filter(tenant_id=tenant_id, customer=customer, number=number).order_by().first()
        )
        if evidence.ticket is None:
            evidence.problems.append(
                ("ticket_not_found", f"Ticket {number} is not a ticket of {customer.code} in this tenant.")
            )

    refs = arguments.get("charges") or []
    if not refs:
        evidence.problems.append(
            (
                "no_evidence",
                "A credit must name the duplicate charge(s) it makes good (argument 'charges'); "
                "lookup_subscription lists them under duplicate_charges.",
            )
        )
        return evidence
    creditable = creditable_charges(tenant_id=tenant_id, customer=customer)
    credited = credited_charges(tenant_id=tenant_id, customer=customer)
    for ref in refs:
        charge = creditable.get(ref)
        row = credited.get(ref)
        entry = {
            "ref": ref,
            "date": charge.get("date") if charge else None,
            "amount_cents": charge["amount_cents"] if charge else None,
            "duplicate": charge is not None,
            "credited": row is not None,
            "credit_id": row.credit_id if row else None,
            "credited_at": row.credit.created_at.isoformat() if row else None,
        }
        evidence.charges.append(entry)
        if charge is None:
            evidence.problems.append(
                (
                    "charge_not_found",
                    f"Charge {ref} is not a duplicate charge of {customer.code} in this tenant; "
                    "only a second charge in one month can be credited.",
                )
            )
        elif row is not None:
            evidence.problems.append(
                (
                    "already_credited",
                    f"Charge {ref} ({_dollars(charge['amount_cents'])} on {charge['date']}) was already "
                    f"credited by credit #{row.credit_id} on {row.credit.created_at:%Y-%m-%d}.",
                )
            )
        else:
            evidence.justified_cents += int(charge["amount_cents"])
    if evidence.amount_cents is not None and evidence.amount_cents > evidence.justified_cents:
        evidence.problems.append(
            (
                "over_amount",
                f"{_dollars(evidence.amount_cents)} is more than the named charges justify "
                f"({_dollars(evidence.justified_cents)} not yet credited).",
            )
        )
    return evidence
