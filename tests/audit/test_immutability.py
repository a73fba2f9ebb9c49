"""The database refuses to change or remove audit rows; the write function's rules."""

from __future__ import annotations

import itertools

import pytest
from django.db import DatabaseError, connection, transaction

from audit.models import AuditEvent
from audit.redaction import REDACTED
from audit.services import MAX_PAYLOAD_BYTES, Actor, AuditError, audit_record
from tests.audit.conftest import on_postgres, write_events

pytestmark = pytest.mark.django_db


def _raw(sql: str, params=()):
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)


def test_raw_update_is_refused():
    write_events(2)
    with pytest.raises(DatabaseError, match=r"(?i)cannot update|append-only"):
        _raw("UPDATE audit_auditevent SET action = 'run.failed' WHERE seq = 1")
    assert AuditEvent.objects.get(seq=1).action == "run.step"


def test_raw_delete_of_one_row_is_refused():
    write_events(2)
    with pytest.raises(DatabaseError, match=r"(?i)cannot delete|append-only"):
        _raw("DELETE FROM audit_auditevent WHERE seq = 2")
    assert AuditEvent.objects.count() == 2


def test_raw_delete_of_everything_is_refused():
    # On SQLite this is its TRUNCATE: a table with a DELETE trigger never takes the shortcut.
    write_events(2)
    with pytest.raises(DatabaseError):
        _raw("DELETE FROM audit_auditevent")
    assert AuditEvent.objects.count() == 2


@on_postgres
@pytest.mark.django_db(transaction=True)
def test_truncate_is_refused_on_postgres():
    # committed rows: inside one transaction PostgreSQL refuses TRUNCATE earlier, for
    # the pending deferred FK checks, which would prove nothing about the trigger
    write_events(2)
    with pytest.raises(DatabaseError, match="TRUNCATE refused"):
        _raw("TRUNCATE audit_auditevent")
    with pytest.raises(DatabaseError, match="TRUNCATE refused"):
        _raw("TRUNCATE audit_auditevent CASCADE")
    assert AuditEvent.objects.count() == 2


def test_orm_update_and_delete_are_refused():
    write_events(1)
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(seq=1).update(actor_label="someone else")
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get(seq=1).actor_label == "tests"


def test_event_rolls_back_with_its_transaction(acme):
    write_events(1)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        audit_record(actor=Actor.system(), action="credit.applied", tenant=acme,
                     payload={"amount": 40})
        raise Boom
    assert list(AuditEvent.objects.values_list("seq", flat=True)) == [1]
    # and the next event takes the seq the rolled-back one would have had: no gap
    later = write_events(1)[0]
    assert later.seq == 2
    assert later.prev_hash == AuditEvent.objects.get(seq=1).hash


def test_unknown_action_is_refused_clearly():
    with pytest.raises(AuditError, match=r"Unknown audit action 'credit\.stolen'.*actions\.py"):
        audit_record(actor=None, action="credit.stolen")
    assert not AuditEvent.objects.exists()


def test_oversized_payload_is_refused_clearly():
    with pytest.raises(AuditError, match=rf"limit is {MAX_PAYLOAD_BYTES}.*summary"):
        audit_record(actor=None, action="run.step", payload={"blob": "x" * MAX_PAYLOAD_BYTES})
    assert not AuditEvent.objects.exists()
    assert AuditError.status == 422


def test_secrets_and_pii_are_redacted_before_hashing():
    event = audit_record(
        actor=None, action="tool.executed",
        payload={
            "password": "hunter2", "api_key": "k-123", "Authorization": "Bearer abc.def.ghi",
            "nested": {"client_secret": "s3cr3t", "tokens": 1234},
            "note": "card 4111 1111 1111 1111 and header Bearer eyJhbGciOiJIUzI1NiJ9.x.y",
            "not_a_card": "order 1234567890123",
            # a run id whose all-digit groups pass the Luhn check: an identifier, not a card
            "run_id": "66ad5039-5018-4181-89c3-c4aeb7c4bd71",
            "paid_with": "(4111-1111-1111-1111)",
            "email": "jane@example.com",
            "comment": "contact jane@example.com",
            "contact": "bob@example.com",
        },
        sensitive_fields=("contact",),
    )
    stored = AuditEvent.objects.get(event_id=event.event_id).payload
    assert stored["password"] == REDACTED
    assert stored["api_key"] == REDACTED
    assert stored["Authorization"] == REDACTED
    assert stored["nested"] == {"client_secret": REDACTED, "tokens": 1234}
    assert "4111" not in stored["note"].replace("****1111", "") and "[CARD ****1111]" in stored["note"]
    assert "eyJhbGci" not in stored["note"]
    assert stored["not_a_card"] == "order 1234567890123"  # fails Luhn: left alone
    assert stored["run_id"] == "66ad5039-5018-4181-89c3-c4aeb7c4bd71"
    assert stored["paid_with"] == "([CARD ****1111])"
    assert stored["email"] == "[EMAIL]"          # marked sensitive by default
    assert stored["contact"] == "[EMAIL]"        # marked by the caller
    assert stored["comment"] == "contact jane@example.com"  # free text, not marked
    # the hash covers the redacted payload: the chain verifies
    from audit.verify import verify_chain

    assert verify_chain().ok


def test_payload_values_hash_the_same_after_a_database_round_trip():
    from audit.verify import verify_chain

    audit_record(actor=None, action="run.step", payload={
        "f": 0.1, "big": 10**20, "e": 1e-7, "neg": -3.5, "unicode": "crédit ✓ 日本",
        "nested": [{"b": 1, "a": [True, None, False]}], "int_float": 40.0,
    })
    result = verify_chain()
    assert result.ok, result.reason


def test_admin_offers_no_add_change_or_delete(admin, login):
    write_events(1)
    client = login(admin)
    assert client.get("/admin/audit/auditevent/").status_code == 200
    assert client.get("/admin/audit/auditevent/add/").status_code == 403
    response = client.post("/admin/audit/auditevent/1/delete/", {"post": "yes"})
    assert response.status_code in (302, 403)
    assert AuditEvent.objects.filter(seq=1).exists()


def test_sequence_and_links_are_consistent():
    events = write_events(5)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[0].prev_hash == "0" * 64
    for before, after in itertools.pairwise(events):
        assert after.prev_hash == before.hash


@pytest.mark.parametrize("text", [
    "Bearer abcdefgh12345678", "BEARER abcdefgh12345678", "x acp_abcdef_0123456789abc y",
    "key sk-0123456789abcdefXYZ", "4111111111111111", "4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
    "4111-1111-1111-1111", "jane@example.com", "C-1002", "pro plan", "", "12 34 56",
])
def test_the_quick_screen_skips_only_what_no_pattern_would_change(text):
    from audit import redaction

    for emails in (True, False):
        unscreened = redaction._BEARER_RE.sub("Bearer " + REDACTED, text)
        unscreened = redaction._API_TOKEN_RE.sub(REDACTED, unscreened)
        unscreened = redaction._OPENAI_KEY_RE.sub(REDACTED, unscreened)
        unscreened = redaction._CARD_RE.sub(redaction._mask_card, unscreened)
        if emails:
            unscreened = redaction._EMAIL_RE.sub("[EMAIL]", unscreened)
        assert redaction.redact_text(text, emails=emails) == unscreened
