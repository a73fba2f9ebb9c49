"""The one write path of the audit log: ``audit_record``.

It runs inside the caller's transaction, so the event commits or rolls back with the
change it describes. Writers are serialised on the chain head for the rest of their
transaction (PostgreSQL: a transaction-scoped advisory lock; SQLite: the database write
lock every IMMEDIATE transaction already holds), which is what keeps the sequence
gap-free and gives every event exactly one predecessor. Call it as the last write of a
transaction so the lock is held briefly.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.utils import timezone

from audit.actions import ACTIONS
from audit.chain import GENESIS_HASH, event_hash, normalise_payload
from audit.models import ActorType, AuditEvent
from audit.redaction import redact
from console.errors import InvalidInput

MAX_PAYLOAD_BYTES = getattr(settings, "AUDIT_MAX_PAYLOAD_BYTES", 64 * 1024)
# An arbitrary constant naming the chain lock among PostgreSQL advisory locks.
CHAIN_LOCK_KEY = 0x41554449  # "AUDI"


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


def _lock_chain() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK_KEY])


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
    tenant_id = getattr(tenant, "pk", tenant) or None

    # No savepoint: inside the caller's transaction an audit failure must fail the whole
    # change (an event exists iff its change committed), and a savepoint costs two round
    # trips while the chain lock is held.
    with transaction.atomic(savepoint=False):
        _lock_chain()
        last = AuditEvent.objects.order_by("-seq").values_list("seq", "hash").first()
        seq, prev_hash = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
        fields = {
            "seq": seq,
            "event_id": uuid.uuid4(),
            "occurred_at": timezone.now(),
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
        digest = event_hash(fields, prev_hash)
        return AuditEvent.objects.create(prev_hash=prev_hash, hash=digest, **fields)


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
