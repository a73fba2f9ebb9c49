"""PostgreSQL: events are staged in the caller's transaction and chained at its COMMIT.

These tests commit for real (``transaction=True``), so the deferred constraint trigger of
migration 0003 runs exactly as in production (the ``db`` tests elsewhere make it
IMMEDIATE, see tests/conftest.py).
"""

from __future__ import annotations

import itertools

import pytest
from django.db import IntegrityError, connection, transaction

from audit.chain import GENESIS_HASH
from audit.models import AuditEvent
from audit.services import Actor, audit_record, stage_sweep
from audit.verify import verify_chain
from tests.audit.conftest import on_postgres

pytestmark = [on_postgres, pytest.mark.django_db(transaction=True)]


def _record(label: str, **kwargs):
    return audit_record(actor=Actor.system("tests"), action="run.step", object_type="run",
                        object_id=label, payload={"label": label}, **kwargs)


def _staged() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM audit_stage")
        return cursor.fetchone()[0]


@pytest.fixture(autouse=True)
def _empty_stage():
    stage_sweep()  # rows left by earlier tests of the session (the table is not flushed)


def _labels() -> list[str]:
    return list(AuditEvent.objects.order_by("seq").values_list("object_id", flat=True))


def test_event_is_chained_when_its_transaction_commits_not_before():
    with transaction.atomic():
        receipt = _record("one")
        # not chained yet: no seq, the chain does not hold it, and its staging row travels
        # with the COMMIT (console/db_postgresql)
        assert receipt.seq is None
        assert not AuditEvent.objects.filter(event_id=receipt.event_id).exists()
        assert _staged() == 0 and len(connection.audit_pending) == 1
    stored = AuditEvent.objects.get(event_id=receipt.event_id)
    assert (stored.seq, stored.prev_hash) == (1, GENESIS_HASH)
    assert stored.payload == {"label": "one"}
    # the staged row is garbage now (chained inside the commit); the sweep removes it
    assert _staged() == 1
    assert stage_sweep() == 1 and _staged() == 0
    assert AuditEvent.objects.filter(event_id=receipt.event_id).exists()
    assert verify_chain().ok


def test_events_of_one_transaction_are_chained_in_the_order_recorded():
    with transaction.atomic():
        for label in ("a", "b", "c"):
            _record(label)
    _record("d")  # autocommit: its own transaction
    assert _labels() == ["a", "b", "c", "d"]
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True)) == [1, 2, 3, 4]
    times = list(AuditEvent.objects.order_by("seq").values_list("occurred_at", flat=True))
    assert times == sorted(times)  # occurred_at is assigned under the lock, in seq order
    assert verify_chain().ok


def test_rollback_discards_the_staged_event_and_leaves_no_gap():
    _record("kept-1")
    with pytest.raises(RuntimeError), transaction.atomic():
        _record("doomed")
        raise RuntimeError("the change fails after its event was recorded")
    _record("kept-2")
    assert _labels() == ["kept-1", "kept-2"]
    assert _staged() == 2  # the rolled-back one was never committed
    assert verify_chain().ok


def test_a_rolled_back_savepoint_takes_its_event_with_it():
    with transaction.atomic():
        _record("outer-1")
        with pytest.raises(RuntimeError), transaction.atomic():
            _record("inner")
            raise RuntimeError("inner block fails")
        _record("outer-2")
    assert _labels() == ["outer-1", "outer-2"]
    assert verify_chain().ok


def test_a_failing_commit_writes_neither_the_change_nor_its_event(acme):
    """The event commits with its change or not at all, also when the failure is only
    detected at COMMIT (a deferred foreign key here)."""
    from console.models import Tenant

    before = Tenant.objects.count()
    with pytest.raises(IntegrityError), transaction.atomic():
        Tenant.objects.create(slug="ephemeral", name="Ephemeral")
        _record("with-bad-tenant", tenant="00000000-0000-0000-0000-000000000001")
    assert Tenant.objects.count() == before
    assert not AuditEvent.objects.filter(object_id="with-bad-tenant").exists()
    assert _staged() == 0
    _record("after")
    assert verify_chain().ok and _labels()[-1] == "after"


def test_the_chaining_trigger_cannot_be_skipped_by_deferring_or_ignoring():
    """SET CONSTRAINTS only moves the trigger between statement end and commit; the
    pgtrigger escape hatch does not apply to it."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL pgtrigger.ignore = '{audit_stage:audit_chain_at_commit}'")
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")
        _record("still-chained")
    assert _labels() == ["still-chained"]


def test_the_sweep_leaves_rows_of_open_transactions_alone():
    """A concurrent sweep sees only committed (already chained) rows."""
    import threading

    from django.db import connections

    staged, release, swept = threading.Event(), threading.Event(), []

    def writer():
        from django.db import connection as own  # this thread's connection

        own.audit_defer_staging = False  # stage now: the row sits uncommitted in the table
        try:
            with transaction.atomic():
                _record("in-flight")
                staged.set()
                release.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=writer)
    thread.start()
    assert staged.wait(10)
    swept.append(stage_sweep())
    release.set()
    thread.join(10)
    assert swept == [0]
    assert _labels() == ["in-flight"]  # chained at its commit, after the sweep ran
    assert verify_chain().ok


def _frontend_messages(block) -> list[str]:
    """Run ``block`` in a transaction; return the messages libpq sent (its trace)."""
    import tempfile

    from psycopg import pq

    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    with tempfile.TemporaryFile("w+") as trace:
        pgconn.trace(trace.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            with transaction.atomic():
                block()
        finally:
            pgconn.untrace()
        trace.seek(0)
        return [line for line in trace.read().splitlines() if line.startswith("F\t")]


def test_an_audit_only_transaction_commits_in_one_round_trip_and_leaves_a_clean_connection(acme):
    """Nothing else executed: BEGIN, the staging INSERT, COMMIT and the flush barrier go
    in one message; afterwards the connection is back in Django's hands as before."""
    sent = _frontend_messages(lambda: _record("alone"))
    # libpq's own trace of what went to the server: one simple-protocol query
    assert [m.split("\t")[2] for m in sent] == ["Query"], sent
    assert '"BEGIN; SET LOCAL synchronous_commit = off; INSERT INTO audit_stage' in sent[0]
    assert "COMMIT; SELECT pg_logical_emit_message" in sent[0]
    assert connection.connection.autocommit  # Django's autocommit mode, restored
    assert _labels() == ["alone"]
    # a failure at COMMIT on that path (a deferred foreign key) rolls everything back and
    # leaves the connection usable
    with pytest.raises(IntegrityError), transaction.atomic():
        _record("bad-tenant", tenant="00000000-0000-0000-0000-000000000002")
    assert connection.connection.info.transaction_status == 0  # idle, not aborted
    _record("after")
    assert _labels() == ["alone", "after"]
    assert verify_chain().ok


def test_events_recorded_after_other_statements_travel_with_the_commit(acme):
    from console.models import Tenant

    with transaction.atomic():
        Tenant.objects.filter(pk=acme.pk).update(name=acme.name)  # the transaction began
        _record("x")
        with transaction.atomic():
            _record("y")  # a released savepoint keeps its event
        _record("z")
    assert _labels() == ["x", "y", "z"]
    assert verify_chain().ok


def test_append_many_chains_its_events_in_array_order_after_the_head():
    """``audit_chain_append_many`` (the runtime's autocommitted step statements, migration
    0005): one lock, the events appended in the array's order after the current head, with
    the same hashes as the COMMIT trigger's (the chain verifies); an empty array writes
    nothing."""
    from audit.services import audit_fields, chain_events_json

    _record("before")
    events = [
        audit_fields(actor=Actor.system("tests"), action="run.step", object_type="run",
                     object_id=label, payload={"label": label, "n": n}, tenant=None)
        for n, label in enumerate(["first", "second", "third"])
    ]
    with connection.cursor() as cursor:
        cursor.execute("SELECT audit_chain_append_many(%s::jsonb)", [chain_events_json(events)])
        assert cursor.fetchone()[0] == 3
        cursor.execute("SELECT audit_chain_append_many('[]'::jsonb)")
        assert cursor.fetchone()[0] == 0
    _record("after")
    assert _labels()[-5:] == ["before", "first", "second", "third", "after"]
    rows = list(AuditEvent.objects.order_by("seq"))[-5:]
    assert [r.seq for r in rows] == list(range(rows[0].seq, rows[0].seq + 5))
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
    assert rows[2].payload == {"label": "second", "n": 1}
    assert verify_chain().ok


def test_a_commit_on_a_dead_connection_raises_its_own_error_not_the_rollbacks(acme):
    """The audit-only transaction's one-message BEGIN ... COMMIT fails because the server
    ended the session: the caller sees that failure, not the best-effort clean-up's
    (ROLLBACK: "the connection is closed"; restoring autocommit: "the connection is
    lost"), nothing is written, and the next transaction works on a new connection."""
    import psycopg
    from django.db import OperationalError

    with pytest.raises(OperationalError) as failure, transaction.atomic():
        _record("lost")
        pid = connection.connection.info.backend_pid
        with psycopg.connect(**connection.get_connection_params(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    assert "terminating connection due to administrator command" in str(failure.value)
    connection.close()
    _record("after")
    assert "lost" not in _labels() and _labels()[-1] == "after"
    assert verify_chain().ok
