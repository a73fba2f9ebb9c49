"""The append-only, hash-chained audit log.

Rows are written only by ``audit.services.audit_record``. The database refuses UPDATE,
DELETE and TRUNCATE (pgtrigger on PostgreSQL, raising triggers on SQLite; see the
migrations), and a deployment can run the app as a role that holds only INSERT and SELECT
on this table (``manage.py audit_grants``).
"""

from __future__ import annotations

import uuid

import pgtrigger
from django.db import models


class ActorType(models.TextChoices):
    USER = "user", "User"
    SERVICE = "service", "Service account"
    RUN = "run", "Agent run"
    SYSTEM = "system", "System"
    ANONYMOUS = "anonymous", "Anonymous"


class AuditEvent(models.Model):
    seq = models.BigIntegerField(primary_key=True)  # gap-free, assigned under the chain lock
    event_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    occurred_at = models.DateTimeField()
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64, blank=True)
    actor_label = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=64)
    # no index of its own: audit_tenant_seq (tenant, -seq) serves the tenant lookups (one
    # btree insert fewer per event)
    tenant = models.ForeignKey("console.Tenant", null=True, blank=True, db_index=False,
                               on_delete=models.PROTECT, related_name="+")
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    trace_id = models.CharField(max_length=64, blank=True)
    policy_version = models.CharField(max_length=32, blank=True)
    payload = models.JSONField(default=dict)
    prev_hash = models.CharField(max_length=64)
    # No index: nothing looks an event up by its hash (verification and checkpoints go by
    # seq), and a unique index over random 64-character keys costs every append.
    hash = models.CharField(max_length=64)

    class Meta:
        ordering = ["seq"]
        indexes = [
            # serves: search by actor, newest first (keyset on seq)
            models.Index(fields=["actor_label", "-seq"], name="audit_actor_seq"),
            # serves: search by action, newest first
            models.Index(fields=["action", "-seq"], name="audit_action_seq"),
            # serves: search by tenant, newest first
            models.Index(fields=["tenant", "-seq"], name="audit_tenant_seq"),
            # serves: "everything that happened to this object"
            models.Index(fields=["object_type", "object_id", "-seq"], name="audit_object_seq"),
            # serves: follow a trace end to end
            models.Index(fields=["trace_id", "seq"], name="audit_trace_seq"),
            # serves: time range filters (since/until)
            models.Index(fields=["occurred_at"], name="audit_occurred_at"),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(seq__gt=0), name="audit_seq_positive"),
            models.CheckConstraint(
                condition=models.Q(actor_type__in=[c.value for c in ActorType]),
                name="audit_actor_type_valid",
            ),
        ]
        triggers = [
            pgtrigger.Protect(name="audit_no_update", operation=pgtrigger.Update),
            pgtrigger.Protect(name="audit_no_delete", operation=pgtrigger.Delete),
            # Row triggers do not fire on TRUNCATE: a statement-level BEFORE trigger does.
            pgtrigger.Trigger(
                name="audit_no_truncate",
                operation=pgtrigger.Truncate,
                level=pgtrigger.Statement,
                when=pgtrigger.Before,
                func="RAISE EXCEPTION 'audit log is append-only: TRUNCATE refused on %', "
                "TG_TABLE_NAME; RETURN NULL;",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action}"
