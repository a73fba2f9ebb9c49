"""Roles are Django groups. Navigation and page access are decided from them."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

OPERATOR = "operator"
REVIEWER = "reviewer"
AUDITOR = "auditor"
ADMIN = "admin"
ALL_ROLES = (OPERATOR, REVIEWER, AUDITOR, ADMIN)


def user_roles(user: AbstractBaseUser | AnonymousUser) -> frozenset[str]:
    if not user.is_authenticated:
        return frozenset()
    cached = getattr(user, "_role_cache", None)
    if cached is None:
        cached = frozenset(user.groups.values_list("name", flat=True))
        if user.is_superuser:
            cached = cached | {ADMIN}
        user._role_cache = cached
    return cached


def has_role(user, *roles: str) -> bool:
    """True when the user holds any of ``roles``; admins hold every role."""
    held = user_roles(user)
    return ADMIN in held or any(role in held for role in roles)
