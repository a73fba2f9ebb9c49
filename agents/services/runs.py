"""Runs: start, cancel, resume after an approval, sweep.

Each top-level service is one transaction with its audit event inside; enqueuing the
worker happens on commit. The step loop itself lives in ``agents.runtime``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from agents.approval_subject import run_subject
from agents.models import ACTIVE_RUN_STATUSES, Agent, AgentRun, RunStatus
from approvals.services import approval_requests_cancel
from audit.services import Actor, audit_record
from console.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from console.models import Tenant, TenantMembership
from console.roles import ADMIN, OPERATOR, has_role

logger = logging.getLogger(__name__)


def agent_resolve(*, slug: str, tenant: Tenant) -> Agent:
    """The active version of ``slug`` for ``tenant`` (a tenant-specific one wins)."""
    agents = Agent.objects.filter(slug=slug, is_active=True).filter(Q(tenant=tenant) | Q(tenant__isnull=True))
    agent = agents.order_by(F("tenant").asc(nulls_last=True)).first()
    if agent is None:
        raise NotFound(
            f"No active agent {slug!r} for tenant {tenant.slug}. Run `manage.py seed_demo` "
            "or create the agent definition."
        )
    return agent


def _check_may_start(actor: User, tenant: Tenant) -> None:
    service = getattr(actor, "service_account", None)
    if service is not None:
        if service.tenant_id != tenant.pk:
            raise PermissionDenied(
                f"Service account {actor.username} may start runs only for tenant "
                f"{service.tenant.slug}, not {tenant.slug}."
            )
        return
    if not has_role(actor, OPERATOR, ADMIN):
        raise PermissionDenied("Starting runs needs the operator role or a service account.")
    if not has_role(actor, ADMIN) and not TenantMembership.objects.filter(user=actor, tenant=tenant).exists():
        raise PermissionDenied(f"You are not a member of tenant {tenant.slug}.")


def _request_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()


BUDGET_FIELDS = ("max_steps", "max_tokens", "max_wall_seconds", "max_cost_usd")


def run_start(
    *,
    actor: Any,
    tenant: str | Tenant,
    message: str,
    agent: str = "support",
    intent: str | None = None,
    idempotency_key: str | None = None,
    on_behalf_of: str | None = None,
    budgets: dict[str, Any] | None = None,
    enqueue: bool = True,
) -> tuple[AgentRun, bool]:
    """Create a run and enqueue it on commit. Returns (run, created).

    ``actor`` is a User (person or service account) or an audit ``Actor`` for the command
    line. Service accounts may start runs for their own tenant only (403 otherwise). With
    an ``idempotency_key``, the same key and body return the same run (created=False); the
    same key with another body is a Conflict (409). ``budgets`` may lower the agent's
    budgets, never raise them.
    """
    from agents.planner import INTENTS, classify_intent
    from agents.tasks import enqueue_run

    message = (message or "").strip()
    if not message:
        raise InvalidInput("input.message is required: the customer's request in plain words.")
    if len(message) > 8000:
        raise InvalidInput("input.message is longer than 8000 characters; shorten it.")
    tenant_obj = tenant if isinstance(tenant, Tenant) else Tenant.objects.filter(slug=tenant).first()
    if tenant_obj is None:
        raise NotFound(f"No tenant {tenant!r}.")
    user = actor if isinstance(actor, User) else None
    if user is not None:
        _check_may_start(user, tenant_obj)
    if idempotency_key is not None:
        idempotency_key = idempotency_key.strip()
        if not idempotency_key or len(idempotency_key) > 255:
            raise InvalidInput("Idempotency-Key must be 1 to 255 characters.")
        if user is None:
            raise InvalidInput("An Idempotency-Key needs an authenticated requester.")
    body = {
        "agent": agent,
        "tenant": tenant_obj.slug,
        "message": message,
        "intent": intent,
        "on_behalf_of": on_behalf_of,
        "budgets": budgets or {},
    }
    digest = _request_hash(body)
    if idempotency_key:
        existing = AgentRun.objects.filter(requester=user, idempotency_key=idempotency_key).first()
        if existing is not None:
            return _idempotent_replay(existing, digest), False

    agent_obj = agent_resolve(slug=agent, tenant=tenant_obj)
    intent = intent or classify_intent(message)
    allowed_intents = agent_obj.intents or list(INTENTS)
    if intent not in allowed_intents:
        raise InvalidInput(
            f"Intent {intent!r} is not handled by agent {agent_obj.slug}; "
            f"use one of {', '.join(allowed_intents)}."
        )
    limits = {name: getattr(agent_obj, name) for name in BUDGET_FIELDS}
    for name, value in (budgets or {}).items():
        if name not in BUDGET_FIELDS:
            raise InvalidInput(f"Unknown budget {name!r}; use {', '.join(BUDGET_FIELDS)}.")
        if value is None:
            continue
        value = Decimal(str(value)) if name == "max_cost_usd" else value
        if value <= 0:
            raise InvalidInput(f"Budget {name} must be positive.")
        limits[name] = min(value, limits[name])
    behalf_user = None
    if on_behalf_of:
        behalf_user = User.objects.filter(username=on_behalf_of).first()
    from agents.policy import active_policy

    policy_version, _ = active_policy()
    who = Actor.of(actor)
    try:
        with transaction.atomic():
            run = AgentRun.objects.create(
                tenant=tenant_obj,
                agent=agent_obj,
                intent=intent,
                input={"message": message},
                requester=user,
                requester_label=who.label,
                on_behalf_of=behalf_user,
                on_behalf_of_label=on_behalf_of or "",
                trace_id=uuid.uuid4().hex,
                policy_version=policy_version,
                idempotency_key=idempotency_key,
                request_hash=digest,
                **limits,
            )
            audit_record(
                actor=actor,
                action="run.created",
                tenant=tenant_obj,
                object_type="run",
                object_id=run.public_id,
                trace_id=run.trace_id,
                policy_version=policy_version,
                payload={
                    "agent": f"{agent_obj.slug} v{agent_obj.version}",
                    "intent": intent,
                    "on_behalf_of": on_behalf_of or "",
                    "budgets": {k: str(v) for k, v in limits.items()},
                },
            )
            if enqueue:
                enqueue_run(run)
    except IntegrityError:
        if not idempotency_key:
            raise
        existing = AgentRun.objects.get(requester=user, idempotency_key=idempotency_key)
        return _idempotent_replay(existing, digest), False
    return run, True


def _idempotent_replay(existing: AgentRun, digest: str) -> AgentRun:
    if existing.request_hash != digest:
        raise Conflict(
            "This Idempotency-Key was already used with a different request body. "
            "Use a new key for a new request.",
            code="idempotency_key_reused",
        )
    return existing


_CANCELLABLE = [s.value for s in ACTIVE_RUN_STATUSES]


def run_cancel(*, actor: Any, run: AgentRun, reason: str = "") -> AgentRun:
    """Cancel a run that has not ended. A worker mid-step stops at its next commit (its
    lease-fenced write fails); a parked run's pending approval requests are cancelled in
    the same transaction (``approvals.services.approval_requests_cancel``, audited one by
    one; the calls they held are refused through ``agents.approval_handler``)."""
    reason = (reason or "").strip() or "cancelled on request"
    with transaction.atomic():
        # Requests before the run: a decision (and the SLA expiry) locks its request row
        # and then moves the run, so taking the locks in the same order cannot deadlock.
        # A run that already ended rolls the cancellations back with the Conflict.
        cancelled = approval_requests_cancel(subject=run_subject(run), actor=actor, reason=reason)
        updated = AgentRun.objects.filter(pk=run.pk, status__in=_CANCELLABLE).update(
            status=RunStatus.CANCELLED,
            terminal_reason=f"Cancelled by {Actor.of(actor).label}: {reason}",
            finished_at=timezone.now(),
            lease_token="",
            lease_expires_at=None,
        )
        if not updated:
            run.refresh_from_db()
            raise Conflict(f"Run {run.public_id} already ended ({run.status}); nothing to cancel.")
        audit_record(
            actor=actor,
            action="run.cancelled",
            tenant=run.tenant_id,
            object_type="run",
            object_id=run.public_id,
            trace_id=run.trace_id,
            payload={"reason": reason, "approval_requests_cancelled": cancelled},
        )
    run.refresh_from_db()
    return run


def run_resume_after_approval(
    *, run: AgentRun, actor: Any, request_id: Any, outcome: str, now: datetime | None = None
) -> bool:
    """Move a parked run ``waiting_approval -> queued`` after its approval request closed
    (``outcome``: approve, reject or expired), inside the caller's transaction: one
    conditional UPDATE (so it happens once, whoever calls it), the ``run.resumed`` event,
    and the resume enqueued on commit. The worker reads the request's outcome. Returns
    whether this call moved the run."""
    from agents.tasks import enqueue_run

    now = now or timezone.now()
    resumed = AgentRun.objects.filter(pk=run.pk, status=RunStatus.WAITING_APPROVAL).update(
        status=RunStatus.QUEUED, updated_at=now
    )
    if resumed:
        audit_record(
            actor=actor,
            action="run.resumed",
            tenant=run.tenant_id,
            object_type="run",
            object_id=run.public_id,
            trace_id=run.trace_id,
            payload={"request_id": str(request_id), "decision": outcome},
        )
        enqueue_run(run)
    return bool(resumed)


def run_sweep(*, now: datetime | None = None, queued_grace: timedelta | None = None) -> list[str]:
    """Re-enqueue runs a worker should be executing but is not: running runs whose lease
    expired (the worker died) and queued runs whose message was lost. Enqueuing twice is
    harmless: only the lease holder steps a run. Returns the public ids enqueued."""
    from agents.tasks import send_run

    now = now or timezone.now()
    grace = (
        queued_grace if queued_grace is not None else timedelta(seconds=settings.AGENT_QUEUED_GRACE_SECONDS)
    )
    orphaned = Q(status=RunStatus.RUNNING) & (Q(lease_expires_at__lt=now) | Q(lease_expires_at__isnull=True))
    lost = Q(status=RunStatus.QUEUED, updated_at__lt=now - grace) & (
        Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    )
    ids = [
        str(pk) for pk in AgentRun.objects.filter(orphaned | lost).values_list("public_id", flat=True)[:500]
    ]
    for public_id in ids:
        send_run(public_id)
    if ids:
        logger.info("sweeper re-enqueued %d run(s)", len(ids))
    return ids
