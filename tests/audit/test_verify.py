"""Verification finds the first altered or missing event; CLI, API and recording."""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from audit.services import chain_verify
from audit.verify import verify_chain
from tests.audit.conftest import set_payload_text, superuser_bypass, write_events

pytestmark = pytest.mark.django_db


def test_intact_chain_verifies_across_batches():
    write_events(12)
    result = verify_chain(batch_size=5)
    assert (result.ok, result.checked, result.first_bad_seq) == (True, 12, None)
    assert result.head_seq == 12
    assert result.head_hash == AuditEvent.objects.get(seq=12).hash


def test_empty_log_verifies():
    result = verify_chain()
    assert (result.ok, result.checked, result.first_bad_seq) == (True, 0, None)


def test_altering_one_payload_byte_is_found_at_that_event():
    write_events(10)
    original = json.dumps(AuditEvent.objects.get(seq=6).payload)
    assert '"amount": 40' in original
    with superuser_bypass() as cursor:
        set_payload_text(cursor, 6, original.replace('"amount": 40', '"amount": 41'))
    result = verify_chain(batch_size=4)
    assert (result.ok, result.first_bad_seq, result.checked) == (False, 6, 5)
    assert "altered" in result.reason


def test_altering_another_field_is_found():
    write_events(5)
    with superuser_bypass() as cursor:
        cursor.execute("UPDATE audit_auditevent SET actor_label = 'lead' WHERE seq = 3")
    assert verify_chain().first_bad_seq == 3


def test_deleting_a_row_is_found_as_the_missing_seq():
    write_events(10)
    with superuser_bypass() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE seq = 4")
    result = verify_chain(batch_size=3)
    assert (result.ok, result.first_bad_seq, result.checked) == (False, 4, 3)
    assert "missing" in result.reason


def test_deleting_the_first_row_is_found():
    write_events(3)
    with superuser_bypass() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE seq = 1")
    assert verify_chain().first_bad_seq == 1


def test_rehashing_an_altered_row_breaks_the_link_to_the_next():
    from audit.chain import event_hash
    from audit.verify import iter_chain_rows

    write_events(6)
    row = next(r for r in iter_chain_rows() if r["seq"] == 3)
    row["payload"] = {**row["payload"], "amount": 4000}
    forged = event_hash(row, row["prev_hash"])
    with superuser_bypass() as cursor:
        set_payload_text(cursor, 3, json.dumps(row["payload"]))
        cursor.execute("UPDATE audit_auditevent SET hash = %s WHERE seq = 3", [forged])
    result = verify_chain()
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "predecessor" in result.reason


def test_reordered_events_are_found():
    write_events(5)
    a, b = AuditEvent.objects.get(seq=2), AuditEvent.objects.get(seq=3)
    with superuser_bypass() as cursor:
        # swap the two rows' sequence numbers (through a free number)
        cursor.execute("UPDATE audit_auditevent SET seq = 1000 WHERE seq = 2")
        cursor.execute("UPDATE audit_auditevent SET seq = 2 WHERE seq = 3")
        cursor.execute("UPDATE audit_auditevent SET seq = 3 WHERE seq = 1000")
    assert AuditEvent.objects.get(seq=2).event_id == b.event_id
    assert AuditEvent.objects.get(seq=3).event_id == a.event_id
    assert verify_chain().first_bad_seq == 2


def test_verify_from_a_trusted_point():
    write_events(8)
    head5 = AuditEvent.objects.get(seq=5).hash
    result = verify_chain(after_seq=5, after_hash=head5)
    assert (result.ok, result.checked, result.head_seq) == (True, 3, 8)
    assert verify_chain(after_seq=5, after_hash="f" * 64).first_bad_seq == 5


def test_command_exits_zero_and_records_when_intact(capsys):
    write_events(3)
    call_command("audit_verify")
    assert "OK: 3 events verified" in capsys.readouterr().out
    event = AuditEvent.objects.get(action="audit.verified")
    assert event.payload["ok"] is True and event.payload["checked"] == 3
    assert event.actor_type == "system" and event.actor_label.startswith("cli:audit_verify")


def test_command_exits_one_with_the_first_bad_seq():
    write_events(5)
    with superuser_bypass() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE seq = 2")
    with pytest.raises(CommandError, match="BROKEN at seq 2") as info:
        call_command("audit_verify", "--no-record")
    assert info.value.returncode == 1
    assert not AuditEvent.objects.filter(action="audit.verified").exists()


@pytest.mark.django_db(transaction=True)
def test_command_exit_status_in_a_real_process():
    """`python manage.py audit_verify` exits 0, then 1 naming the seq after tampering."""
    import subprocess
    import sys

    from tests.conftest import ROOT, worker_env

    write_events(3)
    command = [sys.executable, "manage.py", "audit_verify", "--no-record"]
    ok = subprocess.run(command, cwd=ROOT, env=worker_env(), capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    with superuser_bypass() as cursor:
        cursor.execute("UPDATE audit_auditevent SET action = 'run.failed' WHERE seq = 2")
    bad = subprocess.run(command, cwd=ROOT, env=worker_env(), capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1
    assert "BROKEN at seq 2" in bad.stderr


def test_failed_verification_is_recorded_with_who_and_result(auditor):
    write_events(4)
    with superuser_bypass() as cursor:
        set_payload_text(cursor, 2, json.dumps({"step": 1, "amount": 1}))
    result = chain_verify(actor=auditor)
    assert result.first_bad_seq == 2
    event = AuditEvent.objects.get(action="audit.verified")
    assert event.actor_label == "auditor"
    assert event.payload["ok"] is False and event.payload["first_bad_seq"] == 2


def test_fast_path_hashes_exactly_like_the_reference(acme):
    """The PostgreSQL fast path must feed sha256 the same bytes as audit.chain.canonical."""
    from django.db import connection

    from audit.chain import canonical
    from audit.verify import _FAST_SQL, fast_canonical, iter_chain_rows

    if connection.vendor != "postgresql":
        pytest.skip("the fast path is PostgreSQL only")
    write_events(3, tenant=acme, payload={"z": 1, "a": ["é", "\"q\"", None], "n": 0.5})
    write_events(1, payload={"emoji": "✓ 日本", "nested": {"b": True, "a": {}}})
    with connection.cursor() as cursor:
        cursor.execute(_FAST_SQL, [0, 100])
        fast_rows = cursor.fetchall()
    for fast, ref in zip(fast_rows, iter_chain_rows(), strict=True):
        assert fast_canonical(fast, fast[13]) == canonical(ref, ref["prev_hash"])


def test_a_gap_longer_than_a_batch_is_reported_with_the_next_present_event():
    write_events(12)
    with superuser_bypass() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE seq BETWEEN 4 AND 9")
    result = verify_chain(batch_size=3)
    assert (result.ok, result.checked, result.first_bad_seq) == (False, 3, 4)
    assert "next present is #10" in result.reason
    assert verify_chain(batch_size=3, up_to_seq=3).ok


def test_batches_cover_the_chain_exactly_once_whatever_the_batch_size():
    write_events(11)
    for size in (1, 2, 5, 11, 50):
        result = verify_chain(batch_size=size)
        assert (result.ok, result.checked, result.head_seq) == (True, 11, 11), size
        bounded = verify_chain(batch_size=size, after_seq=2, up_to_seq=9)
        assert (bounded.ok, bounded.checked, bounded.head_seq) == (True, 7, 9), size
