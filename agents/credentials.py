"""Short-lived tool credentials, scoped to one tenant, one run and one tool.

The broker issues one per execution; the tool side verifies it before touching data and
takes the tenant from the verified claims, never from the model's arguments. A tool never
runs with a shared super-token. Signed with Django's signing (HMAC-SHA256 over the claims,
keyed by SECRET_KEY with a purpose-specific salt) and stamped with an expiry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.core import signing

SALT = "agents.tool-credential.v1"
DEFAULT_TTL_SECONDS = 120


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
    return signing.dumps(claims, salt=SALT, compress=False)


def credential_verify(token: str, *, tool: str) -> Claims:
    """Verify a credential for ``tool``; return its claims or raise CredentialError."""
    try:
        claims = signing.loads(token, salt=SALT)
    except signing.BadSignature:
        raise CredentialError(
            "tool credential has a bad signature; it was not issued by the broker"
        ) from None
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
