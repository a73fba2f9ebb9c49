"""Context (sources and documents) and memory (conversation, scratchpad, long-term items,
freezes). Every row carries its tenant; runs and agents are referenced by their public id
and name (strings), not by foreign keys, so this app does not depend on the runtime's tables.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.db.models import Q

from console.models import Tenant


class PostgresOnlyGinIndex(GinIndex):
    """A GIN index on PostgreSQL; nothing on other databases (SQLite has no GIN and uses the
    LIKE fallback, see selectors.FullTextRetriever)."""

    _NOOP = "SELECT 1"

    def create_sql(self, model, schema_editor, using="", **kwargs):
        if schema_editor.connection.vendor != "postgresql":
            return self._NOOP
        return super().create_sql(model, schema_editor, using=using, **kwargs)

    def remove_sql(self, model, schema_editor, **kwargs):
        if schema_editor.connection.vendor != "postgresql":
            return self._NOOP
        return super().remove_sql(model, schema_editor, **kwargs)


# --- context ------------------------------------------------------------------------------


class Source(models.Model):
    """Where documents come from, who answers for them and how old they may get.

    A stale *critical* source makes retrieval fail closed; a stale non-critical one is
    served with a "stale" label on every hit."""

    class Kind(models.TextChoices):
        POLICY = "policy", "Policy document"
        HELP = "help", "Help article"
        OTHER = "other", "Other"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="knowledge_sources")
    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.OTHER)
    owner = models.CharField(max_length=200, help_text="The person or team that keeps it current.")
    max_age = models.DurationField(default=timedelta(days=90))
    critical = models.BooleanField(default=False)
    last_refreshed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant", "name"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="knowledge_source_uniq_tenant_name"),
            models.CheckConstraint(condition=Q(kind__in=["policy", "help", "other"]),
                                   name="knowledge_source_kind_valid"),
            models.CheckConstraint(condition=Q(max_age__gt=timedelta(0)),
                                   name="knowledge_source_max_age_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.tenant_id})"


class Document(models.Model):
    """One retrievable text (a policy, a help article). ``search_vector`` is filled by
    ``document_upsert`` on PostgreSQL (weighted title A, body B) and unused on SQLite."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="knowledge_documents")
    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="documents")
    title = models.CharField(max_length=300)
    body = models.TextField()
    updated_at = models.DateTimeField()
    search_vector = SearchVectorField(null=True, editable=False)

    class Meta:
        ordering = ["title"]
        constraints = [
            models.UniqueConstraint(fields=["source", "title"], name="knowledge_document_uniq_source_title"),
        ]
        indexes = [
            # context_retrieve on PostgreSQL: WHERE tenant_id = %s AND search_vector @@ query.
            PostgresOnlyGinIndex(fields=["search_vector"], name="knowledge_doc_search_gin"),
            # context_retrieve's SQLite fallback: a tenant's documents, newest first.
            models.Index(fields=["tenant", "-updated_at"], name="knowledge_doc_tenant_recent"),
        ]

    def __str__(self) -> str:
        return self.title


# --- memory -------------------------------------------------------------------------------


class ConversationMessage(models.Model):
    """One turn of a conversation (keyed by a run's public id or a session id). When the
    active turns pass the token budget, older ones are folded into a ``summary`` turn and
    marked ``summarised_at``; they stay for the record but leave the model's window."""

    class Role(models.TextChoices):
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"
        TOOL = "tool", "Tool result"
        SUMMARY = "summary", "Summary of earlier turns"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    conversation_id = models.CharField(max_length=64)
    seq = models.PositiveIntegerField()
    role = models.CharField(max_length=16, choices=Role.choices)
    name = models.CharField(max_length=64, blank=True, help_text="The tool's name for tool turns.")
    content = models.TextField()
    tokens = models.PositiveIntegerField()
    summarised_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["conversation_id", "seq"]
        constraints = [
            # Also the index of conversation_window: WHERE tenant = %s AND conversation_id = %s
            # ORDER BY seq.
            models.UniqueConstraint(fields=["tenant", "conversation_id", "seq"],
                                    name="knowledge_conversation_uniq_seq"),
            models.CheckConstraint(condition=Q(role__in=["user", "assistant", "tool", "summary"]),
                                   name="knowledge_conversation_role_valid"),
        ]


class ScratchpadEntry(models.Model):
    """A run's working notes: key/value JSON, keyed by the run's public id (no FK)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    run_id = models.CharField(max_length=64)
    key = models.CharField(max_length=100)
    value = models.JSONField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["run_id", "key"]
        constraints = [
            # Also the index of scratchpad_get / scratchpad_set: WHERE tenant, run_id (, key).
            models.UniqueConstraint(fields=["tenant", "run_id", "key"], name="knowledge_scratchpad_uniq_key"),
        ]


class MemoryItem(models.Model):
    """Long-term memory of one agent (by name) for one tenant, written by runs."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    agent = models.CharField(max_length=100)
    key = models.CharField(max_length=200)
    value = models.JSONField()
    source_run_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    refreshed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["agent", "key"]
        constraints = [
            # Also the index of memory_read (WHERE tenant, agent) and the upsert by key.
            models.UniqueConstraint(fields=["tenant", "agent", "key"], name="knowledge_memory_uniq_key"),
        ]


class MemoryFreeze(models.Model):
    """While a row covers (tenant, agent), long-term memory there is read-only: writes and
    refresh are refused and audited; reads serve the frozen state. ``tenant`` null means
    every tenant, ``agent`` empty means every agent. The database is the authority."""

    scope_key = models.CharField(max_length=200, unique=True, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    agent = models.CharField(max_length=100, blank=True)
    reason = models.TextField()
    frozen_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]

    @staticmethod
    def key_for(tenant_id, agent: str) -> str:
        return f"{tenant_id or '*'}/{agent or '*'}"

    @property
    def scope_label(self) -> str:
        tenant = str(self.tenant_id) if self.tenant_id else "all tenants"
        return f"{tenant} / {self.agent or 'all agents'}"
