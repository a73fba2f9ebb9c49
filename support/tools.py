"""The support toolkit's tools, backed by its tenant-scoped tables (support.models).
Importing this module registers them (``support.apps`` does, when the app loads).

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

from agents.services.switches import switches_active_for
from agents.tools.registry import ToolContext, ToolError, register
from audit.services import Actor, audit_record
from support.credits import (
    credit_evidence,
    credit_history,
    credited_charges,
    duplicate_groups,
)
from support.models import (
    AccountChange,
    CreditedCharge,
    CreditLedger,
    Customer,
    CustomerStatus,
    ReplyDraft,
    Subscription,
    Ticket,
)

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
    credited = credited_charges(tenant_id=claims.tenant_id, customer=customer)
    for sub in subscriptions_of_customer.order_by("started_on", "pk")[:5]:
        charges = list(sub.charges)[-12:]
        duplicates = duplicate_groups(charges)
        for group in duplicates:
            group["duplicates"] = [
                {
                    "ref": charge.get("ref", ""),
                    "date": charge.get("date"),
                    "amount_cents": charge["amount_cents"],
                    "credited": charge.get("ref") in credited,
                    "credit_id": credited[charge["ref"]].credit_id if charge.get("ref") in credited else None,
                }
                for charge in group["duplicates"]
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
        "recent_credits": credit_history(tenant_id=claims.tenant_id, customer=customer),
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
    committed first always wins (see agents.services.switches.switches_active_for)."""
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


def _credit_problems(tenant_id, arguments: dict[str, Any]) -> list[tuple[str, str]]:
    """The evidence check as the runtime's pre-check (before policy and approval)."""
    return credit_evidence(tenant_id=tenant_id, arguments=arguments).problems


def _credit_review(tenant_id, arguments: dict[str, Any]) -> dict[str, Any]:
    """The evidence check and the customer's credits of the last 90 days, for the reviewer."""
    return credit_evidence(tenant_id=tenant_id, arguments=arguments, history=True).as_dict()


@register(
    name="apply_credit",
    tier="write_high",
    timeout_seconds=5,
    max_attempts=3,
    side_effects=True,
    description=(
        "Apply a goodwill credit (in cents) that makes good duplicate charge(s) named by "
        "reference, for one of the customer's tickets. Refused when the charges do not "
        "justify the amount, were already credited, or are not this customer's."
    ),
    parameters={
        "type": "object",
        "additionalProperties": False,
        "required": ["customer", "amount_cents", "reason", "ticket", "charges"],
        "properties": {
            "customer": CUSTOMER,
            "amount_cents": {"type": "integer", "minimum": 1, "maximum": 10_000_000},
            "currency": {"enum": ["USD"]},
            "reason": {"type": "string", "minLength": 1, "maxLength": 500},
            "ticket": {"type": "string", "minLength": 1, "maxLength": 32,
                       "description": "The customer's ticket this credit answers, e.g. C-1001-T2"},
            "charges": {
                "type": "array",
                "maxItems": 12,
                "uniqueItems": True,
                "items": {"type": "string", "minLength": 1, "maxLength": 64},
                "description": "References of the duplicate charges it makes good "
                "(lookup_subscription: duplicate_charges[].duplicates[].ref)",
            },
        },
    },
    precheck=_credit_problems,
    review=_credit_review,
)
def apply_credit(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    claims = ctx.claims("apply_credit")
    customer = _customer(claims, args["customer"])
    with transaction.atomic():
        _refuse_if_switched("apply_credit")
        entry = CreditLedger.objects.filter(idempotency_key=ctx.idempotency_key).first()
        replayed = entry is not None
        if entry is None:
            # one credit decision per customer at a time: the evidence read below cannot
            # go stale before the insert (the unique charge constraint is the backstop)
            Customer.objects.select_for_update().filter(pk=customer.pk).order_by().first()
            evidence = credit_evidence(tenant_id=claims.tenant_id, arguments=args)
            if evidence.problems:
                code, message = evidence.problems[0]
                raise ToolError(f"apply_credit refused: {message}", failure_class="data", code=code)
            try:
                with transaction.atomic():
                    entry = CreditLedger.objects.create(
                        tenant_id=claims.tenant_id,
                        customer=customer,
                        amount_cents=args["amount_cents"],
                        currency=args.get("currency", "USD"),
                        reason=args["reason"],
                        ticket_number=evidence.ticket.number,
                        run_id=ctx.run_pk,
                        idempotency_key=ctx.idempotency_key,
                    )
                    CreditedCharge.objects.bulk_create(
                        CreditedCharge(
                            tenant_id=claims.tenant_id,
                            customer=customer,
                            credit=entry,
                            charge_ref=charge["ref"],
                            charge_date=charge["date"],
                            charge_amount_cents=charge["amount_cents"],
                        )
                        for charge in evidence.charges
                    )
            except IntegrityError:
                entry = CreditLedger.objects.filter(idempotency_key=ctx.idempotency_key).first()
                if entry is None:  # not our key: another credit took one of the charges
                    raise ToolError(
                        "apply_credit refused: a charge it names was credited at the same moment "
                        "by another call.",
                        failure_class="data",
                        code="already_credited",
                    ) from None
                replayed = True  # a concurrent call with the same key won
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
                        "ticket": entry.ticket_number,
                        "charges": [c["ref"] for c in evidence.charges],
                        "run_id": ctx.run_public_id,
                    },
                )
        if entry.customer_id != customer.pk or entry.amount_cents != args["amount_cents"]:
            raise ToolError(
                "idempotency key reused with different credit arguments",
                failure_class="logic",
                code="idempotency_conflict",
            )
        refs = [c.charge_ref for c in entry.charges.all()]
    _test_hold("apply_credit")
    return {
        "credit_id": entry.pk,
        "customer": customer.code,
        "amount_cents": entry.amount_cents,
        "amount": _dollars(entry.amount_cents),
        "currency": entry.currency,
        "ticket": entry.ticket_number,
        "charges": refs,
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
