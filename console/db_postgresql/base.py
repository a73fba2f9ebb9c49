"""Django's PostgreSQL backend plus the audit log's commit path.

The audit chain is appended when a transaction commits, under one advisory lock held until
the commit completes (audit migration 0003: a deferred trigger on the staging table
``audit_stage``). Two things happen here.

1. Events recorded in a transaction are kept in ``audit_pending`` (their staging rows'
   parameters) and sent WITH the COMMIT, in one round trip::

       [BEGIN;] SET LOCAL synchronous_commit = off; INSERT INTO audit_stage ... VALUES
       (...), (...); COMMIT; SELECT pg_logical_emit_message(true, 'acp.audit', '')

   The rows are still part of the caller's transaction (an event exists iff it commits);
   a rolled-back savepoint drops the events recorded inside it; a failing INSERT or
   COMMIT fails the commit (Django's atomic then rolls back). ``BEGIN`` is added when the
   transaction executed nothing else, so an audit-only transaction costs one round trip.
   ``audit_defer_staging = False`` stages at record time instead (the test harness does
   that where it makes the trigger IMMEDIATE: those transactions never commit).

2. The commit barrier. ``synchronous_commit = off`` lets the COMMIT release the chain
   lock as soon as its commit record is in the WAL buffers; the last statement is a tiny
   transaction that writes WAL and commits synchronously, so it returns only after the WAL
   is flushed up to its own commit record -- which lies after ours (WAL is sequential).
   The flushes of concurrent writers overlap (group commit) instead of queueing behind the
   lock, and the caller still gets control back only once its change and its events are
   durable: "no side effect twice" holds as with a synchronous commit.

What differs from a synchronous commit: for the ~0.1 ms until the flush, OTHER sessions
can already see the committed change. If the server crashes in that window, the change
and its events are both lost (and with them every later transaction, which is behind them
in the WAL), so the log stays consistent; only a reader that acted outside the database
on that sub-millisecond-old state without writing anything durable itself could have
acted on something that is then gone. docs/audit.md, "Durability".

Selected by settings when DATABASE_URL is PostgreSQL (ENGINE ``console.db_postgresql``);
with Django's stock backend the same code stages at record time and commits synchronously
(correct, slower).
"""

from __future__ import annotations

import contextlib

import psycopg
from django.db.backends.postgresql import base
from django.db.backends.utils import debug_transaction

# a transactional logical message: takes an xid and writes WAL, so its COMMIT is a
# synchronous one that flushes (an xid alone writes no WAL and would not flush)
FLUSH_BARRIER = "SELECT pg_logical_emit_message(true, 'acp.audit', '')"
BARRIER_SQL = f"COMMIT; {FLUSH_BARRIER}"
_IDLE = psycopg.pq.TransactionStatus.IDLE


class DatabaseWrapper(base.DatabaseWrapper):
    supports_audit_barrier = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.audit_barrier_pending = False  # staged at record time: barrier at COMMIT
        self.audit_defer_staging = True
        self.audit_pending: list[list] = []
        self._audit_marks: dict[str, int] = {}

    def audit_defer(self, params: list) -> bool:
        """Keep one event's staging parameters for the COMMIT (True), or False when the
        caller must stage it now (not in a transaction, or deferral turned off)."""
        if not (self.audit_defer_staging and self.in_atomic_block):
            return False
        self.audit_pending.append(params)
        return True

    def _audit_reset(self) -> None:
        self.audit_barrier_pending = False
        self.audit_pending = []
        self._audit_marks.clear()

    def _savepoint(self, sid):
        self._audit_marks[sid] = len(self.audit_pending)
        return super()._savepoint(sid)

    def _savepoint_rollback(self, sid):
        super()._savepoint_rollback(sid)
        mark = self._audit_marks.pop(sid, None)
        if mark is not None:
            del self.audit_pending[mark:]

    def _savepoint_commit(self, sid):
        self._audit_marks.pop(sid, None)
        return super()._savepoint_commit(sid)

    def _commit(self):
        if self.connection is None or not (self.audit_pending or self.audit_barrier_pending):
            return super()._commit()
        from audit.services import stage_rows_sql

        pending = self.audit_pending
        self._audit_reset()
        sql, params = BARRIER_SQL, []
        if pending:
            insert, params = stage_rows_sql(pending)
            sql = f"SET LOCAL synchronous_commit = off; {insert}; {BARRIER_SQL}"
        raw = self.connection
        begin = raw.info.transaction_status == _IDLE  # nothing executed in it yet
        with debug_transaction(self, sql), self.wrap_database_errors:
            if not begin:
                # a client-side cursor: the simple query protocol carries every statement
                with psycopg.ClientCursor(raw) as cursor:
                    cursor.execute(sql, params)
                return None
            # psycopg would send its own BEGIN first (a round trip): send ours with the rest
            raw.autocommit = True
            try:
                with psycopg.ClientCursor(raw) as cursor:
                    cursor.execute(f"BEGIN; {sql}", params)
            except BaseException:
                # best effort: on a broken connection these fail too, and the error the
                # caller must see is the one above (Django's atomic then closes it)
                if raw.info.transaction_status != _IDLE:
                    with contextlib.suppress(Exception):
                        raw.execute("ROLLBACK")
                with contextlib.suppress(Exception):
                    raw.autocommit = False
                raise
            raw.autocommit = False
        return None

    def _rollback(self):
        self._audit_reset()
        return super()._rollback()

    def _close(self):
        self._audit_reset()
        return super()._close()
