"""Tenant daily spend: reserve before a model call, settle after it (both on the step path)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.functions import Least
from django.utils import timezone

from agents import hotsql
from agents.models import TenantBudget, TenantSpend


def spend_daily_cap(tenant_id) -> Decimal:
    """The tenant's daily spend cap: its ``TenantBudget`` row, else
    ``AGENT_TENANT_DAILY_CAP_USD`` (the console's cost page shows it)."""
    cap = TenantBudget.objects.filter(tenant_id=tenant_id).values_list("daily_cap_usd", flat=True).first()
    return cap if cap is not None else Decimal(str(settings.AGENT_TENANT_DAILY_CAP_USD))


def spend_reserve(*, tenant_id, amount: Decimal) -> tuple[bool, TenantSpend]:
    """Reserve ``amount`` of today's cap before a model call (a conditional UPDATE, so
    concurrent runs cannot overspend). Returns (reserved?, the day's row)."""
    day = timezone.now().date()
    known = _SPEND_ROWS.get((str(tenant_id), day))
    if known is not None:
        # the usual case: one conditional UPDATE, no read (hand-written on PostgreSQL)
        added = hotsql.spend_add(spend_id=known.pk, tenant_id=tenant_id, day=day, amount=amount)
        if added is None:
            added = TenantSpend.objects.filter(
                pk=known.pk, tenant_id=tenant_id, day=day, spent_usd__lte=F("cap_usd") - amount
            ).update(spent_usd=F("spent_usd") + amount)
        if added:
            return True, known
    row = TenantSpend.objects.filter(tenant_id=tenant_id, day=day).first()
    if row is None:
        try:
            with transaction.atomic():
                row = TenantSpend.objects.create(
                    tenant_id=tenant_id, day=day, cap_usd=spend_daily_cap(tenant_id)
                )
        except IntegrityError:
            row = TenantSpend.objects.get(tenant_id=tenant_id, day=day)
    reserved = TenantSpend.objects.filter(pk=row.pk, spent_usd__lte=F("cap_usd") - amount).update(
        spent_usd=F("spent_usd") + amount
    )
    if len(_SPEND_ROWS) > 1024:
        _SPEND_ROWS.clear()
    _SPEND_ROWS[(str(tenant_id), day)] = row
    return bool(reserved), row


# The day's spend row per tenant, per process: only its pk is used, and the conditional
# UPDATE above also matches tenant and day, so a stale entry can only fall back to the read.
_SPEND_ROWS: dict[tuple[str, Any], TenantSpend] = {}


def spend_settle(*, spend_id: int, reserved: Decimal, actual: Decimal) -> None:
    """Replace a reservation by the actual cost (never beyond the cap, never below 0)."""
    delta = actual - reserved
    if delta and not hotsql.spend_adjust(spend_id=spend_id, delta=delta):
        TenantSpend.objects.filter(pk=spend_id).update(spent_usd=Least(F("spent_usd") + delta, F("cap_usd")))
