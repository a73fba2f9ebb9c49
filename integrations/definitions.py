"""The records a data-defined tool's call carries: its definition as the resolver read it
(no database object crosses into a call) and where the downstream secret goes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

REDACTED = "[REDACTED]"


@dataclass(frozen=True)
class ServerSpec:
    """An MCP server as a call needs it (no database object crosses into the call)."""

    id: str
    slug: str
    transport: str
    url: str = ""
    command: tuple[str, ...] = ()
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class Definition:
    """One version of a data-defined tool, as the resolver read it."""

    tool_id: str
    tenant_id: str | None  # None: global
    name: str
    version: int
    transport: str
    timeout_seconds: float
    credential_scope: str = ""
    http: dict[str, Any] = field(default_factory=dict, compare=False)
    server: ServerSpec | None = None
    remote_name: str = ""

    @property
    def downstream(self) -> str:
        """What the breaker protects: one MCP server, or one HTTP tool's endpoint."""
        if self.server is not None:
            return f"mcp:{self.server.id}"
        return f"http:{self.tool_id}"


@dataclass(frozen=True, repr=False)
class Injection:
    """Where the decrypted secret goes on this call. Its repr never shows the secret."""

    placement: str
    name: str
    value: str  # prefix + secret, as sent
    secret: str

    def __repr__(self) -> str:
        return f"Injection({self.placement} {self.name}={REDACTED})"

    def scrub(self, value: Any) -> Any:
        """``value`` with every occurrence of the secret (plain or URL-encoded) masked."""
        needles = {n for n in (self.secret, quote(self.secret, safe=""), self.value) if n}
        return _scrub(value, needles)


def _scrub(value: Any, needles: set[str]) -> Any:
    if isinstance(value, str):
        for needle in needles:
            if needle in value:
                value = value.replace(needle, REDACTED)
        return value
    if isinstance(value, dict):
        return {_scrub(k, needles): _scrub(v, needles) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v, needles) for v in value]
    return value
