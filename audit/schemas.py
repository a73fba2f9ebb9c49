"""API schemas of the audit app (explicit field lists)."""

from __future__ import annotations

from typing import Any

from ninja import Schema


class AuditEventOut(Schema):
    seq: int
    event_id: str
    occurred_at: str
    actor_type: str
    actor_id: str
    actor_label: str
    action: str
    tenant: str | None
    tenant_id: str | None
    object_type: str
    object_id: str
    trace_id: str
    policy_version: str
    payload: Any
    prev_hash: str
    hash: str


class AuditEventPage(Schema):
    events: list[AuditEventOut]
    next_cursor: str | None
    limit: int


class VerifyOut(Schema):
    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str
    head_seq: int | None
