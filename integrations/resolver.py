"""Data-defined tools as the runtime sees them: ``agents.tools.get_tool(name, tenant_id)``
asks ``SOURCE`` when no tool of that name is registered in code (in-process tools never
reach this module).

Tenancy: a run of tenant T resolves T's own tool of that name, else a global one; never
another tenant's (names are unique per tenant and globally, and a tenant's tool cannot take
a global tool's name: ``integrations.services``).

Cost: the enabled tools' active versions are read in one query and kept per process, valid
while the kill switches' version key (``agents.switches``: one Redis GET, or one read of
the version file) is unchanged and for at most ``SWITCHES_CACHE_TTL_SECONDS``, as
``agents.policy`` keeps the active policy. Every change through ``integrations.services``
bumps that key once it has committed, so the next step of every worker sees it; inside a
transaction (the caller may have just changed the tables) or with the version store
unreachable, the rows are read on every call. A run sees the version active when its step
resolves the tool.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import jsonschema
from django.db import connection

from agents import switches
from agents.tools.registry import Tool
from integrations import calls
from integrations.definitions import Definition, ServerSpec
from integrations.models import ToolDefinition, ToolVersion, Transport

# tools whose source is code: the row only lists them (agents' registry runs them)
_DATA_TRANSPORTS = (Transport.HTTP, Transport.MCP)


def needs_review_reason(version: ToolVersion) -> str:
    return (
        f"{version.tool.name} was imported from MCP server {version.server.slug if version.server else '?'} "
        "and has not been reviewed: every call needs approval until an admin sets its tier"
    )


def tool_from_version(version: ToolVersion) -> Tool:
    """The runtime's Tool for one stored version (its func calls the downstream)."""
    definition_row = version.tool
    server = version.server
    definition = Definition(
        tool_id=str(definition_row.pk),
        tenant_id=str(definition_row.tenant_id) if definition_row.tenant_id else None,
        name=definition_row.name,
        version=version.version,
        transport=version.transport,
        timeout_seconds=version.timeout_seconds,
        credential_scope=version.credential_scope,
        http=dict(version.http or {}),
        server=None if server is None else ServerSpec(
            id=str(server.pk), slug=server.slug, transport=server.transport, url=server.url,
            command=tuple(server.command or ()), timeout_seconds=server.timeout_seconds,
        ),
        remote_name=version.remote_name,
    )
    return Tool(
        name=definition.name,
        description=version.description,
        parameters=version.parameters,
        tier=version.tier,
        func=partial(calls.call, definition),
        timeout_seconds=version.timeout_seconds,
        max_attempts=version.max_attempts,
        idempotent=version.idempotent,
        side_effects=version.side_effects or version.tier != "read",
        max_result_chars=version.max_result_chars,
        validator=jsonschema.Draft202012Validator(version.parameters),
        forced_approval=needs_review_reason(version) if version.needs_review else "",
        version=version.version,
    )


Key = tuple[str | None, str]  # (tenant id or None for global, name)


def _load() -> dict[Key, Tool]:
    tools: dict[Key, Tool] = {}
    rows = (
        ToolDefinition.objects.filter(active_version__enabled=True,
                                      active_version__transport__in=_DATA_TRANSPORTS)
        .exclude(active_version__server__is_active=False)
        .select_related("active_version", "active_version__server")
    )
    for row in rows:
        version = row.active_version
        version.tool = row
        try:
            tool = tool_from_version(version)
        except jsonschema.SchemaError:  # stored before validation existed: not callable
            continue
        tools[(str(row.tenant_id) if row.tenant_id else None, row.name)] = tool
    return tools


@dataclass
class _Cache:
    token: str | None = None
    loaded_at: float = 0.0
    tools: dict[Key, Tool] = field(default_factory=dict)


_cache = _Cache()
_lock = threading.Lock()


def _tools() -> dict[Key, Tool]:
    if connection.in_atomic_block:
        return _load()
    try:
        token = switches.read_version()
    except switches.SwitchStoreUnavailable:
        return _load()  # the database is the authority: correct, just not cheap
    now = time.monotonic()
    with _lock:
        if _cache.token == token and now - _cache.loaded_at < switches.cache_ttl():
            return _cache.tools
    tools = _load()
    with _lock:
        _cache.token, _cache.loaded_at, _cache.tools = token, now, tools
    return tools


def invalidate_local() -> None:
    with _lock:
        _cache.token, _cache.tools = None, {}


def resolve(name: str, tenant_id: Any) -> Tool | None:
    """Tenant ``tenant_id``'s tool ``name``, else the global one, else None."""
    tools = _tools()
    tool = tools.get((str(tenant_id), name)) if tenant_id is not None else None
    return tool or tools.get((None, name))


class DataTools:
    """The ``agents.tools.registry.ToolSource`` of this app."""

    def get(self, name: str, tenant_id: Any) -> Tool | None:
        return resolve(name, tenant_id)

    def names(self) -> set[str]:
        return set(ToolDefinition.objects.values_list("name", flat=True))


SOURCE = DataTools()
