"""Parallel verification (PostgreSQL) reports exactly what the single walk reports.

The ranges are verified by forked processes with their own connections, so the events must
be committed: these tests use real transactions.
"""

from __future__ import annotations

import json
import os

import pytest

from audit.models import AuditEvent
from audit.verify import verify_chain
from tests.audit.conftest import on_postgres, set_payload_text, superuser_bypass, write_events

pytestmark = [on_postgres, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

TOTAL = 30  # with 3 workers: ranges 1-10, 11-20, 21-30


def both(**kwargs) -> tuple[tuple, tuple]:
    single = verify_chain(workers=1, **kwargs)
    parallel = verify_chain(workers=3, **kwargs)
    shape = lambda r: (r.ok, r.checked, r.first_bad_seq, r.head_seq, r.head_hash)  # noqa: E731
    return shape(single), shape(parallel)


_PIDS_FILE = "ACP_TEST_VERIFY_PIDS"
_ORIGINAL: dict = {}  # set before the fork: the children inherit it


def _range_in_recorded_process(job):
    """``audit.verify._verify_range`` that also notes which process ran it (a module-level
    function: the pool pickles it by name, the forked children find it)."""
    with open(os.environ[_PIDS_FILE], "a") as out:
        out.write(f"{os.getpid()}\n")
    return _ORIGINAL["range"](job)


def test_ranges_are_verified_in_child_processes(monkeypatch, tmp_path):
    """The parallel walk really forks: each of the 3 ranges runs in a pool process, none
    in this one, and together they report what the single walk reports."""
    from audit import verify

    write_events(TOTAL)
    pids = tmp_path / "pids"
    monkeypatch.setenv(_PIDS_FILE, str(pids))
    _ORIGINAL["range"] = verify._verify_range
    monkeypatch.setattr(verify, "_verify_range", _range_in_recorded_process)
    result = verify_chain(workers=3)
    seen = pids.read_text().split()
    assert len(seen) == 3 and str(os.getpid()) not in seen
    assert (result.ok, result.checked) == (True, TOTAL)
    assert result.as_dict() == verify_chain(workers=1).as_dict()


def test_intact_chain_same_result():
    write_events(TOTAL)
    single, parallel = both()
    assert single == parallel
    assert single[:3] == (True, TOTAL, None)


@pytest.mark.parametrize("seq", [1, 10, 11, 15, 20, 21, 30])
def test_deleted_event_found_at_the_same_seq(seq):
    write_events(TOTAL)
    with superuser_bypass() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE seq = %s", [seq])
    single, parallel = both()
    if seq == TOTAL:  # a truncated tail is invisible to the chain (checkpoints catch it)
        assert single == parallel and single[:3] == (True, TOTAL - 1, None)
    else:
        assert single == parallel and single[:3] == (False, seq - 1, seq)


def test_missing_end_of_a_middle_range_reads_like_the_single_walk():
    write_events(TOTAL)
    with superuser_bypass() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE seq IN (19, 20)")
    single = verify_chain(workers=1)
    parallel = verify_chain(workers=3)
    assert single.as_dict() == parallel.as_dict()
    assert parallel.first_bad_seq == 19 and "next present is #21" in parallel.reason


@pytest.mark.parametrize("seq", [2, 11, 25])
def test_altered_event_found_at_the_same_seq(seq):
    write_events(TOTAL)
    original = json.dumps(AuditEvent.objects.get(seq=seq).payload)
    with superuser_bypass() as cursor:
        set_payload_text(cursor, seq, original.replace('"amount": 40', '"amount": 41'))
    single, parallel = both()
    assert single == parallel and single[:3] == (False, seq - 1, seq)


def test_rehashed_event_breaks_the_link_across_a_range_boundary():
    write_events(TOTAL)
    with superuser_bypass() as cursor:  # event 10 (end of range 1) re-hashed after an edit
        cursor.execute("UPDATE audit_auditevent SET hash = %s WHERE seq = 10", ["f" * 64])
    single, parallel = both()
    assert single == parallel
    # its own content no longer matches its (forged) hash: found at 10 by either walk
    assert single[2] == 10


def test_from_a_trusted_point_and_up_to():
    write_events(TOTAL)
    head7 = AuditEvent.objects.get(seq=7).hash
    single, parallel = both(after_seq=7, after_hash=head7, up_to_seq=26)
    assert single == parallel and single[:3] == (True, 19, None) and single[3] == 26
    single, parallel = both(after_seq=7, after_hash="0" * 64)
    assert single == parallel and single[2] == 7


def test_auto_mode_stays_single_inside_a_transaction():
    from django.db import transaction

    write_events(5)
    with transaction.atomic():
        # would be invisible to other connections if it were uncommitted; must not fork
        result = verify_chain(workers=4)
    assert (result.ok, result.checked) == (True, 5)
