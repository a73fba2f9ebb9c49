"""Helpers for the audit tests: write events, and tamper as a database superuser would."""

from __future__ import annotations

import contextlib

import pytest
from django.conf import settings
from django.db import connection, transaction

from audit.services import Actor, audit_record

IS_POSTGRES = "postgresql" in settings.DATABASES["default"]["ENGINE"]
on_postgres = pytest.mark.skipif(not IS_POSTGRES, reason="PostgreSQL only")


def write_events(n: int, **kwargs) -> list:
    """n events, one transaction each; returns the stored rows (read back by event_id:
    on PostgreSQL ``audit_record`` returns the event before it is chained)."""
    from audit.models import AuditEvent

    events = []
    for index in range(n):
        with transaction.atomic():
            events.append(audit_record(
                actor=kwargs.get("actor", Actor.system("tests")),
                action=kwargs.get("action", "run.step"),
                tenant=kwargs.get("tenant"),
                object_type=kwargs.get("object_type", "run"),
                object_id=kwargs.get("object_id", f"run-{index}"),
                trace_id=kwargs.get("trace_id", f"trace-{index}"),
                payload=kwargs.get("payload", {"step": index, "amount": 40}),
            ))
    return [AuditEvent.objects.get(event_id=e.event_id) for e in events]


@contextlib.contextmanager
def superuser_bypass():
    """Switch the append-only triggers off the way only a superuser/owner can."""
    from audit.migrations import _sqlite_triggers

    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL session_replication_role = replica")
            try:
                yield cursor
            finally:
                # inside a test's transaction SET LOCAL would outlive this block (a
                # released savepoint keeps it), and replica mode skips the chaining trigger
                cursor.execute("SET LOCAL session_replication_role = DEFAULT")
        else:
            for name in _sqlite_triggers.NAMES:
                cursor.execute(f"DROP TRIGGER {name}")
            try:
                yield cursor
            finally:
                for sql in _sqlite_triggers.CREATE:
                    cursor.execute(sql)


def set_payload_text(cursor, seq: int, text: str) -> None:
    cast = "::jsonb" if connection.vendor == "postgresql" else ""
    cursor.execute(f"UPDATE audit_auditevent SET payload = %s{cast} WHERE seq = %s", [text, seq])
