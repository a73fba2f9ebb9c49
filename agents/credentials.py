"""Short-lived tool credentials, scoped to one tenant, one run and one tool.

The broker issues one per execution; the tool side verifies it before touching data and
takes the tenant from the verified claims, never from the model's arguments. A tool never
runs with a shared super-token.

Format: ``base64url(claims JSON) "." base64url(HMAC-SHA256(key, first part))``, the claims
stamped with an expiry. The key is derived from SECRET_KEY with a purpose-specific salt
(``SALT``), as Django's signing does, but once per secret rather than on every call: the
credential is issued and verified on every tool call, and re-deriving the key, building a
``Signer`` and a JSON encoder each time cost more than the HMAC itself. Verification
compares the encoded signature in constant time (comparing the text, not the decoded
bytes, so no second spelling of the same signature is accepted) and also accepts
``SECRET_KEY_FALLBACKS`` during a key rotation, like ``signing.loads``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from dataclasses import dataclass

from django.conf import settings
from django.utils.encoding import force_bytes

# v2: the compact format above (v1 was django.core.signing; a v1 token is simply refused).
SALT = "agents.tool-credential.v2"
DEFAULT_TTL_SECONDS = 120

_ENCODER = json.JSONEncoder(separators=(",", ":"))
# Derived keys by secret (SECRET_KEY and its fallbacks; a few entries, more only when
# tests override the setting).
_KEYS: dict[str | bytes, bytes] = {}


class CredentialError(Exception):
    """The tool refused its credential (bad signature, expired, wrong scope)."""

    failure_class = "logic"


@dataclass(frozen=True)
class Claims:
    tenant_id: str
    tenant_slug: str
    run_id: str
    tool: str
    expires_at: float


def _key(secret: str | bytes) -> bytes:
    """The signing key for ``secret``: HMAC-SHA256(secret, SALT), derived once."""
    key = _KEYS.get(secret)
    if key is None:
        key = hmac.digest(force_bytes(secret), SALT.encode(), "sha256")
        if len(_KEYS) > 16:
            _KEYS.clear()
        _KEYS[secret] = key
    return key


def _signature(key: bytes, payload: bytes) -> bytes:
    return base64.urlsafe_b64encode(hmac.digest(key, payload, "sha256")).rstrip(b"=")


def credential_issue(
    *, tenant_id: str, tenant_slug: str, run_id: str, tool: str, ttl_seconds: float = DEFAULT_TTL_SECONDS
) -> str:
    claims = {
        "t": str(tenant_id),
        "ts": tenant_slug,
        "r": str(run_id),
        "tool": tool,
        "exp": round(time.time() + ttl_seconds, 3),
    }
    payload = base64.urlsafe_b64encode(_ENCODER.encode(claims).encode()).rstrip(b"=")
    return (payload + b"." + _signature(_key(settings.SECRET_KEY), payload)).decode()


def _verified_payload(token: str) -> bytes | None:
    """The signed part of ``token`` when its signature is valid under SECRET_KEY or one of
    SECRET_KEY_FALLBACKS, else None."""
    try:
        payload, _, signature = token.encode("ascii").rpartition(b".")
    except (AttributeError, UnicodeEncodeError):
        return None
    if not payload:
        return None
    for secret in (settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS):
        if hmac.compare_digest(_signature(_key(secret), payload), signature):
            return payload
    return None


def credential_verify(token: str, *, tool: str) -> Claims:
    """Verify a credential for ``tool``; return its claims or raise CredentialError."""
    payload = _verified_payload(token)
    claims = None
    if payload is not None:
        try:
            claims = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
        except (ValueError, binascii.Error):
            claims = None
    if not isinstance(claims, dict):
        raise CredentialError("tool credential has a bad signature; it was not issued by the broker")
    if claims.get("tool") != tool:
        raise CredentialError(f"tool credential is scoped to {claims.get('tool')!r}, not {tool!r}")
    if float(claims.get("exp", 0)) < time.time():
        raise CredentialError("tool credential expired; the broker issues a fresh one per execution")
    return Claims(
        tenant_id=claims["t"],
        tenant_slug=claims["ts"],
        run_id=claims["r"],
        tool=tool,
        expires_at=float(claims["exp"]),
    )
