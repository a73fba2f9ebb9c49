"""The support toolkit, backed by tenant-scoped tables.

Every tool verifies its credential first and takes the tenant from the verified claims:
the tenant filter is in the query, whatever the arguments say. A customer code of another
tenant is simply "not found in tenant X". Writes are keyed by the broker's idempotency key,
so calling a write twice with the same key returns the first result.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from django.db import IntegrityError, transaction

from agents.models import (
    AccountChange,
    CreditLedger,
    Customer,
    CustomerStatus,
    ReplyDraft,
    Subscription,
    Ticket,
)
from agents.tools.registry import ToolContext, ToolError, register
from audit.services import Actor, audit_record

CUSTOMER = {"type": "string", "pattern": "^[A-Z]-[0-9]{4}$", "description": "Customer code, e.g. C-1001"}
TICKET_BODY_LIMIT = 500
TRUNCATED = "…[truncated]"


def _customer(claims, code: str) -> Customer:
    # get(), not first(): (tenant, code) is unique, and first() would sort by the model's
    # ordering, which joins the tenant table to sort one row by its slug
    try:
        return Customer.objects.get(tenant_id=claims.tenant_id, code=code)
    except Customer.DoesNotExist:
        raise ToolError(
            f"Customer {code} not found in tenant {claims.tenant_slug}. Check the code "
            "(e.g. C-1001); customers of other tenants are never visible.",
            failure_class="data",
            code="not_found",
        ) from None


def _dollars(cents: int) -> str:
    return f"${cents / 100:,.2f}"


@register(
    name="lookup_subscription",
    tier="read",
    timeout_seconds=5,
    max_attempts=3,
    description="Look up a customer's subscription: plan, monthly price and recent charges.",
    parameters={
        "type": "object",
        "additionalProperties": False,
        "required": ["customer"],
        "properties": {"customer": CUSTOMER},
    },
)
def lookup_subscription(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    claims = ctx.claims("lookup_subscription")
    customer = _customer(claims, args["customer"])
    subscriptions = []
    # one customer's subscriptions, oldest first (the model's ordering would join two
    # tables to sort them by tenant slug and customer code, equal for all of them)
    subscriptions_of_customer = Subscription.objects.filter(tenant_id=claims.tenant_id, customer=customer)
    for sub in subscriptions_of_customer.order_by("started_on", "pk")[:5]:
        charges = list(sub.charges)[-12:]
        by_month: dict[str, list[dict]] = {}
        for charge in charges:
            by_month.setdefault(charge["date"][:7], []).append(charge)
        duplicates = [
            {
                "month": month,
                "count": len(items),
                "amount_cents": items[-1]["amount_cents"],
                "refs": [c.get("ref", "") for c in items],
            }
            for month, items in by_month.items()
            if len(items) > 1
        ]
        subscriptions.append(
            {
                "plan": sub.plan,
                "status": sub.status,
                "monthly_price_cents": sub.monthly_price_cents,
                "monthly_price": _dollars(sub.monthly_price_cents),
                "charges": charges,
                "duplicate_charges": duplicates,
            }
        )
    return {
        "customer": customer.code,
        "name": customer.name,
        "status": customer.status,
        "subscriptions": subscriptions,
    }


@register(
    name="search_tickets",
    tier="read",
    timeout_seconds=5,
    max_attempts=3,
    description="Search the tenant's support tickets, newest first; paginated.",
    parameters={
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "customer": CUSTOMER,
            "query": {"type": "string", "maxLength": 200},
            "limit": {"type": "integer", "minimum": 1, "maximum": 20},
            "cursor": {"type": "string", "pattern": "^[0-9]{1,6}$"},
        },
    },
)
def search_tickets(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    claims = ctx.claims("search_tickets")
    tickets = Ticket.objects.filter(tenant_id=claims.tenant_id).select_related("customer")
    if args.get("customer"):
        tickets = tickets.filter(customer=_customer(claims, args["customer"]))
    if args.get("query"):
        tickets = tickets.filter(body__icontains=args["query"]) | tickets.filter(
            subject__icontains=args["query"]
        )
    limit, offset = args.get("limit", 5), int(args.get("cursor", "0"))
    page = list(tickets.order_by("-created_at", "number")[offset : offset + limit + 1])
    items = []
    for ticket in page[:limit]:
        body = ticket.body
        if len(body) > TICKET_BODY_LIMIT:
            body = body[:TICKET_BODY_LIMIT] + TRUNCATED
        items.append(
            {
                "number": ticket.number,
                "customer": ticket.customer.code,
                "subject": ticket.subject,
                "body": body,
                "created_at": ticket.created_at.isoformat(),
            }
        )
    has_more = len(page) > limit
    return {"tickets": items, "next_cursor": str(offset + limit) if has_more else None}


@register(
    name="draft_reply",
    tier="write_low",
    timeout_seconds=5,
    max_attempts=3,
    side_effects=True,
    description="Save a draft reply to the customer for a person to review and send.",
    parameters={
        "type": "object",
        "additionalProperties": False,
        "required": ["customer", "body"],
        "properties": {
            "customer": CUSTOMER,
            "ticket": {"type": "string", "maxLength": 32},
            "body": {"type": "string", "minLength": 1, "maxLength": 4000},
        },
    },
)
def draft_reply(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    claims = ctx.claims("draft_reply")
    customer = _customer(claims, args["customer"])
    with transaction.atomic():
        draft, created = ReplyDraft.objects.get_or_create(
            idempotency_key=ctx.idempotency_key,
            defaults={
                "tenant_id": claims.tenant_id,
                "customer": customer,
                "run_id": ctx.run_pk,
                "ticket_number": args.get("ticket", ""),
                "body": args["body"],
            },
        )
        if created:
            audit_record(
                actor=Actor.run(ctx.run_public_id),
                action="reply.drafted",
                tenant=claims.tenant_id,
                object_type="reply_draft",
                object_id=draft.pk,
                trace_id=ctx.trace_id,
                payload={"customer": customer.code, "chars": len(args["body"])},
            )
    return {
        "draft_id": draft.pk,
        "customer": customer.code,
        "chars": len(draft.body),
        "replayed": not created,
    }


def _refuse_if_switched(tool: str) -> None:
    """Strict kill-switch check for tools that write the product's own tables: called inside
    the write's transaction, under the switch lock a flip also takes, so a flip that
    committed first always wins (see agents.services.switches_active_for)."""
    from agents.services import switches_active_for

    blocking = [s for s in switches_active_for(tool=tool, strict=True) if s.scope in ("global", "tool")]
    if blocking:
        raise ToolError(
            f"{tool} refused: kill switch {blocking[0]} is engaged ({blocking[0].reason})",
            failure_class="policy",
            code="switch_engaged",
        )


def _test_hold(name: str) -> None:
    """Test-only: block after the write committed while ``$ACP_TEST_HOLD_DIR/hold`` exists.

    The crash-recovery test sets the variable for one worker process, waits for the
    ``reached`` marker and SIGKILLs that worker mid-tool. Unset in production: no effect.
    """
    folder = os.environ.get("ACP_TEST_HOLD_DIR")
    if not folder:
        return
    path = Path(folder)
    (path / f"{name}.reached").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while (path / "hold").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@register(
    name="apply_credit",
    tier="write_high",
    timeout_seconds=5,
    max_attempts=3,
    side_effects=True,
    description="Apply a goodwill credit to a customer's account (in cents).",
    parameters={
        "type": "object",
        "additionalProperties": False,
        "required": ["customer", "amount_cents", "reason"],
        "properties": {
            "customer": CUSTOMER,
            "amount_cents": {"type": "integer", "minimum": 1, "maximum": 10_000_000},
            "currency": {"enum": ["USD"]},
            "reason": {"type": "string", "minLength": 1, "maxLength": 500},
        },
    },
)
def apply_credit(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    claims = ctx.claims("apply_credit")
    customer = _customer(claims, args["customer"])
    with transaction.atomic():
        _refuse_if_switched("apply_credit")
        entry = CreditLedger.objects.filter(idempotency_key=ctx.idempotency_key).first()
        replayed = entry is not None
        if entry is None:
            try:
                with transaction.atomic():
                    entry = CreditLedger.objects.create(
                        tenant_id=claims.tenant_id,
                        customer=customer,
                        amount_cents=args["amount_cents"],
                        currency=args.get("currency", "USD"),
                        reason=args["reason"],
                        run_id=ctx.run_pk,
                        idempotency_key=ctx.idempotency_key,
                    )
            except IntegrityError:  # a concurrent call with the same key won
                entry = CreditLedger.objects.get(idempotency_key=ctx.idempotency_key)
                replayed = True
            if not replayed:
                audit_record(
                    actor=Actor.run(ctx.run_public_id),
                    action="credit.applied",
                    tenant=claims.tenant_id,
                    object_type="credit",
                    object_id=entry.pk,
                    trace_id=ctx.trace_id,
                    payload={
                        "customer": customer.code,
                        "amount_cents": entry.amount_cents,
                        "currency": entry.currency,
                        "run_id": ctx.run_public_id,
                    },
                )
        if entry.customer_id != customer.pk or entry.amount_cents != args["amount_cents"]:
            raise ToolError(
                "idempotency key reused with different credit arguments",
                failure_class="logic",
                code="idempotency_conflict",
            )
    _test_hold("apply_credit")
    return {
        "credit_id": entry.pk,
        "customer": customer.code,
        "amount_cents": entry.amount_cents,
        "amount": _dollars(entry.amount_cents),
        "currency": entry.currency,
        "replayed": replayed,
    }


@register(
    name="update_account_status",
    tier="write_high",
    timeout_seconds=5,
    max_attempts=3,
    side_effects=True,
    description="Change a customer's account status (active, suspended, closed).",
    parameters={
        "type": "object",
        "additionalProperties": False,
        "required": ["customer", "status", "reason"],
        "properties": {
            "customer": CUSTOMER,
            "status": {"enum": list(CustomerStatus.values)},
            "reason": {"type": "string", "minLength": 1, "maxLength": 500},
        },
    },
)
def update_account_status(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    claims = ctx.claims("update_account_status")
    with transaction.atomic():
        _refuse_if_switched("update_account_status")
        customer = (
            Customer.objects.select_for_update()
            .filter(tenant_id=claims.tenant_id, code=args["customer"])
            .first()
        )
        if customer is None:
            _customer(claims, args["customer"])  # raises the not-found error
        change = AccountChange.objects.filter(idempotency_key=ctx.idempotency_key).first()
        if change is None:
            change = AccountChange.objects.create(
                tenant_id=claims.tenant_id,
                customer=customer,
                old_status=customer.status,
                new_status=args["status"],
                reason=args["reason"],
                run_id=ctx.run_pk,
                idempotency_key=ctx.idempotency_key,
            )
            Customer.objects.filter(pk=customer.pk).update(status=args["status"])
            audit_record(
                actor=Actor.run(ctx.run_public_id),
                action="account.status_changed",
                tenant=claims.tenant_id,
                object_type="customer",
                object_id=customer.code,
                trace_id=ctx.trace_id,
                payload={"from": change.old_status, "to": change.new_status, "reason": args["reason"]},
            )
    return {"customer": customer.code, "old_status": change.old_status, "status": change.new_status}
