"""Identity: tenants, who belongs to them, service accounts, API tokens, worker liveness."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Tenant(models.Model):
    """A customer workspace. Every run, credential, document and event carries one."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class TenantMembership(models.Model):
    """A person's access to a tenant's data in the console (reviewers, operators)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="tenant_memberships")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "tenant"], name="uniq_membership_user_tenant")
        ]


class ServiceAccount(models.Model):
    """A non-human identity (an integrating system). It may act for one tenant only."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                related_name="service_account")
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="service_accounts")
    description = models.CharField(max_length=200, blank=True)

    def __str__(self) -> str:
        return f"{self.user.username} ({self.tenant.slug})"


class ApiToken(models.Model):
    """A bearer token. Only its SHA-256 is stored; the secret is shown once at issue.

    The token reads ``acp_<prefix>_<secret>``; ``prefix`` is stored in clear to find the
    row, the full token is compared by hash in constant time.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, unique=True)
    token_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def __str__(self) -> str:
        return f"{self.prefix} ({self.user})"


class WorkerHeartbeat(models.Model):
    """One row per live Celery worker, refreshed every WORKER_HEARTBEAT_SECONDS."""

    hostname = models.CharField(max_length=255, unique=True)
    pid = models.IntegerField()
    last_seen = models.DateTimeField()

    class Meta:
        # serves: health's "any worker fresher than the cutoff?"
        indexes = [models.Index(fields=["last_seen"], name="heartbeat_last_seen")]
        constraints = [models.CheckConstraint(condition=Q(pid__gt=0), name="heartbeat_pid_positive")]
