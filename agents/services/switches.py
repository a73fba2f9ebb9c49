"""Kill switches: engage, release, expire, and the authoritative reads of the table.

Each flip is one transaction holding the switch lock (a PostgreSQL advisory lock) with its
audit event inside; every worker's cached copy (``agents.switches``) is invalidated inside
the transaction and again on commit.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.utils import timezone

from agents import hotsql
from agents.models import Agent, AgentRun, KillSwitch, RunStatus, SwitchScope, Tier
from audit.services import Actor, audit_record
from console.errors import Conflict, InvalidInput

logger = logging.getLogger(__name__)

# An arbitrary constant naming the switch lock among PostgreSQL advisory locks. Flips take
# it exclusively; strict checks (credit writes) take it shared inside their transaction.
SWITCH_LOCK_KEY = 0x53574954  # "SWIT"


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


def switch_target_normalize(scope: str, target: str) -> str:
    """The stored form of ``scope:target`` (global: '', memory: '*' for all), without
    asking whether the target exists (releasing, and reading a switch's row). An unknown
    scope or a missing target is ``InvalidInput``."""
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


def switch_target_validate(scope: str, target: str) -> str:
    """``switch_target_normalize``, and the target must exist now (a tool in the registry, a
    known intent, an agent): what engaging a switch, and previewing one, accept."""
    from agents.planner import INTENTS
    from agents.tools.registry import known_tool_names

    target = switch_target_normalize(scope, target)
    if scope == SwitchScope.GLOBAL:
        return target
    if scope == SwitchScope.MEMORY:
        if target != "*" and not Agent.objects.filter(slug=target).exists():
            raise InvalidInput(
                f"Memory freeze targets '*' (all memory) or an agent slug; no agent {target!r}."
            )
        return target
    # tools in code and tools registered as data (integrations), of any tenant
    tools = known_tool_names() if scope in (SwitchScope.TOOL, SwitchScope.APPROVAL) else set()
    if scope == SwitchScope.TOOL and target not in tools:
        raise InvalidInput(f"Unknown tool {target!r}; known tools: {', '.join(sorted(tools))}.")
    if scope == SwitchScope.APPROVAL and target not in tools and target not in Tier.values:
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
    target = switch_target_validate(scope, target)
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
    target = switch_target_normalize(scope, target)
    who = actor if isinstance(actor, User) else None
    with transaction.atomic():
        _lock_switches(shared=False)
        switch = KillSwitch.objects.select_for_update().filter(scope=scope, target=target).first()
        if switch is None or not switch.engaged:
            switch_target_validate(scope, target)  # an unknown target says so first
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
