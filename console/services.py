"""Identity state changes: issuing and revoking API tokens."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from audit.services import audit_record
from console.errors import AuthenticationFailed, NotFound
from console.models import ApiToken


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_issue(*, actor, user: User, name: str = "") -> tuple[ApiToken, str]:
    """Create a token for ``user``; return the row and the secret (shown once, never stored)."""
    prefix = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    plaintext = f"{settings.API_TOKEN_PREFIX}_{prefix}_{secret}"
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user, name=name[:100], prefix=prefix, token_hash=_hash(plaintext)
        )
        tenant = getattr(getattr(user, "service_account", None), "tenant", None)
        audit_record(
            actor=actor, action="token.issued", tenant=tenant, object_type="api_token",
            object_id=token.pk, payload={"user": user.username, "prefix": prefix, "name": name},
        )
    return token, plaintext


def token_revoke(*, actor, token: ApiToken) -> ApiToken:
    with transaction.atomic():
        updated = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if not updated:
            raise NotFound("That token does not exist or is already revoked.")
        audit_record(
            actor=actor, action="token.revoked", object_type="api_token", object_id=token.pk,
            payload={"user": token.user.username, "prefix": token.prefix},
        )
    token.refresh_from_db()
    return token


def token_authenticate(raw: str) -> User:
    """Resolve a bearer token to its user, or raise AuthenticationFailed saying why."""
    parts = raw.split("_")
    if len(parts) < 3 or parts[0] != settings.API_TOKEN_PREFIX or len(parts[1]) != 8:
        raise AuthenticationFailed(
            "Malformed API token: expected 'Authorization: Bearer acp_<prefix>_<secret>' as "
            "printed by `manage.py issue_token`.",
            code="token_malformed",
        )
    token = ApiToken.objects.select_related("user").filter(prefix=parts[1]).first()
    if token is None or not hmac.compare_digest(token.token_hash, _hash(raw)):
        raise AuthenticationFailed(
            "Unknown API token. Check that it was copied whole, or issue a new one.",
            code="token_unknown",
        )
    if token.revoked_at is not None:
        raise AuthenticationFailed(
            "This API token was revoked. Issue a new one with `manage.py issue_token`.",
            code="token_revoked",
        )
    if not token.user.is_active:
        raise AuthenticationFailed("The account this token belongs to is disabled.",
                                   code="account_disabled")
    now = timezone.now()
    # Write last_used_at at most once a minute: a hot token should not write per request.
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user
