"""Writes: knowledge sources and documents, long-term memory (with freeze), conversation
summarisation and the per-run scratchpad.

Long-term memory is what a freeze protects: while a ``MemoryFreeze`` covers (tenant, agent),
``memory_write`` / ``memory_forget`` / ``memory_refresh`` are refused with ``MemoryFrozen``
and each refusal is audited (``memory.refused``); reads (``selectors.memory_read``) keep
serving the frozen state. A freeze and a write cannot interleave: on PostgreSQL writers take
a shared transaction-scoped advisory lock and ``memory_freeze`` an exclusive one, so a write
either commits before the freeze or sees it; SQLite's IMMEDIATE transactions serialise
writers already. The conversation and the scratchpad are a live run's working state and
are not frozen.

The audit event of a refusal is written in the refusing service's own transaction; when
the caller wraps the call in a transaction that it then rolls back, the event goes too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.postgres.search import SearchVector
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from agents.knowledge.models import (
    ConversationMessage,
    Document,
    MemoryFreeze,
    MemoryItem,
    ScratchpadEntry,
    Source,
)
from agents.knowledge.selectors import conversation_tokens, memory_freeze_for
from agents.llm.base import STEP_SUMMARY, ModelClient, ModelError, ModelRequest, ModelResponse
from agents.prompting import build_messages, sanitise_output
from audit.services import Actor, audit_record
from console.errors import Conflict, InvalidInput

logger = logging.getLogger(__name__)

# An arbitrary constant naming the memory-freeze lock among PostgreSQL advisory locks.
FREEZE_LOCK_KEY = 0x4D454D46  # "MEMF"
MAX_MEMORY_VALUE_BYTES = 8 * 1024
MAX_SCRATCHPAD_VALUE_BYTES = 16 * 1024
MAX_SCRATCHPAD_KEYS = 100
MAX_DOCUMENT_CHARS = 200_000


class MemoryFrozen(Conflict):
    """Long-term memory is frozen for this tenant/agent: the write or refresh was refused."""

    code = "memory_frozen"

    def __init__(self, freeze: MemoryFreeze, *, operation: str):
        self.freeze = freeze
        self.operation = operation
        super().__init__(
            f"Memory is frozen for {freeze.scope_label} (by {freeze.frozen_by}: {freeze.reason}); the "
            f"{operation} was refused and recorded. Reads still serve the frozen state; an operator "
            "lifts the freeze to allow changes again."
        )


def _tenant_id(tenant: Any) -> Any:
    return getattr(tenant, "pk", tenant)


def _json_size(value: Any, what: str) -> int:
    try:
        return len(json.dumps(value, default=str).encode())
    except (TypeError, ValueError):
        raise InvalidInput(f"The {what} must be JSON-serialisable.") from None


def _freeze_lock(*, shared: bool) -> None:
    if connection.vendor == "postgresql":
        function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {function}(%s)", [FREEZE_LOCK_KEY])


# --- knowledge sources and documents ------------------------------------------------------


def source_upsert(
    *,
    actor: Any,
    tenant: Any,
    name: str,
    owner: str,
    max_age: timedelta,
    critical: bool = False,
    kind: str = Source.Kind.OTHER,
    refreshed_at: datetime | None = None,
) -> Source:
    """Create or change a tenant's knowledge source (owner, maximum age, critical)."""
    name, owner = (name or "").strip(), (owner or "").strip()
    if not name or len(name) > 120:
        raise InvalidInput("A source needs a name of 1 to 120 characters.")
    if not owner:
        raise InvalidInput(f"Source {name!r} needs an owner: the person or team who keeps it current.")
    if not isinstance(max_age, timedelta) or max_age <= timedelta(0):
        raise InvalidInput(f"Source {name!r} needs a positive max_age (a timedelta).")
    if kind not in Source.Kind.values:
        raise InvalidInput(f"Source kind {kind!r} is not one of {Source.Kind.values}.")
    with transaction.atomic():
        source, created = Source.objects.select_for_update().get_or_create(
            tenant_id=_tenant_id(tenant), name=name,
            defaults={"owner": owner, "max_age": max_age, "critical": critical, "kind": kind,
                      "last_refreshed_at": refreshed_at})
        wanted = {"owner": owner, "max_age": max_age, "critical": critical, "kind": kind}
        changed = {k: v for k, v in wanted.items() if getattr(source, k) != v}
        if changed:
            Source.objects.filter(pk=source.pk).update(**changed)
            for key, value in changed.items():
                setattr(source, key, value)
        if created or changed:
            audit_record(actor=actor, action="context.source_saved", tenant=source.tenant_id,
                         object_type="knowledge.source", object_id=source.pk,
                         payload={"name": name, "owner": owner, "critical": critical, "kind": kind,
                                  "max_age_seconds": int(max_age.total_seconds()), "created": created})
    return source


def source_mark_refreshed(*, actor: Any, source: Source, at: datetime | None = None) -> Source:
    """Record that the source's owner checked it is current (restarts its freshness clock)."""
    at = at or timezone.now()
    with transaction.atomic():
        Source.objects.filter(pk=source.pk).update(last_refreshed_at=at)
        source.last_refreshed_at = at
        audit_record(actor=actor, action="context.source_refreshed", tenant=source.tenant_id,
                     object_type="knowledge.source", object_id=source.pk,
                     payload={"name": source.name, "refreshed_at": at.isoformat()})
    return source


def document_upsert(
    *, actor: Any, source: Source, title: str, body: str, updated_at: datetime | None = None
) -> Document:
    """Create or change a document of a source (same tenant as the source, always), and
    update its full-text search vector on PostgreSQL."""
    title = (title or "").strip()
    if not title or len(title) > 300:
        raise InvalidInput("A document needs a title of 1 to 300 characters.")
    if not body or not body.strip():
        raise InvalidInput(f"Document {title!r} has an empty body.")
    if len(body) > MAX_DOCUMENT_CHARS:
        raise InvalidInput(f"Document {title!r} is {len(body)} characters; split it below "
                           f"{MAX_DOCUMENT_CHARS}.")
    updated_at = updated_at or timezone.now()
    with transaction.atomic():
        document, created = Document.objects.select_for_update().get_or_create(
            source=source, title=title,
            defaults={"tenant_id": source.tenant_id, "body": body, "updated_at": updated_at})
        changed = not created and document.body != body
        if changed:
            document.body, document.updated_at = body, updated_at
            document.save(update_fields=["body", "updated_at"])
        if (created or changed) and connection.vendor == "postgresql":
            Document.objects.filter(pk=document.pk).update(
                search_vector=SearchVector("title", weight="A", config="english")
                + SearchVector("body", weight="B", config="english"))
        if created or changed:
            audit_record(actor=actor, action="context.document_saved", tenant=source.tenant_id,
                         object_type="knowledge.document", object_id=document.pk,
                         payload={"source": source.name, "title": title, "chars": len(body),
                                  "created": created})
    return document


# --- long-term memory ---------------------------------------------------------------------


def _refuse(*, actor: Any, freeze: MemoryFreeze, tenant_id: Any, agent: str, operation: str,
            detail: dict[str, Any], trace_id: str) -> None:
    audit_record(actor=actor, action="memory.refused", tenant=tenant_id, object_type="memory",
                 object_id=f"{agent}", trace_id=trace_id,
                 payload={"operation": operation, "agent": agent, "freeze": freeze.scope_key,
                          "frozen_by": freeze.frozen_by, "reason": freeze.reason, **detail})


def memory_write(
    *,
    actor: Any,
    tenant: Any,
    agent: str,
    key: str,
    value: Any,
    run_id: str = "",
    ttl: timedelta | None = None,
    trace_id: str = "",
) -> MemoryItem:
    """Write (or overwrite) one long-term memory item of an agent for a tenant. The value is
    sanitised first (no secrets or PII in long-term memory). Refused when frozen."""
    tenant_id = _tenant_id(tenant)
    if not agent or not key or len(key) > 200:
        raise InvalidInput("A memory item needs an agent name and a key of 1 to 200 characters.")
    size = _json_size(value, "memory value")
    if size > MAX_MEMORY_VALUE_BYTES:
        raise InvalidInput(f"A memory value may be {MAX_MEMORY_VALUE_BYTES} bytes; this one is {size}. "
                           "Store a summary.")
    clean = sanitise_output(value)
    now = timezone.now()
    refused: MemoryFreeze | None = None
    with transaction.atomic():
        _freeze_lock(shared=True)
        freeze = memory_freeze_for(tenant=tenant_id, agent=agent)
        if freeze is not None:
            _refuse(actor=actor, freeze=freeze, tenant_id=tenant_id, agent=agent, operation="write",
                    detail={"key": key, "run_id": str(run_id)}, trace_id=trace_id)
            refused = freeze
        else:
            item, created = MemoryItem.objects.update_or_create(
                tenant_id=tenant_id, agent=agent, key=key,
                defaults={"value": clean, "source_run_id": str(run_id),
                          "expires_at": now + ttl if ttl else None})
            audit_record(actor=actor, action="memory.written", tenant=tenant_id, object_type="memory",
                         object_id=item.pk, trace_id=trace_id,
                         payload={"agent": agent, "key": key, "run_id": str(run_id), "bytes": size,
                                  "created": created})
    if refused is not None:
        raise MemoryFrozen(refused, operation="memory write")
    return item


def memory_forget(*, actor: Any, tenant: Any, agent: str, key: str, trace_id: str = "") -> bool:
    """Delete one memory item. Refused when frozen. Returns whether it existed."""
    tenant_id = _tenant_id(tenant)
    refused: MemoryFreeze | None = None
    deleted = 0
    with transaction.atomic():
        _freeze_lock(shared=True)
        freeze = memory_freeze_for(tenant=tenant_id, agent=agent)
        if freeze is not None:
            _refuse(actor=actor, freeze=freeze, tenant_id=tenant_id, agent=agent, operation="forget",
                    detail={"key": key}, trace_id=trace_id)
            refused = freeze
        else:
            deleted, _ = MemoryItem.objects.filter(tenant_id=tenant_id, agent=agent, key=key).delete()
            if deleted:
                audit_record(actor=actor, action="memory.forgotten", tenant=tenant_id, object_type="memory",
                             object_id=agent, trace_id=trace_id, payload={"agent": agent, "key": key})
    if refused is not None:
        raise MemoryFrozen(refused, operation="memory delete")
    return bool(deleted)


def memory_refresh(*, actor: Any, tenant: Any, agent: str, now: datetime | None = None) -> dict[str, int]:
    """Refresh one agent's memory for one tenant: drop expired items, keep at most
    ``MEMORY_MAX_ITEMS_PER_AGENT`` (newest first), stamp the rest. Refused when frozen."""
    tenant_id = _tenant_id(tenant)
    now = now or timezone.now()
    cap = int(getattr(settings, "MEMORY_MAX_ITEMS_PER_AGENT", 200))
    refused: MemoryFreeze | None = None
    counts = {"expired": 0, "trimmed": 0, "kept": 0}
    with transaction.atomic():
        _freeze_lock(shared=True)
        freeze = memory_freeze_for(tenant=tenant_id, agent=agent)
        if freeze is not None:
            _refuse(actor=actor, freeze=freeze, tenant_id=tenant_id, agent=agent, operation="refresh",
                    detail={}, trace_id="")
            refused = freeze
        else:
            items = MemoryItem.objects.filter(tenant_id=tenant_id, agent=agent)
            counts["expired"], _ = items.filter(expires_at__lte=now).delete()
            overflow = list(items.order_by("-updated_at", "-created_at").values_list("pk", flat=True)[cap:])
            if overflow:
                counts["trimmed"], _ = MemoryItem.objects.filter(pk__in=overflow).delete()
            counts["kept"] = items.update(refreshed_at=now)
            audit_record(actor=actor, action="memory.refreshed", tenant=tenant_id, object_type="memory",
                         object_id=agent, payload={"agent": agent, **counts})
    if refused is not None:
        raise MemoryFrozen(refused, operation="memory refresh")
    return counts


def memory_refresh_all(*, actor: Any = None, now: datetime | None = None) -> dict[str, int]:
    """The periodic job: refresh every (tenant, agent) that has memory; frozen ones are
    refused (and audited) one by one without stopping the others."""
    actor = actor or Actor.system("memory-refresh")
    totals = {"refreshed": 0, "refused": 0}
    pairs = MemoryItem.objects.values_list("tenant_id", "agent").distinct().order_by("tenant_id", "agent")
    for tenant_id, agent in list(pairs):
        try:
            memory_refresh(actor=actor, tenant=tenant_id, agent=agent, now=now)
            totals["refreshed"] += 1
        except MemoryFrozen:
            totals["refused"] += 1
    return totals


def memory_freeze(*, actor: Any, tenant: Any = None, agent: str | None = None, reason: str) -> MemoryFreeze:
    """Freeze long-term memory for a tenant, an agent, both, or (neither given) everything.
    Freezing an already frozen scope returns the existing freeze unchanged."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("Say why memory is being frozen (reason): it is shown to everyone refused.")
    tenant_id = _tenant_id(tenant) if tenant is not None else None
    agent = (agent or "").strip()
    scope_key = MemoryFreeze.key_for(tenant_id, agent)
    with transaction.atomic():
        _freeze_lock(shared=False)
        existing = MemoryFreeze.objects.filter(scope_key=scope_key).first()
        if existing is not None:
            return existing
        freeze = MemoryFreeze.objects.create(scope_key=scope_key, tenant_id=tenant_id, agent=agent,
                                             reason=reason[:2000], frozen_by=Actor.of(actor).label[:150])
        audit_record(actor=actor, action="memory.frozen", tenant=tenant_id, object_type="memory.freeze",
                     object_id=scope_key, payload={"scope": scope_key, "agent": agent, "reason": reason})
    return freeze


def memory_unfreeze(*, actor: Any, tenant: Any = None, agent: str | None = None, reason: str = "") -> bool:
    """Lift the freeze of exactly this scope. Returns whether there was one."""
    tenant_id = _tenant_id(tenant) if tenant is not None else None
    scope_key = MemoryFreeze.key_for(tenant_id, (agent or "").strip())
    with transaction.atomic():
        _freeze_lock(shared=False)
        deleted, _ = MemoryFreeze.objects.filter(scope_key=scope_key).delete()
        if deleted:
            audit_record(actor=actor, action="memory.unfrozen", tenant=tenant_id, object_type="memory.freeze",
                         object_id=scope_key, payload={"scope": scope_key, "reason": reason})
    return bool(deleted)


# --- conversation -------------------------------------------------------------------------

Summariser = Callable[[list[dict[str, Any]], int], str]


def estimate_tokens(text: str) -> int:
    """A deliberately simple estimate (about four characters a token, plus framing)."""
    return len(text) // 4 + 4


def deterministic_summariser(messages: list[dict[str, Any]], max_tokens: int) -> str:
    """A summary that needs no model: the earlier summary and each turn's opening, clipped
    to fit ``max_tokens``. Same input, same output."""
    budget = max(200, max_tokens * 4)
    turns = [m for m in messages if m.get("role") != ConversationMessage.Role.SUMMARY]
    earlier = [m["content"] for m in messages if m.get("role") == ConversationMessage.Role.SUMMARY]
    header = f"Summary of {len(turns)} earlier turn(s)."
    lines = [header]
    if earlier:
        lines.append("Before that: " + " ".join(earlier)[: budget // 3])
    per_turn = max(40, (budget - sum(len(line) for line in lines)) // max(1, len(turns)) - 12)
    for message in turns:
        text = " ".join(str(message.get("content", "")).split())
        if len(text) > per_turn:
            text = text[: per_turn - 3].rstrip() + "..."
        lines.append(f"- {message.get('role')}: {text}")
    summary = "\n".join(lines)
    return summary if len(summary) <= budget else summary[: budget - 3] + "..."


def model_summariser(
    client: ModelClient, *, on_response: Callable[[ModelResponse], None] | None = None,
) -> Summariser:
    """A summariser that asks the summarising route (``step_kind="summary"``) and falls back
    to the deterministic one when the model fails. ``on_response`` lets the runtime count
    the call's tokens and cost against the run's budgets."""

    def summarise(messages: list[dict[str, Any]], max_tokens: int) -> str:
        words = max(50, max_tokens * 3 // 4)
        instructions = (
            f"Summarise the earlier conversation given as data below in at most {words} "
            "words, for your own later use. Keep customer codes, amounts, dates, decisions and open "
            'questions. Answer only with {"type": "final", "message": "<the summary>"}.'
        )
        request = ModelRequest(messages=build_messages(instructions=instructions, history=messages),
                               step_kind=STEP_SUMMARY)
        try:
            response = client.complete(request)
        except ModelError as exc:
            logger.warning("summarising route failed, using the deterministic summary: %s", exc)
            return deterministic_summariser(messages, max_tokens)
        if on_response is not None:
            on_response(response)
        text = response.action.get("message") if response.action.get("type") == "final" else None
        if not text:
            return deterministic_summariser(messages, max_tokens)
        return str(text)[: max_tokens * 4]

    return summarise


def _budget(token_budget: int | None) -> int:
    return int(token_budget or getattr(settings, "MEMORY_CONVERSATION_TOKEN_BUDGET", 3000))


def conversation_append(
    *,
    tenant: Any,
    conversation_id: str,
    role: str,
    content: Any,
    name: str = "",
    summariser: Summariser | None = None,
    token_budget: int | None = None,
) -> ConversationMessage:
    """Append one turn; when the active turns pass the token budget, older turns are folded
    into a summary (``conversation_summarise``)."""
    if role not in ConversationMessage.Role.values or role == ConversationMessage.Role.SUMMARY:
        raise InvalidInput(f"role must be one of user, assistant, tool; got {role!r}.")
    if not conversation_id:
        raise InvalidInput("A conversation id is required (the run's public id or a session id).")
    text = content if isinstance(content, str) else json.dumps(content, default=str, ensure_ascii=False)
    tenant_id = _tenant_id(tenant)
    with transaction.atomic():
        last = ConversationMessage.objects.filter(
            tenant_id=tenant_id, conversation_id=conversation_id).aggregate(seq=Max("seq"))["seq"]
        message = ConversationMessage.objects.create(
            tenant_id=tenant_id, conversation_id=str(conversation_id), seq=(last or 0) + 1, role=role,
            name=name[:64], content=text, tokens=estimate_tokens(text))
    if conversation_tokens(tenant=tenant_id, conversation_id=conversation_id) > _budget(token_budget):
        conversation_summarise(tenant=tenant_id, conversation_id=conversation_id, summariser=summariser,
                               token_budget=token_budget)
    return message


def conversation_summarise(
    *,
    tenant: Any,
    conversation_id: str,
    summariser: Summariser | None = None,
    token_budget: int | None = None,
    keep_last: int | None = None,
) -> ConversationMessage | None:
    """Fold all but the most recent turns (and any earlier summary) into one summary turn.
    The summariser (maybe a model call) runs outside the transaction; if another process
    summarised meanwhile, this one gives way. Returns the summary turn, or None."""
    tenant_id = _tenant_id(tenant)
    budget = _budget(token_budget)
    keep_last = keep_last or int(getattr(settings, "MEMORY_CONVERSATION_KEEP_LAST", 4))
    active = list(ConversationMessage.objects.filter(
        tenant_id=tenant_id, conversation_id=conversation_id, summarised_at__isnull=True).order_by("seq"))
    turns = [m for m in active if m.role != ConversationMessage.Role.SUMMARY]
    keep = turns[-keep_last:] if keep_last > 0 else []
    while len(keep) > 1 and sum(m.tokens for m in keep) > budget * 3 // 4:
        keep = keep[1:]
    kept = {m.pk for m in keep}
    fold = [m for m in active if m.pk not in kept]
    if not fold or (len(fold) == 1 and fold[0].role == ConversationMessage.Role.SUMMARY):
        return None
    max_tokens = max(50, budget // 4)
    text = (summariser or deterministic_summariser)(
        [{"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})} for m in fold],
        max_tokens)
    text = str(text)[: max_tokens * 4]
    now = timezone.now()
    with transaction.atomic():
        folded = ConversationMessage.objects.filter(
            pk__in=[m.pk for m in fold], summarised_at__isnull=True).update(summarised_at=now)
        if folded != len(fold):
            transaction.set_rollback(True)  # someone else summarised these turns first
            return None
        last = ConversationMessage.objects.filter(
            tenant_id=tenant_id, conversation_id=conversation_id).aggregate(seq=Max("seq"))["seq"]
        return ConversationMessage.objects.create(
            tenant_id=tenant_id, conversation_id=conversation_id, seq=(last or 0) + 1,
            role=ConversationMessage.Role.SUMMARY, content=text, tokens=estimate_tokens(text))


# --- scratchpad ---------------------------------------------------------------------------


def scratchpad_set(*, tenant: Any, run_id: str, key: str, value: Any) -> None:
    """Set one key of a run's scratchpad (bounded: key count and value size)."""
    if not key or len(key) > 100:
        raise InvalidInput("A scratchpad key is 1 to 100 characters.")
    size = _json_size(value, "scratchpad value")
    if size > MAX_SCRATCHPAD_VALUE_BYTES:
        raise InvalidInput(
            f"A scratchpad value may be {MAX_SCRATCHPAD_VALUE_BYTES} bytes; this one is {size}.")
    tenant_id = _tenant_id(tenant)
    with transaction.atomic():
        entries = ScratchpadEntry.objects.filter(tenant_id=tenant_id, run_id=str(run_id))
        if not entries.filter(key=key).exists() and entries.count() >= MAX_SCRATCHPAD_KEYS:
            raise InvalidInput(f"A run's scratchpad holds at most {MAX_SCRATCHPAD_KEYS} keys.")
        ScratchpadEntry.objects.update_or_create(tenant_id=tenant_id, run_id=str(run_id), key=key,
                                                 defaults={"value": value})


def scratchpad_delete(*, tenant: Any, run_id: str, key: str) -> bool:
    deleted, _ = ScratchpadEntry.objects.filter(tenant_id=_tenant_id(tenant), run_id=str(run_id),
                                                key=key).delete()
    return bool(deleted)


def scratchpad_clear(*, tenant: Any, run_id: str) -> int:
    deleted, _ = ScratchpadEntry.objects.filter(tenant_id=_tenant_id(tenant), run_id=str(run_id)).delete()
    return deleted
