"""State changes of the runtime: runs, policies, kill switches, tenant spend.

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
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Least
from django.utils import timezone

from agents import hotsql
from agents.approval_subject import run_subject
from agents.models import (
    ACTIVE_RUN_STATUSES,
    Agent,
    AgentRun,
    KillSwitch,
    Policy,
    RunStatus,
    SwitchScope,
    TenantBudget,
    TenantSpend,
    Tier,
)
from approvals.services import approval_requests_cancel
from audit.services import Actor, audit_record
from console.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from console.models import Tenant, TenantMembership
from console.roles import ADMIN, OPERATOR, has_role

logger = logging.getLogger(__name__)

# An arbitrary constant naming the switch lock among PostgreSQL advisory locks. Flips take
# it exclusively; strict checks (credit writes) take it shared inside their transaction.
SWITCH_LOCK_KEY = 0x53574954  # "SWIT"


# --- kill switches ----------------------------------------------------------------------


def _lock_switches(*, shared: bool) -> None:
    if connection.vendor == "postgresql":
        fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {fn}(%s)", [SWITCH_LOCK_KEY])


def switches_engaged() -> list[KillSwitch]:
    """Every engaged, unexpired switch (a handful of rows; partial index switch_engaged)."""
    # KillSwitch.objects.filter(engaged=True).filter(Q(expires_at__isnull=True) |
    # Q(expires_at__gt=now)), hand-written (read before every write tool call)
    return hotsql.switches_engaged(timezone.now())


def switches_active_for(
    *,
    tool: str | None = None,
    tier: str | None = None,
    intent: str | None = None,
    agent: str | None = None,
    memory: bool = False,
    strict: bool = False,
) -> list[KillSwitch]:
    """Engaged, unexpired switches that cover any of the given targets (global always).

    Read from the database, the authority. ``strict=True`` must run inside the caller's
    transaction (the credit write): it takes the switch lock shared, so a flip that
    committed first is seen and a flip in progress waits for this transaction.
    """
    if strict:
        if not transaction.get_connection().in_atomic_block:
            raise RuntimeError("switches_active_for(strict=True) must run inside a transaction")
        _lock_switches(shared=True)
    # Engaged switches are a handful of rows (partial index switch_engaged): read them all
    # with one simple query and match in Python, which is cheaper than composing the OR.
    engaged = switches_engaged()
    wanted = {(SwitchScope.GLOBAL, "")}
    if tool:
        wanted |= {(SwitchScope.TOOL, tool), (SwitchScope.APPROVAL, tool)}
    if tier:
        wanted.add((SwitchScope.APPROVAL, tier))
    if intent:
        wanted.add((SwitchScope.INTENT, intent))
    if agent:
        wanted.add((SwitchScope.AGENT, agent))
    return [s for s in engaged if (s.scope, s.target) in wanted or (memory and s.scope == SwitchScope.MEMORY)]


GLOBAL_TARGETS = ("", "*", "-", "all")


def _switch_target(scope: str, target: str) -> str:
    """The stored form of ``scope:target`` (global: '', memory: '*' for all), without
    asking whether the target exists."""
    if scope not in SwitchScope.values:
        raise InvalidInput(f"Unknown switch scope {scope!r}; use one of {', '.join(SwitchScope.values)}.")
    target = (target or "").strip()
    if scope == SwitchScope.GLOBAL:
        if target not in GLOBAL_TARGETS:
            raise InvalidInput("The global switch has no target; use '-', 'all' or '*'.")
        return ""
    if scope == SwitchScope.MEMORY:
        return "*" if target in GLOBAL_TARGETS else target
    if not target:
        raise InvalidInput(f"A {scope} switch needs a target (e.g. a tool name).")
    return target


def _validate_switch_target(scope: str, target: str) -> str:
    """``_switch_target``, and the target must exist now (a tool in the registry, a known
    intent, an agent)."""
    from agents.planner import INTENTS
    from agents.tools import REGISTRY

    target = _switch_target(scope, target)
    if scope == SwitchScope.GLOBAL:
        return target
    if scope == SwitchScope.MEMORY:
        if target != "*" and not Agent.objects.filter(slug=target).exists():
            raise InvalidInput(
                f"Memory freeze targets '*' (all memory) or an agent slug; no agent {target!r}."
            )
        return target
    if scope == SwitchScope.TOOL and target not in REGISTRY:
        raise InvalidInput(f"Unknown tool {target!r}; known tools: {', '.join(sorted(REGISTRY))}.")
    if scope == SwitchScope.APPROVAL and target not in REGISTRY and target not in Tier.values:
        raise InvalidInput(f"Force approval targets a tool name or a tier ({', '.join(Tier.values)}).")
    if scope == SwitchScope.INTENT:
        known = set(INTENTS) | {i for a in Agent.objects.values_list("intents", flat=True) for i in (a or [])}
        if target not in known:
            raise InvalidInput(f"Unknown intent {target!r}; known intents: {', '.join(sorted(known))}.")
    if scope == SwitchScope.AGENT and not Agent.objects.filter(slug=target).exists():
        raise InvalidInput(f"No agent {target!r}; pause targets an agent slug such as 'support'.")
    return target


def _switch_effects(*, actor: Any, switch: KillSwitch, engaged: bool, reason: str) -> None:
    """Side effects of a flip that live outside the switch table, in the same transaction:
    memory freeze, re-enqueue of runs a pause parked. Then invalidate every worker's copy
    now (inside the transaction) and again once the flip is visible (on commit)."""
    from agents import switches

    if switch.scope == SwitchScope.MEMORY:
        from agents.knowledge.services import memory_freeze, memory_unfreeze

        agent = None if switch.target == "*" else switch.target
        if engaged:
            memory_freeze(actor=actor, agent=agent, reason=f"kill switch {switch}: {reason}")
        else:
            memory_unfreeze(actor=actor, agent=agent, reason=f"kill switch {switch}: {reason or 'released'}")
    if not engaged and switch.scope in (SwitchScope.AGENT, SwitchScope.GLOBAL):
        from agents.tasks import send_run

        parked = AgentRun.objects.filter(status=RunStatus.QUEUED)
        if switch.scope == SwitchScope.AGENT:
            parked = parked.filter(agent__slug=switch.target)
        ids = [str(pk) for pk in parked.values_list("public_id", flat=True)[:5000]]
        transaction.on_commit(lambda: [send_run(i) for i in ids])
    switches.bump_version()
    transaction.on_commit(switches.bump_version)


def switch_engage(
    *, actor: Any, scope: str, target: str = "", reason: str, expires_at: datetime | None = None
) -> KillSwitch:
    """Engage a switch (create it if needed; engaging again updates reason and expiry).
    Workers see it at their next check; credit writes see it as soon as it commits."""
    target = _validate_switch_target(scope, target)
    if not (reason or "").strip():
        raise InvalidInput("A reason is required to engage a switch: say what incident it answers.")
    if expires_at is not None and timezone.is_naive(expires_at):
        raise InvalidInput(
            "expires_at has no time zone; give one, e.g. 2030-01-01T00:00:00Z or +02:00."
        )
    try:
        past = expires_at is not None and expires_at <= timezone.now()
    except OverflowError:
        raise InvalidInput("expires_at is outside the representable range.") from None
    if past:
        raise InvalidInput("expires_at is in the past; give a future time or none.")
    who = actor if isinstance(actor, User) else None
    with transaction.atomic():
        _lock_switches(shared=False)
        switch, _ = KillSwitch.objects.select_for_update().get_or_create(scope=scope, target=target)
        switch.engaged, switch.reason = True, reason.strip()
        switch.changed_by, switch.changed_by_label = who, Actor.of(actor).label
        switch.changed_at, switch.expires_at = timezone.now(), expires_at
        switch.save()
        _switch_effects(actor=actor, switch=switch, engaged=True, reason=switch.reason)
        audit_record(
            actor=actor,
            action="switch.engaged",
            object_type="switch",
            object_id=str(switch),
            payload={
                "scope": scope,
                "target": target,
                "reason": switch.reason,
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
        )
    return switch


def switch_release(*, actor: Any, scope: str, target: str = "", reason: str = "") -> KillSwitch:
    """Release an engaged switch. Runs a pause parked are enqueued again on commit.

    The target need not exist any more: a switch engaged on a tool, intent or agent that a
    later deploy removed can still be released (it would otherwise stay engaged for good)."""
    target = _switch_target(scope, target)
    who = actor if isinstance(actor, User) else None
    with transaction.atomic():
        _lock_switches(shared=False)
        switch = KillSwitch.objects.select_for_update().filter(scope=scope, target=target).first()
        if switch is None or not switch.engaged:
            _validate_switch_target(scope, target)  # an unknown target says so first
            raise Conflict(f"Switch {scope}:{target or '*'} is not engaged.")
        switch.engaged, switch.expires_at = False, None
        switch.reason = (reason or "").strip()
        switch.changed_by, switch.changed_by_label = who, Actor.of(actor).label
        switch.changed_at = timezone.now()
        switch.save()
        _switch_effects(actor=actor, switch=switch, engaged=False, reason=switch.reason)
        audit_record(
            actor=actor,
            action="switch.released",
            object_type="switch",
            object_id=str(switch),
            payload={"scope": scope, "target": target, "reason": switch.reason},
        )
    return switch


def switch_set(
    *, actor: Any, scope: str, target: str, engaged: bool, reason: str, expires_at: datetime | None = None
) -> KillSwitch:
    """Engage or release (the API's PUT and the page's toggle). A reason is required both ways."""
    if not (reason or "").strip():
        verb = "engage" if engaged else "release"
        raise InvalidInput(f"A reason is required to {verb} a switch: say what incident it answers.")
    if engaged:
        return switch_engage(actor=actor, scope=scope, target=target, reason=reason, expires_at=expires_at)
    if expires_at is not None:
        raise InvalidInput("expires_at only applies when engaging a switch.")
    return switch_release(actor=actor, scope=scope, target=target, reason=reason)


def switch_expire_due(*, now: datetime | None = None) -> list[str]:
    """Lift every engaged switch whose expiry has passed (the beat sweep). Each lift is a
    conditional UPDATE (still engaged, still expired), so two sweeps never both record it.
    Returns the switches lifted."""
    now = now or timezone.now()
    lifted = []
    due = KillSwitch.objects.filter(engaged=True, expires_at__isnull=False, expires_at__lte=now)
    for switch in list(due):
        with transaction.atomic():
            _lock_switches(shared=False)
            updated = KillSwitch.objects.filter(
                pk=switch.pk, engaged=True, expires_at=switch.expires_at, expires_at__lte=now
            ).update(engaged=False, changed_at=now, changed_by=None, changed_by_label="expiry",
                     reason=f"expired (was: {switch.reason})"[:2000])
            if not updated:
                continue
            actor = Actor.system("switch-expiry")
            _switch_effects(actor=actor, switch=switch, engaged=False, reason="expired")
            audit_record(
                actor=actor,
                action="switch.expired",
                object_type="switch",
                object_id=str(switch),
                payload={
                    "scope": switch.scope,
                    "target": switch.target,
                    "reason": switch.reason,
                    "expires_at": switch.expires_at.isoformat(),
                    "engaged_by": switch.changed_by_label,
                },
            )
        lifted.append(str(switch))
    if lifted:
        logger.info("switch expiry lifted %s", ", ".join(lifted))
    return lifted


# --- policies ---------------------------------------------------------------------------


def policy_create(
    *, actor: Any, rules: dict[str, Any], description: str = "", activate: bool = False
) -> Policy:
    """Store a new policy version (validated); optionally make it the active one."""
    from agents.policy import PolicyInvalid, validate_rules

    try:
        validate_rules(rules)
    except PolicyInvalid as exc:
        raise InvalidInput(str(exc)) from None
    with transaction.atomic():
        last = Policy.objects.select_for_update().order_by("-version").first()
        policy = Policy.objects.create(
            version=(last.version + 1) if last else 1,
            rules=rules,
            description=description[:200],
            created_by=actor if isinstance(actor, User) else None,
        )
        if activate:
            _activate(actor=actor, policy=policy)
        audit_record(
            actor=actor,
            action="policy.created",
            object_type="policy",
            object_id=policy.version,
            policy_version=policy.version,
            payload={"version": policy.version, "description": policy.description,
                     "activated": activate, "rules": rules},
        )
    return policy


def _activate(*, actor: Any, policy: Policy) -> None:
    previous = (
        Policy.objects.filter(is_active=True).exclude(pk=policy.pk).values_list("version", flat=True).first()
    )
    Policy.objects.filter(is_active=True).exclude(pk=policy.pk).update(is_active=False)
    Policy.objects.filter(pk=policy.pk).update(is_active=True, activated_at=timezone.now())
    from agents import switches  # every process caches the active row against its version key

    transaction.on_commit(switches.bump_version)  # (agents.policy): seen once committed
    audit_record(
        actor=actor,
        action="policy.activated",
        object_type="policy",
        object_id=policy.version,
        policy_version=policy.version,
        payload={"version": policy.version, "previous_version": previous, "description": policy.description},
    )


def policy_activate(*, actor: Any, policy: Policy) -> Policy:
    with transaction.atomic():
        Policy.objects.select_for_update().filter(is_active=True).first()
        _activate(actor=actor, policy=policy)
    policy.refresh_from_db()
    return policy


# --- tenant daily spend -----------------------------------------------------------------


def _daily_cap(tenant_id) -> Decimal:
    cap = TenantBudget.objects.filter(tenant_id=tenant_id).values_list("daily_cap_usd", flat=True).first()
    return cap if cap is not None else Decimal(str(settings.AGENT_TENANT_DAILY_CAP_USD))


def spend_reserve(*, tenant_id, amount: Decimal) -> tuple[bool, TenantSpend]:
    """Reserve ``amount`` of today's cap before a model call (a conditional UPDATE, so
    concurrent runs cannot overspend). Returns (reserved?, the day's row)."""
    day = timezone.now().date()
    known = _SPEND_ROWS.get((str(tenant_id), day))
    if known is not None:
        # the usual case: one conditional UPDATE, no read (hand-written on PostgreSQL)
        added = hotsql.spend_add(spend_id=known.pk, tenant_id=tenant_id, day=day, amount=amount)
        if added is None:
            added = TenantSpend.objects.filter(
                pk=known.pk, tenant_id=tenant_id, day=day, spent_usd__lte=F("cap_usd") - amount
            ).update(spent_usd=F("spent_usd") + amount)
        if added:
            return True, known
    row = TenantSpend.objects.filter(tenant_id=tenant_id, day=day).first()
    if row is None:
        try:
            with transaction.atomic():
                row = TenantSpend.objects.create(tenant_id=tenant_id, day=day, cap_usd=_daily_cap(tenant_id))
        except IntegrityError:
            row = TenantSpend.objects.get(tenant_id=tenant_id, day=day)
    reserved = TenantSpend.objects.filter(pk=row.pk, spent_usd__lte=F("cap_usd") - amount).update(
        spent_usd=F("spent_usd") + amount
    )
    if len(_SPEND_ROWS) > 1024:
        _SPEND_ROWS.clear()
    _SPEND_ROWS[(str(tenant_id), day)] = row
    return bool(reserved), row


# The day's spend row per tenant, per process: only its pk is used, and the conditional
# UPDATE above also matches tenant and day, so a stale entry can only fall back to the read.
_SPEND_ROWS: dict[tuple[str, Any], TenantSpend] = {}


def spend_settle(*, spend_id: int, reserved: Decimal, actual: Decimal) -> None:
    """Replace a reservation by the actual cost (never beyond the cap, never below 0)."""
    delta = actual - reserved
    if delta and not hotsql.spend_adjust(spend_id=spend_id, delta=delta):
        TenantSpend.objects.filter(pk=spend_id).update(spent_usd=Least(F("spent_usd") + delta, F("cap_usd")))


# --- runs -------------------------------------------------------------------------------


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
        enqueue_run(run, resume=True)
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
