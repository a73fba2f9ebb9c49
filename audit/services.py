"""The one write path of the audit log: ``audit_record``.

It runs inside the caller's transaction, so the event commits or rolls back with the
change it describes. Writers are serialised on the chain head for the rest of their
transaction (PostgreSQL: a transaction-scoped advisory lock; SQLite: the database write
lock every IMMEDIATE transaction already holds), which is what keeps the sequence
gap-free and gives every event exactly one predecessor. Call it as the last write of a
transaction so the lock is held briefly. On PostgreSQL the lock, head read, hashing and
insert are one query (see ``_append_postgresql``); elsewhere they run in Python.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
import weakref
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.utils import timezone

from audit.actions import ACTIONS
from audit.chain import GENESIS_HASH, canonical_parts, event_hash, normalise_payload
from audit.models import ActorType, AuditEvent
from audit.redaction import redact
from console.errors import InvalidInput
from console.models import Tenant

MAX_PAYLOAD_BYTES = getattr(settings, "AUDIT_MAX_PAYLOAD_BYTES", 64 * 1024)
# An arbitrary constant naming the chain lock among PostgreSQL advisory locks.
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


# PostgreSQL append: ONE network round trip under the lock's shadow. The lock and the
# append are two statements of one simple-protocol query; in READ COMMITTED each statement
# takes its own snapshot when it starts, so the head is read after the lock is granted and
# sees the previous holder's committed event. (A single statement that locked in a
# sub-select would read the head from a snapshot taken before it waited.) The append reads
# the head, assigns seq and occurred_at and hashes with the server's sha256() over the
# canonical bytes that audit.chain serialised before the lock (``canonical_parts``), so no
# client round trip and no Python runs while the lock is held, until the caller's COMMIT.
# The append is a server-side prepared statement (once per connection), so it is not
# parsed or planned under the lock either. Measured alternatives: docs/audit.md.
_APPEND_BODY = """
INSERT INTO audit_auditevent (seq, event_id, occurred_at, actor_type, actor_id, actor_label,
    action, tenant_id, object_type, object_id, trace_id, policy_version, payload, prev_hash,
    hash)
SELECT head.seq + 1, $1::uuid, clock.ts, $2::text, $3::text, $4::text, $5::text, $6::uuid,
    $7::text, $8::text, $9::text, $10::text, $11::text::jsonb, head.hash,
    encode(sha256(convert_to($12::text || clock.txt || $13::text || head.hash || $14::text
        || (head.seq + 1)::text || $15::text, 'UTF8')), 'hex')
FROM (SELECT ts, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"') AS txt
      FROM clock_timestamp() AS ts) AS clock,
     (SELECT coalesce(max(seq), 0) AS seq,
             coalesce((array_agg(hash))[1], 'GENESIS') AS hash
      FROM (SELECT seq, hash FROM audit_auditevent ORDER BY seq DESC LIMIT 1) AS last) AS head
RETURNING seq, occurred_at, prev_hash, hash
""".replace("GENESIS", GENESIS_HASH)
_APPEND_NAME = "audit_append_" + hashlib.sha256(_APPEND_BODY.encode()).hexdigest()[:12]
_APPEND_ARGS = ("event_id", "actor_type", "actor_id", "actor_label", "action", "tenant_id",
                "object_type", "object_id", "trace_id", "policy_version", "payload")
_APPEND_SQL = (f"SELECT pg_advisory_xact_lock({CHAIN_LOCK_KEY}); "
               f"EXECUTE {_APPEND_NAME}({', '.join(['%s'] * (len(_APPEND_ARGS) + 4))})")
# The same without a prepared statement, for a transaction-mode connection pooler (which
# may run the next transaction on a server session that never saw the PREPARE):
# settings.AUDIT_PREPARED_APPEND = False. Costs the parse and plan under the lock.
_APPEND_SQL_UNPREPARED = (f"SELECT pg_advisory_xact_lock({CHAIN_LOCK_KEY}); "
                          + re.sub(r"\$\d+", "%s", _APPEND_BODY))  # $1..$15 appear in order
# Opt-in only (settings.AUDIT_ASYNC_COMMIT, default False): ``SET LOCAL synchronous_commit
# = off`` for every audited transaction. The chain lock is then released without waiting
# for the WAL flush, but a crash can lose the last committed transactions -- each change
# together with its event, so the log stays consistent -- including the record that an
# external tool call was executed, and a resumed run would then execute it again ("no side
# effect twice" is broken for that call). See docs/audit.md before turning it on.
_ASYNC_COMMIT_SQL = "SET LOCAL synchronous_commit = off; "
# raw psycopg connections on which the append is already prepared
_prepared: weakref.WeakSet = weakref.WeakSet()


def _append_postgresql(fields: dict[str, Any]) -> AuditEvent:
    a, b, c, d = canonical_parts(fields)
    args = [fields[name] for name in _APPEND_ARGS]
    args[_APPEND_ARGS.index("payload")] = json.dumps(fields["payload"])
    args += [a, b, c, d]
    prepared = getattr(settings, "AUDIT_PREPARED_APPEND", True)
    sql = _APPEND_SQL if prepared else _APPEND_SQL_UNPREPARED
    if getattr(settings, "AUDIT_ASYNC_COMMIT", False):
        sql = _ASYNC_COMMIT_SQL + sql
    with connection.cursor() as cursor:
        raw = connection.connection
        if prepared and raw not in _prepared:
            cursor.execute(f"PREPARE {_APPEND_NAME} AS {_APPEND_BODY}")
            _prepared.add(raw)
        cursor.execute(sql, args)
        while cursor.description is None or len(cursor.description) != 4:
            if not cursor.nextset():  # past SET and the lock's result to the append's
                raise RuntimeError("the audit append returned no row")
        seq, occurred_at, prev_hash, digest = cursor.fetchone()
    event = AuditEvent(seq=seq, occurred_at=occurred_at.astimezone(UTC), prev_hash=prev_hash,
                       hash=digest, **fields)
    event._state.adding = False
    event._state.db = connection.alias
    return event


def _append_python(fields: dict[str, Any]) -> AuditEvent:
    """SQLite (and any other backend): the write lock is already held since BEGIN IMMEDIATE."""
    last = AuditEvent.objects.order_by("-seq").values_list("seq", "hash").first()
    seq, prev_hash = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
    fields = {**fields, "seq": seq, "occurred_at": timezone.now()}
    return AuditEvent.objects.create(prev_hash=prev_hash, hash=event_hash(fields, prev_hash),
                                     **fields)


def audit_record(
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
) -> AuditEvent:
    """Append one event to the chain, inside the caller's transaction.

    Redacts secrets and PII before hashing; refuses an unknown action or a payload over
    ``MAX_PAYLOAD_BYTES`` with an ``AuditError`` that says which.
    """
    if action not in ACTIONS:
        raise AuditError(
            f"Unknown audit action {action!r}. Add it to audit/actions.py with a description "
            "before writing it."
        )
    clean = normalise_payload(redact(payload or {}, sensitive_fields=sensitive_fields))
    size = len(json.dumps(clean, cls=DjangoJSONEncoder).encode())
    if size > MAX_PAYLOAD_BYTES:
        raise AuditError(
            f"Audit payload for {action!r} is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}. "
            "Record a summary and a reference (an id or a hash) instead of the full data."
        )
    who = Actor.of(actor)
    # As the database will return it (a UUID), so the hash made now is the one verified.
    tenant_id = _tenant_pk(getattr(tenant, "pk", tenant) or None)

    fields = {
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
    # No savepoint: inside the caller's transaction an audit failure must fail the whole
    # change (an event exists iff its change committed), and a savepoint costs two round
    # trips while the chain lock is held.
    with transaction.atomic(savepoint=False):
        if connection.vendor == "postgresql":
            return _append_postgresql(fields)
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
