"""The runtime's tables. The support toolkit's sample data lives here too.

Every table that holds customer data carries a tenant, and every query on it filters by
tenant in code (never in the prompt).
"""

from __future__ import annotations

import uuid

from django.db import models


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
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "number"], name="uniq_ticket_tenant_number"),
        ]
        indexes = [
            # serves: search_tickets (tenant, customer, newest first)
            models.Index(fields=["tenant", "customer", "-created_at"],
                         name="ticket_tenant_customer_created"),
        ]
