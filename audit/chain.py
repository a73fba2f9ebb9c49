"""The hash chain: canonical serialisation and hashing of one event."""

from __future__ import annotations

import hashlib
import json
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


def canonical(fields: dict[str, Any], prev_hash: str) -> bytes:
    doc = {name: fields[name] for name in HASHED_FIELDS}
    doc["event_id"] = str(doc["event_id"])
    doc["tenant_id"] = str(doc["tenant_id"]) if doc["tenant_id"] else None
    doc["occurred_at"] = _timestamp(doc["occurred_at"])
    doc["prev_hash"] = prev_hash
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_hash(fields: dict[str, Any], prev_hash: str) -> str:
    return hashlib.sha256(canonical(fields, prev_hash)).hexdigest()
