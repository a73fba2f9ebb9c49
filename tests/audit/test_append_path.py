"""The append path: SQL-side hashing and what it must keep exactly.

On PostgreSQL the chaining trigger hashes in the server (sha256 over canonical bytes
prepared by ``audit.chain.canonical_parts``); on SQLite ``audit_record`` hashes in Python.
Either way the stored events must verify with the pure-Python reference
(``audit.chain.event_hash``) and hold exactly what ``audit_record`` was given.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid

import pytest
from django.db import connection, transaction

from audit.chain import GENESIS_HASH, canonical, canonical_parts, event_hash
from audit.models import AuditEvent
from audit.selectors import event_search, parse_filters
from audit.services import Actor, audit_record
from audit.verify import iter_chain_rows, verify_chain
from tests.audit.conftest import write_events

pytestmark = pytest.mark.django_db

AWKWARD_PAYLOADS = [
    {},
    {"z": 1, "a": ["é", '"q"', None, "\\back\\slash"], "n": 0.5, "big": 10**18, "neg": -3},
    {"emoji": "✓ 日本 \U0001f600", "nested": {"b": True, "a": {}, "c": [[], [{}]]}},
    {"controls": "tab\tnew\nline\rcr\x01\x1f", "sep": "\u2028\u2029", "del": "\x7f"},
    {"float": 1.25e-7, "zero": 0.0, "minus": -0.5, "long": "x" * 5000},
    {"keys": {"B": 1, "a": 2, "é": 3, "_": 4, "10": 5, "9": 6}},
]


def _assert_reference_verifies_every_row() -> int:
    """Walk the stored rows with the pure-Python reference only (no fast path)."""
    prev, count = GENESIS_HASH, 0
    for expected, row in zip(itertools.count(1), iter_chain_rows(), strict=False):
        assert row["seq"] == expected
        assert row["prev_hash"] == prev
        assert event_hash(row, row["prev_hash"]) == row["hash"], row["seq"]
        prev, count = row["hash"], count + 1
    return count


def test_events_written_by_the_append_path_verify_with_the_pure_python_reference(acme):
    for index, payload in enumerate(AWKWARD_PAYLOADS):
        with transaction.atomic():
            audit_record(actor=Actor.system("tests"), action="run.step",
                         tenant=acme if index % 2 else None, object_type="run",
                         object_id=f"run-é-{index}", trace_id=f"trace-{index}",
                         policy_version=index, payload=payload)
    # a tenant given as a differently spelled id string hashes as the database returns it
    with transaction.atomic():
        audit_record(actor=None, action="run.step", tenant=str(acme.pk).upper())
    assert _assert_reference_verifies_every_row() == len(AWKWARD_PAYLOADS) + 1
    assert verify_chain().ok


def test_returned_event_is_the_event_that_is_stored(acme):
    with transaction.atomic():
        first = audit_record(actor=Actor.system("tests"), action="run.step", tenant=acme,
                             payload={"a": 1})
        second = audit_record(actor=Actor.run("run-1"), action="run.step", payload={"b": 2})
    stored = [AuditEvent.objects.get(event_id=e.event_id) for e in (first, second)]
    for event, row in zip((first, second), stored, strict=True):
        for name in ("event_id", "actor_type", "actor_id", "actor_label", "action",
                     "tenant_id", "object_type", "object_id", "trace_id", "policy_version",
                     "payload"):
            assert getattr(event, name) == getattr(row, name), name
        assert row.occurred_at.utcoffset() == dt.timedelta(0)
    assert [row.seq for row in stored] == [1, 2]
    assert stored[1].prev_hash == stored[0].hash and stored[0].prev_hash == GENESIS_HASH
    if connection.vendor == "postgresql":
        # chained at COMMIT: the receipt carries no chain fields
        assert first.seq is None and first.hash == ""


def test_canonical_parts_rebuild_the_canonical_bytes_exactly():
    base = {"event_id": uuid.uuid4(), "actor_type": "user", "actor_id": "7",
            "actor_label": 'a "quoted" é', "action": "run.step", "object_type": "run",
            "object_id": "", "trace_id": "t", "policy_version": ""}
    moment = dt.datetime(2026, 3, 1, 9, 30, 0, 5, tzinfo=dt.UTC)
    for payload, tenant, seq in itertools.product(AWKWARD_PAYLOADS, (None, uuid.uuid4()),
                                                  (1, 99, 10**12)):
        fields = {**base, "payload": payload, "tenant_id": tenant}
        a, b, c, d = canonical_parts(fields)
        prev = "ab" * 32
        full = {**fields, "occurred_at": moment, "seq": seq}
        text = a + moment.isoformat(timespec="microseconds") + b + prev + c + str(seq) + d
        assert text.encode() == canonical(full, prev)


def test_event_rolled_back_leaves_no_gap_on_the_append_path():
    write_events(2)
    with pytest.raises(RuntimeError), transaction.atomic():
        audit_record(actor=None, action="run.step", payload={"doomed": True})
        raise RuntimeError("the change fails after its event was appended")
    write_events(1)
    assert list(AuditEvent.objects.values_list("seq", flat=True)) == [1, 2, 3]
    assert not AuditEvent.objects.filter(payload__doomed=True).exists()
    assert verify_chain().ok


def test_time_window_search_matches_the_plain_occurred_at_filter():
    events = write_events(8)
    since, until = events[2].occurred_at, events[6].occurred_at
    page = event_search(filters=parse_filters({"since": since.isoformat(),
                                               "until": until.isoformat()}))
    expected = list(AuditEvent.objects.filter(occurred_at__gte=since, occurred_at__lt=until)
                    .order_by("-seq").values_list("seq", flat=True))
    assert [e.seq for e in page.events] == expected == [6, 5, 4, 3]
    # windows beyond either end, and the extreme dates, are still answered
    assert event_search(filters=parse_filters({"since": "9999-12-31"})).events == []
    assert [e.seq for e in event_search(filters=parse_filters({"until": "9999-12-31"})).events] \
        == list(range(8, 0, -1))
    assert len(event_search(filters=parse_filters({"since": "0001-01-01"})).events) == 8
    assert event_search(filters=parse_filters({"until": "0001-01-02"})).events == []


def test_occurred_at_follows_seq():
    events = write_events(20)
    times = [e.occurred_at for e in events]
    assert times == sorted(times)


def test_canonical_parts_fast_path_matches_the_member_by_member_split():
    from audit.chain import _MARKS, _canonical_parts

    base = {"event_id": uuid.uuid4(), "actor_type": "run", "actor_id": "r",
            "actor_label": "x", "action": "run.step", "object_type": "", "object_id": "",
            "trace_id": "", "policy_version": "3", "tenant_id": None}
    for payload in [*AWKWARD_PAYLOADS, {"forged": _MARKS[0]}, {_MARKS[2]: _MARKS[1]}]:
        fields = {**base, "payload": payload}
        assert canonical_parts(fields) == _canonical_parts(fields)
