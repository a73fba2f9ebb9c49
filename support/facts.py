"""What the customer system tells the policy about a proposed action (registered with
``agents.policy.register_fact_provider`` by ``support.apps``)."""

from __future__ import annotations

from typing import Any

from support.models import Customer


def customer_scope(tenant_id: Any, arguments: dict[str, Any]) -> dict[str, Any]:
    """``customer_scope`` of an action naming a ``customer`` code: ``own_tenant`` when the
    run's tenant has that customer, ``other_tenant`` when only another tenant has it (the
    default policy denies that), ``unknown`` when no tenant does. Nothing for an action
    that names no customer."""
    code = arguments.get("customer")
    if not isinstance(code, str):
        return {}
    # a set: no ordering (the model's would join the tenant table to sort)
    owners = set(Customer.objects.filter(code=code).order_by().values_list("tenant_id", flat=True))
    if tenant_id in owners:
        return {"customer_scope": "own_tenant"}
    if owners:
        return {"customer_scope": "other_tenant"}
    return {"customer_scope": "unknown"}
