"""Policy versions: create (validated) and activate, each audited."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from agents.models import Policy
from audit.services import audit_record
from console.errors import InvalidInput


def policy_create(
    *, actor: Any, rules: dict[str, Any], description: str = "", activate: bool = False
) -> Policy:
    """Store a new policy version (validated); optionally make it the active one."""
    from agents.policy import PolicyInvalid, validate_rules

    try:
        validate_rules(rules)
    except PolicyInvalid as exc:
        raise InvalidInput(str(exc)) from None
    with transaction.atomic():
        last = Policy.objects.select_for_update().order_by("-version").first()
        policy = Policy.objects.create(
            version=(last.version + 1) if last else 1,
            rules=rules,
            description=description[:200],
            created_by=actor if isinstance(actor, User) else None,
        )
        if activate:
            _activate(actor=actor, policy=policy)
        audit_record(
            actor=actor,
            action="policy.created",
            object_type="policy",
            object_id=policy.version,
            policy_version=policy.version,
            payload={"version": policy.version, "description": policy.description,
                     "activated": activate, "rules": rules},
        )
    return policy


def _activate(*, actor: Any, policy: Policy) -> None:
    previous = (
        Policy.objects.filter(is_active=True).exclude(pk=policy.pk).values_list("version", flat=True).first()
    )
    Policy.objects.filter(is_active=True).exclude(pk=policy.pk).update(is_active=False)
    Policy.objects.filter(pk=policy.pk).update(is_active=True, activated_at=timezone.now())
    from agents import switches  # every process caches the active row against its version key

    transaction.on_commit(switches.bump_version)  # (agents.policy): seen once committed
    audit_record(
        actor=actor,
        action="policy.activated",
        object_type="policy",
        object_id=policy.version,
        policy_version=policy.version,
        payload={"version": policy.version, "previous_version": previous, "description": policy.description},
    )


def policy_activate(*, actor: Any, policy: Policy) -> Policy:
    with transaction.atomic():
        Policy.objects.select_for_update().filter(is_active=True).first()
        _activate(actor=actor, policy=policy)
    policy.refresh_from_db()
    return policy
