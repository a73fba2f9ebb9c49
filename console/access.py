"""Access helpers for identity objects: 404 for what the caller may not see."""

from __future__ import annotations

from console.errors import NotFound
from console.models import ApiToken
from console.roles import ADMIN, has_role


def token_for_revoke(*, user, prefix: str) -> ApiToken:
    tokens = ApiToken.objects.select_related("user").filter(prefix=prefix)
    if not has_role(user, ADMIN):
        tokens = tokens.filter(user=user)
    token = tokens.first()
    if token is None:
        raise NotFound(f"No token with prefix {prefix!r} that you may revoke.")
    return token
