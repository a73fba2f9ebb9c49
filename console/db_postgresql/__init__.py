"""The PostgreSQL backend (``base.py``) and one helper for the hot paths."""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=512)
def _numbered(sql: str) -> str:
    """``%s`` placeholders as ``$1, $2, ...`` (the SQL given here has no other ``%``):
    psycopg's own conversion is cached only for statements under 50 parameters and 4 kB,
    so a long hot statement would be re-parsed on every call."""
    parts = sql.split("%s")
    return "".join(part + (f"${n}" if n < len(parts) else "") for n, part in enumerate(parts, 1))


def execute(sql: str, params: list[Any]):
    """Execute on the default PostgreSQL connection with server-side binding: the values
    travel apart from the text (no quoting in Python), and psycopg prepares a statement it
    has seen ``prepare_threshold`` times (settings: DATABASE_PREPARE_THRESHOLD, default 5;
    0 turns preparing off, e.g. behind a transaction-mode pooler), so the server skips
    parsing and planning it (measured: ~0.5 ms of server CPU per governed tool call).
    Django's cursors use client-side binding and are never prepared. Used by the step loop's statements
    (agents.hotsql) and the audit staging INSERT. Returns the (closed-on-exit) cursor."""
    import psycopg
    from django.db import DEFAULT_DB_ALIAS, connections

    conn = connections[DEFAULT_DB_ALIAS]
    conn.ensure_connection()
    conn.validate_thread_sharing()
    with conn.wrap_database_errors:
        cursor = psycopg.RawCursor(conn.connection)
        cursor.execute(_numbered(sql), params)
    return cursor
