"""Tools as data: tools that admins register (HTTP endpoints, MCP servers' tools), their
versions, the MCP servers they call and the downstream credentials the broker injects.

A tool or a server belongs to one tenant or is global (``tenant`` empty); a run of tenant T
sees T's own and the global ones, never another tenant's (``integrations.resolver``). A
tool is edited by adding a version: ``ToolVersion`` rows are never changed (a trigger on
PostgreSQL refuses UPDATE and DELETE), ``ToolDefinition.active_version`` says which one runs.
"""

from __future__ import annotations

import uuid

import pgtrigger
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q

from agents.models import Tier

# What a model may call a tool (chat-completions function names) and what the runtime's
# action schema accepts (agents.llm.base.ACTION_SCHEMA: at most 64 characters).
TOOL_NAME = RegexValidator(r"^[A-Za-z0-9_-]{1,64}$", "Letters, digits, _ and - only, at most 64.")


class Transport(models.TextChoices):
    PYTHON = "python", "Python (registered in code)"
    HTTP = "http", "HTTP endpoint"
    MCP = "mcp", "MCP server tool"


class ServerTransport(models.TextChoices):
    STREAMABLE_HTTP = "streamable_http", "Streamable HTTP (URL)"
    STDIO = "stdio", "stdio (command started by the worker)"


class CredentialPlacement(models.TextChoices):
    HEADER = "header", "HTTP header"
    QUERY = "query", "URL query parameter"
    ENV = "env", "Environment variable (stdio MCP servers)"


class ToolSource(models.TextChoices):
    ADMIN = "admin", "Registered by an admin"
    MCP_IMPORT = "mcp_import", "Imported from an MCP server"


class McpServer(models.Model):
    """An MCP server the runtime calls: a URL (streamable HTTP) or a command the worker
    starts and talks to over stdin/stdout (stdio). Registering a stdio server lets its
    command run on every worker host: admins only (the Django admin)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("console.Tenant", null=True, blank=True, on_delete=models.PROTECT,
                               related_name="mcp_servers", help_text="Empty: every tenant may use it.")
    slug = models.SlugField(max_length=64)
    name = models.CharField(max_length=120, blank=True)
    transport = models.CharField(max_length=20, choices=ServerTransport.choices,
                                 default=ServerTransport.STREAMABLE_HTTP)
    url = models.URLField(max_length=500, blank=True, help_text="Streamable HTTP endpoint, e.g. "
                          "https://billing.example.com/mcp")
    command = models.JSONField(default=list, blank=True,
                               help_text='stdio: the command and its arguments, e.g. ["python", "server.py"]')
    timeout_seconds = models.FloatField(default=10.0)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "slug"], condition=Q(tenant__isnull=False),
                                    name="uniq_mcp_server_slug_per_tenant"),
            models.UniqueConstraint(fields=["slug"], condition=Q(tenant__isnull=True),
                                    name="uniq_global_mcp_server_slug"),
            models.CheckConstraint(condition=Q(transport__in=ServerTransport.values),
                                   name="mcp_server_transport_valid"),
            models.CheckConstraint(condition=Q(transport=ServerTransport.STDIO) | ~Q(url=""),
                                   name="mcp_server_http_has_url"),
            models.CheckConstraint(condition=Q(timeout_seconds__gt=0), name="mcp_server_timeout_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant or 'global'}/{self.slug}"


class ToolDefinition(models.Model):
    """A registered tool: its name in its tenant (or globally) and the version that runs."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("console.Tenant", null=True, blank=True, on_delete=models.PROTECT,
                               related_name="tool_definitions", help_text="Empty: every tenant may use it.")
    name = models.CharField(max_length=64, validators=[TOOL_NAME])
    source = models.CharField(max_length=16, choices=ToolSource.choices, default=ToolSource.ADMIN)
    active_version = models.ForeignKey("ToolVersion", null=True, blank=True, on_delete=models.PROTECT,
                                       related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            # A name means one tool per tenant, and a global name one tool for everybody
            # (integrations.services also keeps a tenant's tool from shadowing a global one).
            models.UniqueConstraint(fields=["tenant", "name"], condition=Q(tenant__isnull=False),
                                    name="uniq_tool_name_per_tenant"),
            models.UniqueConstraint(fields=["name"], condition=Q(tenant__isnull=True),
                                    name="uniq_global_tool_name"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant or 'global'}/{self.name}"


class ToolVersion(models.Model):
    """One version of a tool's definition; never changed once written."""

    id = models.BigAutoField(primary_key=True)
    tool = models.ForeignKey(ToolDefinition, on_delete=models.PROTECT, related_name="versions")
    version = models.PositiveIntegerField()
    description = models.TextField()
    parameters = models.JSONField(default=dict, help_text="JSON Schema of the arguments")
    tier = models.CharField(max_length=16, choices=Tier.choices)
    transport = models.CharField(max_length=16, choices=Transport.choices)
    credential_scope = models.CharField(
        max_length=64, blank=True,
        help_text="The credential the broker injects (a Credential of the run's tenant with this scope).",
    )
    # transport http: method, url, query, body, headers, response_fields, idempotency_header
    # (integrations.http_transport.HTTP_SCHEMA)
    http = models.JSONField(default=dict, blank=True)
    # transport mcp: the server and the tool's name there
    server = models.ForeignKey(McpServer, null=True, blank=True, on_delete=models.PROTECT,
                               related_name="tool_versions")
    remote_name = models.CharField(max_length=200, blank=True, help_text="The tool's name on the MCP server.")
    timeout_seconds = models.FloatField(default=10.0)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    idempotent = models.BooleanField(
        default=False, help_text="The downstream dedupes by the idempotency key: safe to retry."
    )
    side_effects = models.BooleanField(default=True)
    max_result_chars = models.PositiveIntegerField(default=8000)
    # Every call needs a person's approval whatever the policy says, until an admin reviews
    # the tool (set on import from an MCP server: fail closed).
    needs_review = models.BooleanField(default=False)
    enabled = models.BooleanField(default=True)
    note = models.TextField(blank=True)
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tool", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["tool", "version"], name="uniq_tool_version"),
            models.CheckConstraint(condition=Q(tier__in=Tier.values), name="tool_version_tier_valid"),
            models.CheckConstraint(condition=Q(transport__in=Transport.values),
                                   name="tool_version_transport_valid"),
            models.CheckConstraint(condition=~Q(transport=Transport.MCP) | Q(server__isnull=False),
                                   name="tool_version_mcp_has_server"),
            models.CheckConstraint(condition=Q(timeout_seconds__gt=0) & Q(max_attempts__gte=1)
                                   & Q(max_attempts__lte=5), name="tool_version_limits"),
        ]
        triggers = [
            pgtrigger.Protect(name="tool_version_append_only",
                              operation=pgtrigger.Update | pgtrigger.Delete),
        ]

    def __str__(self) -> str:
        return f"{self.tool} v{self.version}"


class Credential(models.Model):
    """A downstream secret of one tenant, for one scope (and optionally one tool), stored
    encrypted (Fernet, ``integrations.crypto``). The broker decrypts it at call time and puts
    it where ``placement`` and ``name`` say; nothing else ever reads it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("console.Tenant", on_delete=models.PROTECT, related_name="credentials")
    scope = models.CharField(max_length=64)
    tool = models.ForeignKey(ToolDefinition, null=True, blank=True, on_delete=models.PROTECT,
                             related_name="credentials",
                             help_text="Empty: every tool of this scope; set: this tool only (wins).")
    placement = models.CharField(max_length=16, choices=CredentialPlacement.choices,
                                 default=CredentialPlacement.HEADER)
    name = models.CharField(max_length=100, help_text="Header, query parameter or environment variable.")
    prefix = models.CharField(max_length=40, blank=True, help_text='Before the secret, e.g. "Bearer ".')
    ciphertext = models.TextField(editable=False)
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)
    rotated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["tenant", "scope"]
        constraints = [
            # served by the broker's lookup: (tenant, scope, tool) then (tenant, scope, none)
            models.UniqueConstraint(fields=["tenant", "scope", "tool"], condition=Q(tool__isnull=False),
                                    name="uniq_credential_per_tool"),
            models.UniqueConstraint(fields=["tenant", "scope"], condition=Q(tool__isnull=True),
                                    name="uniq_credential_per_scope"),
            models.CheckConstraint(condition=Q(placement__in=CredentialPlacement.values),
                                   name="credential_placement_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant}/{self.scope}" + (f" ({self.tool.name})" if self.tool_id else "")

