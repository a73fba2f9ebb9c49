"""Writes of the integrations app: MCP servers, tools and their versions, the import of an
MCP server's tools, downstream credentials. One transaction each, audited inside it
(``audit.services.audit_record``); a change that alters what the runtime resolves bumps
the kill switches' version key once it has committed (``integrations.resolver``).

Only administrators change these (the admin role or a superuser; management commands act
as the system). Secrets are never audited, logged or returned: a credential's payload says
which scope, tool, placement and name, and whether it replaced one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from agents import switches
from agents.models import Tier
from agents.tools.registry import REGISTRY
from audit.services import Actor, audit_record
from console.errors import Conflict, InvalidInput, PermissionDenied
from console.models import Tenant
from console.roles import ADMIN, has_role
from integrations import crypto, http_transport, mcp_client, resolver
from integrations.calls import credential_for
from integrations.definitions import Definition, ServerSpec
from integrations.logfilter import mask_query_values
from integrations.models import (
    TOOL_NAME,
    Credential,
    CredentialPlacement,
    McpServer,
    ServerTransport,
    ToolDefinition,
    ToolSource,
    ToolVersion,
    Transport,
)

# The fields of a version an edit may set (everything but tool, number, author, time).
VERSION_FIELDS = (
    "description", "parameters", "tier", "transport", "credential_scope", "http", "server",
    "remote_name", "timeout_seconds", "max_attempts", "idempotent", "side_effects",
    "max_result_chars", "needs_review", "enabled",
)
_SCOPE = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
_MAX_TIMEOUT = 120.0


def _check_admin(actor: Any) -> None:
    if isinstance(actor, Actor) or actor is None:
        return  # the command line and the system
    if not has_role(actor, ADMIN):
        raise PermissionDenied("Only administrators register tools, MCP servers and credentials.")


def _changed() -> None:
    """After commit: every process re-reads the tools at its next resolution."""
    resolver.invalidate_local()
    switches.bump_version()


def _audit(actor, action: str, *, tenant, object_type: str, object_id, payload: dict[str, Any]) -> None:
    audit_record(actor=Actor.of(actor), action=action, tenant=tenant, object_type=object_type,
                 object_id=object_id, payload=payload)


# --- MCP servers ------------------------------------------------------------------------


def _server_problems(server: McpServer) -> list[str]:
    problems = []
    if not server.slug or not re.match(r"^[-a-zA-Z0-9_]+$", server.slug):
        problems.append("slug: letters, digits, - and _ only")
    if server.transport == ServerTransport.STREAMABLE_HTTP:
        if not re.match(r"^https?://[^/?#]+", server.url or ""):
            problems.append("url: an http(s) URL of the streamable HTTP endpoint, e.g. https://host/mcp")
    elif server.transport == ServerTransport.STDIO:
        command = server.command
        if not (isinstance(command, list) and command and all(isinstance(c, str) and c for c in command)):
            problems.append('command: a list of strings, the program first, e.g. ["python", "server.py"]')
    else:
        problems.append(f"transport: one of {', '.join(ServerTransport.values)}")
    if not 0 < float(server.timeout_seconds) <= _MAX_TIMEOUT:
        problems.append(f"timeout_seconds: more than 0, at most {_MAX_TIMEOUT:g}")
    return problems


def _server_view(server: McpServer) -> dict[str, Any]:
    # a URL's query may carry a token someone pasted: never audit its values
    return {"slug": server.slug, "name": server.name, "transport": server.transport,
            "url": mask_query_values(server.url), "command": server.command,
            "timeout_seconds": server.timeout_seconds, "is_active": server.is_active}


def mcp_server_register(
    *,
    actor: Any,
    slug: str,
    tenant: Tenant | None = None,
    transport: str = ServerTransport.STREAMABLE_HTTP,
    url: str = "",
    command: list[str] | None = None,
    name: str = "",
    timeout_seconds: float = 10.0,
) -> McpServer:
    """Register an MCP server for ``tenant`` (None: every tenant)."""
    _check_admin(actor)
    server = McpServer(tenant=tenant, slug=slug, name=name, transport=transport, url=url,
                       command=list(command or []), timeout_seconds=timeout_seconds)
    problems = _server_problems(server)
    if problems:
        raise InvalidInput("MCP server invalid: " + "; ".join(problems))
    with transaction.atomic():
        try:
            with transaction.atomic():
                server.save()
        except IntegrityError:
            raise Conflict(f"An MCP server {slug!r} already exists for {tenant or 'every tenant'}.") from None
        _audit(actor, "mcp_server.registered", tenant=tenant, object_type="mcp_server",
               object_id=server.pk, payload=_server_view(server))
    return server


def mcp_server_update(*, actor: Any, server: McpServer, **changes: Any) -> McpServer:
    """Change a server's connection (url, command, transport, timeout, name, is_active);
    its tools call the new one from their next resolution."""
    _check_admin(actor)
    allowed = {"name", "transport", "url", "command", "timeout_seconds", "is_active"}
    unknown = set(changes) - allowed
    if unknown:
        raise InvalidInput(f"Cannot change {', '.join(sorted(unknown))} of an MCP server.")
    with transaction.atomic():
        locked = McpServer.objects.select_for_update().get(pk=server.pk)
        before = _server_view(locked)
        for key, value in changes.items():
            setattr(locked, key, value)
        problems = _server_problems(locked)
        if problems:
            raise InvalidInput("MCP server invalid: " + "; ".join(problems))
        locked.save()
        after = _server_view(locked)
        diff = {k: {"from": before[k], "to": after[k]} for k in after if before[k] != after[k]}
        _audit(actor, "mcp_server.updated", tenant=locked.tenant_id, object_type="mcp_server",
               object_id=locked.pk, payload={"slug": locked.slug, "changes": diff})
        transaction.on_commit(_changed)
    return locked


# --- tools and versions -----------------------------------------------------------------


def _version_problems(tool: ToolDefinition, fields: dict[str, Any]) -> list[str]:
    problems = []
    if not str(fields.get("description") or "").strip():
        problems.append("description: say what the tool does; the model reads it")
    parameters = fields.get("parameters")
    try:
        jsonschema.Draft202012Validator.check_schema(parameters)
        if not isinstance(parameters, dict) or parameters.get("type") != "object":
            problems.append('parameters: a JSON Schema of type "object"')
    except jsonschema.SchemaError as exc:
        problems.append(f"parameters: not a valid JSON Schema: {exc.message}")
    if fields.get("tier") not in Tier.values:
        problems.append(f"tier: one of {', '.join(Tier.values)}")
    scope = fields.get("credential_scope") or ""
    if scope and not _SCOPE.match(scope):
        problems.append("credential_scope: lower-case letters, digits and _ . : - (at most 64)")
    if not 0 < float(fields.get("timeout_seconds") or 0) <= _MAX_TIMEOUT:
        problems.append(f"timeout_seconds: more than 0, at most {_MAX_TIMEOUT:g}")
    if not 1 <= int(fields.get("max_attempts") or 0) <= 5:
        problems.append("max_attempts: 1 to 5")
    transport, server = fields.get("transport"), fields.get("server")
    if transport == Transport.PYTHON:
        if tool.name not in REGISTRY:
            problems.append(f"transport python: no tool {tool.name!r} is registered in code")
    elif transport == Transport.HTTP:
        problems += http_transport.config_problems(fields.get("http"), parameters or {})
    elif transport == Transport.MCP:
        if server is None:
            problems.append("server: an MCP tool names its server")
        elif server.tenant_id is not None and server.tenant_id != tool.tenant_id:
            problems.append("server: a tool may use its own tenant's servers or global ones")
        if not fields.get("remote_name"):
            problems.append("remote_name: the tool's name on the MCP server")
    else:
        problems.append(f"transport: one of {', '.join(Transport.values)}")
    if transport != Transport.MCP and server is not None:
        problems.append("server: only MCP tools name a server")
    return problems


def _describe(fields: dict[str, Any]) -> dict[str, Any]:
    """A version's fields as the audit log records them (the schema by its hash when big)."""
    view = {k: (str(v.pk) if isinstance(v, McpServer) else v) for k, v in fields.items()}
    if "parameters" in view:
        text = json.dumps(view["parameters"], sort_keys=True)
        if len(text) > 4000:
            view["parameters"] = {"sha256": hashlib.sha256(text.encode()).hexdigest(), "chars": len(text)}
    if "http" in view and isinstance(view["http"], dict) and "url" in view["http"]:
        view["http"] = {**view["http"], "url": mask_query_values(view["http"]["url"])}
    return view


def _new_version(*, actor: Any, tool: ToolDefinition, fields: dict[str, Any], note: str) -> ToolVersion:
    problems = _version_problems(tool, fields)
    if problems:
        raise InvalidInput(f"Tool {tool.name} invalid: " + "; ".join(problems))
    number = (tool.versions.aggregate(n=Max("version"))["n"] or 0) + 1
    version = ToolVersion.objects.create(tool=tool, version=number, note=note,
                                         created_by=Actor.of(actor).label[:150], **fields)
    ToolDefinition.objects.filter(pk=tool.pk).update(active_version=version)
    tool.active_version = version
    transaction.on_commit(_changed)
    return version


def _defaults(transport: str) -> dict[str, Any]:
    return {"credential_scope": "", "http": {}, "server": None, "remote_name": "", "timeout_seconds": 10.0,
            "max_attempts": 3, "idempotent": False, "side_effects": True, "max_result_chars": 8000,
            "needs_review": False, "enabled": True, "transport": transport}


def _check_name(*, name: str, tenant: Tenant | None, transport: str) -> None:
    try:
        TOOL_NAME(name)
    except Exception:
        raise InvalidInput(f"Tool name {name!r}: letters, digits, _ and - only, at most 64.") from None
    if name in REGISTRY and transport != Transport.PYTHON:
        raise Conflict(f"{name!r} is a tool registered in code; choose another name.")
    clash = ToolDefinition.objects.filter(name=name)
    clash = clash.filter(tenant__isnull=True) if tenant is not None else clash.exclude(tenant__isnull=True)
    if clash.exists():
        owner = "a global tool" if tenant is not None else "a tenant's tool"
        raise Conflict(f"{name!r} is already the name of {owner}; a tenant's tool never shadows a "
                       "global one.")


def tool_register(
    *,
    actor: Any,
    name: str,
    description: str,
    parameters: dict[str, Any],
    tier: str,
    transport: str,
    tenant: Tenant | None = None,
    source: str = ToolSource.ADMIN,
    note: str = "",
    **options: Any,
) -> ToolDefinition:
    """Register a tool for ``tenant`` (None: every tenant) with its first version.
    ``options``: the other ``VERSION_FIELDS`` (http config, server and remote_name, ...)."""
    _check_admin(actor)
    unknown = set(options) - set(VERSION_FIELDS)
    if unknown:
        raise InvalidInput(f"Unknown tool fields: {', '.join(sorted(unknown))}.")
    fields = {**_defaults(transport), "description": description, "parameters": parameters, "tier": tier,
              **options}
    with transaction.atomic():
        _check_name(name=name, tenant=tenant, transport=transport)
        tool = ToolDefinition(tenant=tenant, name=name, source=source)
        try:
            with transaction.atomic():
                tool.save()
        except IntegrityError:
            raise Conflict(f"A tool {name!r} already exists for {tenant or 'every tenant'}.") from None
        version = _new_version(actor=actor, tool=tool, fields=fields, note=note)
        _audit(actor, "tool.registered", tenant=tenant, object_type="tool", object_id=tool.pk,
               payload={"name": name, "source": source, "version": version.version, **_describe(fields)})
    return tool


def tool_version_create(*, actor: Any, tool: ToolDefinition, note: str = "", **changes: Any) -> ToolVersion:
    """Edit a tool: a new version (the active one with ``changes``) becomes active. The
    earlier versions stay as they were."""
    _check_admin(actor)
    unknown = set(changes) - set(VERSION_FIELDS)
    if unknown:
        raise InvalidInput(f"Unknown tool fields: {', '.join(sorted(unknown))}.")
    with transaction.atomic():
        tool = ToolDefinition.objects.select_for_update().get(pk=tool.pk)
        current = tool.active_version
        base = {f: getattr(current, f) for f in VERSION_FIELDS} if current else _defaults(Transport.HTTP)
        fields = {**base, **changes}
        diff = {k: v for k, v in fields.items() if base.get(k) != v}
        if not diff and current is not None:
            return current
        version = _new_version(actor=actor, tool=tool, fields=fields, note=note)
        _audit(actor, "tool.version_created", tenant=tool.tenant_id, object_type="tool", object_id=tool.pk,
               payload={"name": tool.name, "version": version.version,
                        "previous": current.version if current else None, "note": note,
                        "changes": _describe(diff)})
    return version


def tool_version_activate(*, actor: Any, tool: ToolDefinition, version: int) -> ToolVersion:
    """Make an earlier (or later) stored version the one that runs (a rollback)."""
    _check_admin(actor)
    with transaction.atomic():
        tool = ToolDefinition.objects.select_for_update().get(pk=tool.pk)
        target = tool.versions.filter(version=version).first()
        if target is None:
            raise InvalidInput(f"{tool.name} has no version {version}.")
        previous = tool.active_version.version if tool.active_version else None
        ToolDefinition.objects.filter(pk=tool.pk).update(active_version=target)
        _audit(actor, "tool.version_activated", tenant=tool.tenant_id, object_type="tool", object_id=tool.pk,
               payload={"name": tool.name, "version": version, "previous": previous})
        transaction.on_commit(_changed)
    return target


# --- import from an MCP server ----------------------------------------------------------


@dataclass
class ImportReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)  # schema or description changed: new version
    unchanged: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why)


def _server_spec(server: McpServer) -> ServerSpec:
    return ServerSpec(id=str(server.pk), slug=server.slug, transport=server.transport, url=server.url,
                      command=tuple(server.command or ()), timeout_seconds=server.timeout_seconds)


def mcp_tools_import(
    *,
    actor: Any,
    server: McpServer,
    prefix: str = "",
    credential_scope: str = "",
    tenant: Tenant | None = None,
) -> ImportReport:
    """Read ``server``'s ``tools/list`` and register each tool (named ``prefix`` + its name)
    for the server's tenant (a global server's tools: for ``tenant``, or global).

    Fail closed: a new tool starts as ``write_high``, with side effects, not idempotent and
    ``needs_review`` (every call needs approval whatever the policy, until an admin reviews it
    and sets its tier). A tool whose description or schema changed on the server gets a new
    version that needs review again; one still the same is left alone. ``credential_scope``:
    the scope the tools need, and the one used to list them (``tenant``'s credential)."""
    _check_admin(actor)
    owner = server.tenant or tenant
    if server.tenant is not None and tenant is not None and tenant != server.tenant:
        raise InvalidInput(f"MCP server {server.slug} belongs to {server.tenant}; its tools stay there.")
    injection = None
    if credential_scope:
        if owner is None:
            raise InvalidInput("A global import has no tenant whose credential lists the tools; "
                               "name a tenant.")
        probe = Definition(tool_id="", tenant_id=str(owner.pk), name=f"{server.slug}/tools/list", version=0,
                           transport=Transport.MCP, timeout_seconds=server.timeout_seconds,
                           credential_scope=credential_scope, server=_server_spec(server))
        try:
            injection = credential_for(probe, str(owner.pk))
        except Exception as exc:
            raise InvalidInput(getattr(exc, "message", str(exc))) from None
    try:
        remote = mcp_client.list_tools(_server_spec(server), injection=injection,
                                       timeout=server.timeout_seconds)
    except Exception as exc:
        message = getattr(exc, "message", str(exc))
        raise InvalidInput(f"Could not list the tools of {server.slug}: "
                           f"{injection.scrub(message) if injection else message}") from None
    report = ImportReport()
    with transaction.atomic():
        for item in remote:
            name = f"{prefix}{item.name}"
            fields = {"description": item.description or item.name, "parameters": item.input_schema
                      or {"type": "object"}}
            existing = ToolDefinition.objects.filter(tenant=owner, name=name).select_related(
                "active_version").first()
            try:
                if existing is None:
                    tool_register(actor=actor, name=name, tenant=owner, tier=Tier.WRITE_HIGH,
                                  transport=Transport.MCP, source=ToolSource.MCP_IMPORT, server=server,
                                  remote_name=item.name, credential_scope=credential_scope,
                                  needs_review=True, note=f"imported from {server.slug}; hints "
                                  f"{json.dumps(item.annotations, sort_keys=True)}", **fields)
                    report.created.append(name)
                    continue
                current = existing.active_version
                if current is not None and current.server_id != server.pk:
                    report.skipped.append((name, "a tool of that name calls another server or transport"))
                    continue
                if current is not None and all(getattr(current, k) == v for k, v in fields.items()):
                    report.unchanged.append(name)
                    continue
                tool_version_create(actor=actor, tool=existing, needs_review=True,
                                    note=f"re-imported from {server.slug}: the server changed it", **fields)
                report.updated.append(name)
            except (InvalidInput, Conflict) as exc:
                report.skipped.append((name, exc.message))
        _audit(actor, "mcp_server.tools_imported", tenant=owner, object_type="mcp_server",
               object_id=server.pk,
               payload={"slug": server.slug, "created": report.created, "updated": report.updated,
                        "unchanged": report.unchanged, "skipped": [n for n, _ in report.skipped]})
    return report


# --- credentials ------------------------------------------------------------------------


def credential_store(
    *,
    actor: Any,
    tenant: Tenant,
    scope: str,
    secret: str,
    name: str,
    placement: str = CredentialPlacement.HEADER,
    prefix: str = "",
    tool: ToolDefinition | None = None,
) -> Credential:
    """Store (or replace) ``tenant``'s secret for ``scope`` (and ``tool``), encrypted with
    the newest CREDENTIALS_KEYS key. The secret is not audited, logged or returned."""
    _check_admin(actor)
    problems = []
    if not _SCOPE.match(scope or ""):
        problems.append("scope: lower-case letters, digits and _ . : - (at most 64)")
    if not secret:
        problems.append("secret: empty")
    if placement not in CredentialPlacement.values:
        problems.append(f"placement: one of {', '.join(CredentialPlacement.values)}")
    if not re.match(r"^[A-Za-z0-9_.-]{1,100}$", name or ""):
        problems.append("name: the header, query parameter or environment variable (letters, digits, _ . -)")
    if tool is not None and tool.tenant_id not in (None, tenant.pk):
        problems.append("tool: another tenant's tool")
    if problems:
        raise InvalidInput("Credential invalid: " + "; ".join(problems))
    ciphertext = crypto.encrypt(secret)
    with transaction.atomic():
        row = Credential.objects.select_for_update().filter(tenant=tenant, scope=scope, tool=tool).first()
        replaced = row is not None
        if row is None:
            row = Credential(tenant=tenant, scope=scope, tool=tool)
        else:
            row.rotated_at = timezone.now()
        row.placement, row.name, row.prefix, row.ciphertext = placement, name, prefix, ciphertext
        row.created_by = row.created_by or Actor.of(actor).label[:150]
        row.save()
        _audit(actor, "credential.stored", tenant=tenant, object_type="credential", object_id=row.pk,
               payload={"scope": scope, "tool": tool.name if tool else None, "placement": placement,
                        "name": name, "replaced": replaced})
    return row


def credentials_reencrypt(*, actor: Any) -> int:
    """Re-encrypt every stored credential with the newest key (after a new key was put in
    front of CREDENTIALS_KEYS). Returns how many rows were rewritten."""
    _check_admin(actor)
    count = 0
    with transaction.atomic():
        for row in Credential.objects.select_for_update().order_by("pk"):
            fresh = crypto.reencrypt(row.ciphertext)
            if fresh != row.ciphertext:
                Credential.objects.filter(pk=row.pk).update(ciphertext=fresh)
                count += 1
        _audit(actor, "credential.reencrypted", tenant=None, object_type="credential", object_id="*",
               payload={"rows": count})
    return count
