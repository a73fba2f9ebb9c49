"""The one write path of the audit log: ``audit_record``.

It runs inside the caller's transaction, so the event commits or rolls back with the
change it describes. Events are chained (gap-free ``seq``, exactly one predecessor, SHA-256
over the canonical text and the previous hash) under one lock:

- PostgreSQL: ``audit_record`` stages the event; a deferred constraint trigger chains it
  when the transaction COMMITs, under a transaction-scoped advisory lock held through the
  commit (migration 0003). The returned event has no ``seq``/``hash`` yet.
- SQLite (and any other backend): the event is chained at once, in Python, under the
  database write lock every IMMEDIATE transaction already holds.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.utils import timezone

from audit.actions import ACTIONS
from audit.chain import GENESIS_HASH, canonical_parts, event_hash
from audit.models import ActorType, AuditEvent
from audit.redaction import redact
from console.errors import InvalidInput
from console.models import Tenant

MAX_PAYLOAD_BYTES = getattr(settings, "AUDIT_MAX_PAYLOAD_BYTES", 64 * 1024)
# An arbitrary constant naming the chain lock among PostgreSQL advisory locks (taken by
# the chaining trigger of migration 0003, which repeats the value).
CHAIN_LOCK_KEY = 0x41554449  # "AUDI"


def _tenant_pk(value: Any) -> Any:
    # a bad value raises ValidationError, as the ORM insert did
    return None if value is None else Tenant._meta.pk.to_python(value)


class AuditError(InvalidInput):
    code = "audit_rejected"


@dataclass(frozen=True)
class Actor:
    """Who did something: a user, a service account, an agent run or the system."""

    type: str
    id: str = ""
    label: str = ""

    @classmethod
    def of(cls, who: Any) -> Actor:
        if isinstance(who, Actor):
            return who
        if who is None:
            return cls(ActorType.SYSTEM, "", "system")
        if getattr(who, "is_authenticated", False) and hasattr(who, "username"):
            is_service = hasattr(who, "service_account")
            kind = ActorType.SERVICE if is_service else ActorType.USER
            return cls(kind, str(who.pk), who.username)
        if getattr(who, "is_anonymous", False):
            return cls(ActorType.ANONYMOUS, "", "anonymous")
        raise TypeError(f"cannot make an audit actor of {who!r}")

    @classmethod
    def system(cls, name: str = "system") -> Actor:
        return cls(ActorType.SYSTEM, "", name)

    @classmethod
    def run(cls, run_public_id: str, label: str = "") -> Actor:
        return cls(ActorType.RUN, str(run_public_id), label or f"run:{run_public_id}")


# PostgreSQL: the event is STAGED in the caller's transaction and chained at its COMMIT,
# inside the server, by the deferred constraint trigger of migration 0003 (lock, head,
# seq, occurred_at, sha256 over the canonical text prepared here, insert). So no lock is
# taken and nothing waits here: the chain lock's critical section is the trigger and the
# commit, with no client round trip in it. With console/db_postgresql the staging row is
# sent with the COMMIT itself (``stage_rows_sql``). agents.hotsql embeds the same rows in a
# step's statement (``stage_params``, or ``chain_events_json`` for a statement that is its
# own transaction).
STAGE_COLUMNS = ("event_id", "actor_type", "actor_id", "actor_label", "action", "tenant_id",
                 "object_type", "object_id", "trace_id", "policy_version", "payload",
                 "part_a", "part_b", "part_c", "part_d")
STAGE_HOLDERS = ", ".join("%s::jsonb" if c == "payload" else "%s" for c in STAGE_COLUMNS)


def stage_params(fields: dict[str, Any]) -> list[Any]:
    """The parameters of one ``audit_stage`` row for ``fields`` (prepared by ``audit_fields``)."""
    params = [fields[name] for name in STAGE_COLUMNS[:11]]
    params[10] = json.dumps(fields["payload"])
    params += canonical_parts(fields)
    return params


def chain_events_json(events: list[dict[str, Any]]) -> str:
    """Events prepared by ``audit_fields`` as the JSON array ``audit_chain_append_many``
    takes (PostgreSQL): the same values as ``stage_params``, in ``STAGE_COLUMNS`` order. For
    a statement that is its own transaction (agents.hotsql.step_write outside a
    transaction): it appends its events itself at its end, under the chain lock, instead of
    staging them for the COMMIT trigger -- the same chaining routine, without the staging row
    and the deferred trigger."""
    rows = []
    for fields in events:
        row = [fields[name] for name in STAGE_COLUMNS[:11]]  # the payload as the document
        row[0] = str(row[0])
        row[5] = None if row[5] is None else str(row[5])
        row += canonical_parts(fields)
        rows.append(row)
    return json.dumps(rows, ensure_ascii=False)


def stage_rows_sql(rows: list[list[Any]]) -> tuple[str, list[Any]]:
    """One INSERT of several staging rows (``stage_params`` each), in order, with
    client-side placeholders (it travels in a multi-statement query with the COMMIT)."""
    values = ", ".join(f"({STAGE_HOLDERS})" for _ in rows)
    params = [value for row in rows for value in row]
    return f"INSERT INTO audit_stage ({', '.join(STAGE_COLUMNS)}) VALUES {values}", params  # noqa: S608


def stage_sweep() -> int:
    """Delete the staging rows of committed transactions (all of them chained already: the
    chaining trigger runs inside COMMIT). Rows of open transactions are invisible here and
    stay. Returns how many were deleted. PostgreSQL only; a no-op elsewhere."""
    if connection.vendor != "postgresql":
        return 0
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_stage")
        return cursor.rowcount


def _receipt(fields: dict[str, Any]) -> AuditEvent:
    """What ``audit_record`` returns on PostgreSQL: the event as staged. ``seq``,
    ``occurred_at``, ``prev_hash`` and ``hash`` are assigned when the transaction commits;
    read the stored event back by ``event_id`` after that."""
    # positional arguments in the model's field order: several times cheaper in Model.__init__
    return AuditEvent(None, fields["event_id"], None, fields["actor_type"], fields["actor_id"],
                      fields["actor_label"], fields["action"], fields["tenant_id"],
                      fields["object_type"], fields["object_id"], fields["trace_id"],
                      fields["policy_version"], fields["payload"], "", "")


def _stage_postgresql(fields: dict[str, Any]) -> AuditEvent:
    from console.db_postgresql import execute

    db = connections[DEFAULT_DB_ALIAS]
    barrier = getattr(db, "supports_audit_barrier", False)
    params = stage_params(fields)
    if barrier and db.audit_defer(params):
        return _receipt(fields)  # staged with the COMMIT (console/db_postgresql)
    # staged now (outside a transaction, deferral off, or the stock backend). With the
    # commit barrier, RETURNING sets ``synchronous_commit = off`` for the transaction: its
    # COMMIT releases the chain lock without waiting for the flush, the barrier waits after.
    sql, _ = stage_rows_sql([params])
    if barrier:
        sql += " RETURNING set_config('synchronous_commit', 'off', true)"
    with execute(sql, params):
        pass
    if barrier:
        db.audit_barrier_pending = True
    return _receipt(fields)


def _append_python(fields: dict[str, Any]) -> AuditEvent:
    """SQLite (and any other backend): the write lock is already held since BEGIN IMMEDIATE."""
    last = AuditEvent.objects.order_by("-seq").values_list("seq", "hash").first()
    seq, prev_hash = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
    fields = {**fields, "seq": seq, "occurred_at": timezone.now()}
    return AuditEvent.objects.create(prev_hash=prev_hash, hash=event_hash(fields, prev_hash),
                                     **fields)


def audit_record(*, actor: Any, action: str, **details: Any) -> AuditEvent:
    """Append one event to the chain, inside the caller's transaction.

    ``details``: ``tenant``, ``object_type``, ``object_id``, ``trace_id``,
    ``policy_version``, ``payload``, ``sensitive_fields`` (see ``audit_fields``). Redacts
    secrets and PII before hashing; refuses an unknown action or a payload over
    ``MAX_PAYLOAD_BYTES`` with an ``AuditError`` that says which. Returns the event; on
    PostgreSQL it is chained when the transaction commits, so the returned object has
    ``seq``/``occurred_at``/``hash`` unset and the stored row is read back by ``event_id``.
    """
    return audit_write(audit_fields(actor=actor, action=action, **details))


def audit_fields(
    *,
    actor: Any,
    action: str,
    tenant: Any = None,
    object_type: str = "",
    object_id: Any = "",
    trace_id: str = "",
    policy_version: str | int | None = "",
    payload: dict | None = None,
    sensitive_fields: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Check, redact and prepare one event's fields (everything but the chained ones).

    Only for writers of this module and for ``agents.hotsql``, which stages a step's
    events inside the step's own statement; everything else calls ``audit_record``.
    """
    if action not in ACTIONS:
        raise AuditError(
            f"Unknown audit action {action!r}. Add it to audit/actions.py with a description "
            "before writing it."
        )
    # the payload exactly as it will read back from the database (JSON round trip)
    text = json.dumps(redact(payload or {}, sensitive_fields=sensitive_fields),
                      cls=DjangoJSONEncoder)
    clean = json.loads(text)
    size = len(text.encode())
    if size > MAX_PAYLOAD_BYTES:
        raise AuditError(
            f"Audit payload for {action!r} is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}. "
            "Record a summary and a reference (an id or a hash) instead of the full data."
        )
    who = Actor.of(actor)
    # As the database will return it (a UUID), so the hash made now is the one verified.
    tenant_id = _tenant_pk(getattr(tenant, "pk", tenant) or None)
    return {
        "event_id": uuid.uuid4(),
        "actor_type": str(who.type),
        "actor_id": str(who.id)[:64],
        "actor_label": str(who.label)[:150],
        "action": action,
        "tenant_id": tenant_id,
        "object_type": object_type,
        "object_id": str(object_id)[:64] if object_id not in (None, "") else "",
        "trace_id": trace_id or "",
        "policy_version": str(policy_version) if policy_version not in (None, "") else "",
        "payload": clean,
    }


def audit_write(fields: dict[str, Any]) -> AuditEvent:
    """Write one event prepared by ``audit_fields`` (``audit_record`` in two halves, for a
    caller that prepares its events before its transaction, like the step loop)."""
    # No savepoint: inside the caller's transaction an audit failure must fail the whole
    # change (an event exists iff its change committed).
    with transaction.atomic(savepoint=False):
        if connection.vendor == "postgresql":
            return _stage_postgresql(fields)
        return _append_python(fields)


def chain_verify(*, actor: Any = None, record: bool = True, batch_size: int | None = None):
    """Verify the whole chain; when ``record``, append an ``audit.verified`` event.

    A person verifying (console, API, the CLI by default) is itself an auditable act: the
    event records who verified, what was checked and the result -- including a failure,
    which is then on the record even if nobody reads the screen. It is appended after the
    walk, so it is never part of the range it reports on. Internal callers (checkpoints,
    benchmarks) pass ``record=False``.
    """
    from audit.verify import BATCH_SIZE, verify_chain

    result = verify_chain(batch_size=batch_size or BATCH_SIZE)
    if record:
        with transaction.atomic():
            audit_record(
                actor=actor, action="audit.verified", object_type="audit_chain",
                object_id=str(result.head_seq or 0),
                payload={"ok": result.ok, "checked": result.checked,
                         "first_bad_seq": result.first_bad_seq, "reason": result.reason,
                         "head_seq": result.head_seq, "head_hash": result.head_hash},
            )
    return result
