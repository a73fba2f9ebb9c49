"""Django's PostgreSQL backend plus the audit log's commit barrier.

The audit chain is appended when a transaction commits, under one advisory lock held until
the commit completes (audit migration 0003). With a synchronous commit that includes the
WAL flush, so every audited commit in the database would queue behind every other one's
fsync. Instead, a transaction that staged audit events (``audit_record`` sets
``audit_barrier_pending`` and ``SET LOCAL synchronous_commit = off``) commits with:

    COMMIT; SELECT pg_logical_emit_message(true, 'acp.audit', '')

in ONE round trip. The COMMIT releases the chain lock as soon as its commit record is in
the WAL buffers; the second statement is a tiny transaction that writes WAL and commits
synchronously, so it returns only after the WAL is flushed up to its own commit record --
which lies after ours (WAL is sequential). The flushes of concurrent writers then overlap
(group commit) instead of queueing behind the lock, and the caller still gets control back
only once its change and its event are durable: "no side effect twice" (a tool runs only
after the record of its invocation is on disk) holds as with a synchronous commit.

What differs from a synchronous commit: for the ~0.1 ms until the flush, OTHER sessions
can already see the committed change. If the server crashes in that window, the change
and its event are both lost (and with them every later transaction, which is behind them
in the WAL), so the log stays consistent; only a reader that acted outside the database
on that sub-millisecond-old state without writing anything durable itself could have
acted on something that is then gone. docs/audit.md, "Durability".

Selected by settings when DATABASE_URL is PostgreSQL (ENGINE ``console.db_postgresql``);
with Django's stock backend the same code commits synchronously (correct, slower).
"""

from __future__ import annotations

import psycopg
from django.db.backends.postgresql import base
from django.db.backends.utils import debug_transaction

# a transactional logical message: takes an xid and writes WAL, so its COMMIT is a
# synchronous one that flushes (an xid alone writes no WAL and would not flush)
BARRIER_SQL = "COMMIT; SELECT pg_logical_emit_message(true, 'acp.audit', '')"


class DatabaseWrapper(base.DatabaseWrapper):
    supports_audit_barrier = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.audit_barrier_pending = False

    def _commit(self):
        if self.connection is not None and self.audit_barrier_pending:
            self.audit_barrier_pending = False
            with debug_transaction(self, BARRIER_SQL), self.wrap_database_errors:
                # a client-side cursor: the simple query protocol carries both statements
                with psycopg.ClientCursor(self.connection) as cursor:
                    cursor.execute(BARRIER_SQL)
            return None
        return super()._commit()

    def _rollback(self):
        self.audit_barrier_pending = False
        return super()._rollback()

    def _close(self):
        self.audit_barrier_pending = False
        return super()._close()
