"""The hash chain: canonical serialisation and hashing of one event."""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import datetime
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

GENESIS_HASH = "0" * 64
HASHED_FIELDS = (
    "seq", "event_id", "occurred_at", "actor_type", "actor_id", "actor_label", "action",
    "tenant_id", "object_type", "object_id", "trace_id", "policy_version", "payload",
)


def normalise_payload(payload: Any) -> Any:
    """The payload exactly as it will read back from the database (JSON round trip)."""
    return json.loads(json.dumps(payload, cls=DjangoJSONEncoder))


def _timestamp(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    return value.isoformat(timespec="microseconds")


_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def _document(fields: dict[str, Any], prev_hash: str) -> dict[str, Any]:
    doc = {name: fields[name] for name in HASHED_FIELDS}
    doc["event_id"] = str(doc["event_id"])
    doc["tenant_id"] = str(doc["tenant_id"]) if doc["tenant_id"] else None
    doc["occurred_at"] = _timestamp(doc["occurred_at"])
    doc["prev_hash"] = prev_hash
    return doc


def canonical(fields: dict[str, Any], prev_hash: str) -> bytes:
    """The bytes that are hashed: the fields and ``prev_hash`` as sorted, compact JSON."""
    return _dumps(_document(fields, prev_hash)).encode()


# The three values only known under the chain lock, in the order the sorted keys put them.
LOCKED_FIELDS = ("occurred_at", "prev_hash", "seq")


# Placeholders for the locked values in ``canonical_parts``' fast path: plain ASCII that
# JSON leaves untouched, random per process so no stored text can forge one.
_MARKS = tuple(f"acp{name}{secrets.token_hex(16)}" for name in LOCKED_FIELDS)


def canonical_parts(fields: dict[str, Any]) -> tuple[str, str, str, str]:
    """``canonical`` split around the values assigned under the chain lock (see
    ``_canonical_parts``): the document is encoded once with placeholders in their places
    and split there; if a placeholder does not occur exactly once (it cannot, short of a
    payload that guessed this process's random marks) the member-by-member way is used."""
    ts, prev, seq = _MARKS
    text = _dumps(_document({**fields, "occurred_at": ts, "seq": seq}, prev))
    quoted_seq = f'"{seq}"'
    if text.count(ts) == 1 and text.count(prev) == 1 and text.count(quoted_seq) == 1:
        a, rest = text.split(ts)
        b, rest = rest.split(prev)
        c, d = rest.split(quoted_seq)
        return a, b, c, d
    return _canonical_parts(fields)


def _canonical_parts(fields: dict[str, Any]) -> tuple[str, str, str, str]:
    """``canonical`` split around the values assigned under the chain lock.

    For any ``occurred_at`` text ``ts``, ``prev_hash`` and ``seq``::

        canonical(fields | {occurred_at, seq}, prev_hash)
            == (a + ts + b + prev_hash + c + str(seq) + d).encode()

    so the PostgreSQL append can hash in SQL (``sha256(a || ts || b || prev || c || seq
    || d)``) with everything else serialised by this module, before the lock. It is the
    same encoder emitting the same sorted key/value pairs (a JSON object is the join of
    its members), and ``ts``/``prev_hash`` never need escaping (digits, hex, ``T:.+-``).
    ``fields`` needs every hashed field but ``occurred_at`` and ``seq``.
    """
    doc = _document({**fields, "occurred_at": "", "seq": 0}, "")
    pieces: list[str] = []
    current = "{"
    for index, key in enumerate(sorted(doc)):
        current += ("," if index else "") + _dumps(key) + ":"
        if key in LOCKED_FIELDS:
            quoted = key != "seq"
            pieces.append(current + ('"' if quoted else ""))
            current = '"' if quoted else ""
        else:
            current += _dumps(doc[key])
    pieces.append(current + "}")
    a, b, c, d = pieces
    return a, b, c, d


def event_hash(fields: dict[str, Any], prev_hash: str) -> str:
    return hashlib.sha256(canonical(fields, prev_hash)).hexdigest()
