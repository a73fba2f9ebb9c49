"""The demo customer system's tables: customers, subscriptions, tickets, the credit ledger
and what the toolkit's writes record (credited charges, reply drafts, account changes).

Every table carries a tenant, and every query on it filters by tenant in code (never in
the prompt). The tables keep the names they had when these models lived in ``agents``
(``db_table``): existing databases kept their rows when the models moved
(support/migrations/0001_initial.py).
"""

from __future__ import annotations

import uuid

import pgtrigger
from django.db import models
from django.db.models import Q


class CustomerStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    SUSPENDED = "suspended", "Suspended"
    CLOSED = "closed", "Closed"


class Customer(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("console.Tenant", on_delete=models.PROTECT, related_name="customers")
    code = models.CharField(max_length=32)  # e.g. C-1001, unique within a tenant
    name = models.CharField(max_length=200)
    email = models.EmailField()
    status = models.CharField(max_length=16, choices=CustomerStatus.choices,
                              default=CustomerStatus.ACTIVE)

    class Meta:
        db_table = "agents_customer"
        ordering = ["tenant", "code"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "code"], name="uniq_customer_tenant_code"),
            models.CheckConstraint(condition=models.Q(status__in=CustomerStatus.values),
                                   name="customer_status_valid"),
        ]

    def __str__(self) -> str:
        return self.code


class Subscription(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("console.Tenant", on_delete=models.PROTECT,
                               related_name="subscriptions")
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="subscriptions")
    plan = models.CharField(max_length=64)
    monthly_price_cents = models.PositiveIntegerField()
    status = models.CharField(max_length=16, default="active")
    started_on = models.DateField()
    # Recent charges, newest last: [{"date": "2026-03-01", "amount_cents": 4000, "ref": ...}]
    charges = models.JSONField(default=list)

    class Meta:
        db_table = "agents_subscription"
        ordering = ["tenant", "customer"]
        indexes = [
            # serves: lookup_subscription (tenant, customer)
            models.Index(fields=["tenant", "customer"], name="subscription_tenant_customer"),
        ]


class Ticket(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("console.Tenant", on_delete=models.PROTECT, related_name="tickets")
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="tickets")
    number = models.CharField(max_length=32)
    subject = models.CharField(max_length=200)
    body = models.TextField()
    created_at = models.DateTimeField()

    class Meta:
        db_table = "agents_ticket"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "number"], name="uniq_ticket_tenant_number"),
        ]
        indexes = [
            # serves: search_tickets (tenant, customer, newest first)
            models.Index(fields=["tenant", "customer", "-created_at"],
                         name="ticket_tenant_customer_created"),
        ]


class CreditLedger(models.Model):
    """Goodwill credits. Append-only; the idempotency key makes a replay a no-op."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey("console.Tenant", on_delete=models.PROTECT, related_name="+")
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="credits")
    amount_cents = models.PositiveIntegerField()
    currency = models.CharField(max_length=3, default="USD")
    reason = models.CharField(max_length=500)
    # the run whose call applied it (the broker's ToolContext.run_pk)
    run = models.ForeignKey("agents.AgentRun", null=True, blank=True, on_delete=models.PROTECT,
                            related_name="credits")
    idempotency_key = models.CharField(max_length=80)
    # the ticket this credit answers (a ticket of the same customer; blank only on rows
    # written before credits needed one)
    ticket_number = models.CharField(max_length=32, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "agents_creditledger"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["idempotency_key"], name="uniq_credit_idempotency_key"),
            models.CheckConstraint(condition=Q(amount_cents__gt=0), name="credit_amount_positive"),
        ]
        indexes = [
            # serves: a customer's credits in a tenant
            models.Index(fields=["tenant", "customer"], name="credit_tenant_customer"),
        ]
        triggers = [
            pgtrigger.Protect(name="credit_ledger_no_update", operation=pgtrigger.Update),
            pgtrigger.Protect(name="credit_ledger_no_delete", operation=pgtrigger.Delete),
        ]


class CreditedCharge(models.Model):
    """A charge a credit makes good. One row per charge, ever: the unique constraint is the
    database's "one credit per charge", whatever the idempotency key or the worker."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey("console.Tenant", on_delete=models.PROTECT, related_name="+")
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="credited_charges")
    credit = models.ForeignKey(CreditLedger, on_delete=models.PROTECT, related_name="charges")
    charge_ref = models.CharField(max_length=64)
    charge_date = models.DateField()
    charge_amount_cents = models.PositiveIntegerField()

    class Meta:
        db_table = "agents_creditedcharge"
        constraints = [
            models.UniqueConstraint(fields=["tenant", "charge_ref"], name="uniq_credited_charge"),
        ]
        indexes = [
            # serves: a customer's credited charges (evidence checks, the reviewer's history)
            models.Index(fields=["tenant", "customer"], name="credited_charge_customer"),
        ]
        triggers = [
            pgtrigger.Protect(name="credited_charge_no_update", operation=pgtrigger.Update),
            pgtrigger.Protect(name="credited_charge_no_delete", operation=pgtrigger.Delete),
        ]


class ReplyDraft(models.Model):
    """A reply the agent drafted for a person to send (write_low)."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey("console.Tenant", on_delete=models.PROTECT, related_name="+")
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="drafts")
    ticket_number = models.CharField(max_length=32, blank=True)
    body = models.TextField()
    run = models.ForeignKey("agents.AgentRun", null=True, blank=True, on_delete=models.PROTECT,
                            related_name="drafts")
    idempotency_key = models.CharField(max_length=80)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "agents_replydraft"
        constraints = [
            models.UniqueConstraint(fields=["idempotency_key"], name="uniq_draft_idempotency_key"),
        ]


class AccountChange(models.Model):
    """A customer status change made by ``update_account_status`` (its idempotency record)."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey("console.Tenant", on_delete=models.PROTECT, related_name="+")
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="status_changes")
    old_status = models.CharField(max_length=16)
    new_status = models.CharField(max_length=16)
    reason = models.CharField(max_length=500)
    run = models.ForeignKey("agents.AgentRun", null=True, blank=True, on_delete=models.PROTECT,
                            related_name="+")
    idempotency_key = models.CharField(max_length=80)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "agents_accountchange"
        constraints = [
            models.UniqueConstraint(fields=["idempotency_key"], name="uniq_account_change_key"),
        ]
