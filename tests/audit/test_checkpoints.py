"""Signed checkpoints out of the database catch what the chain alone cannot."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.core.management import CommandError, call_command

from audit.chain import event_hash
from audit.checkpoints import (
    CheckpointError,
    checkpoint_path,
    checkpoint_take,
    checkpoint_verify,
    read_checkpoints,
)
from audit.models import AuditEvent
from audit.verify import iter_chain_rows, verify_chain
from tests.audit.conftest import set_payload_text, superuser_bypass, write_events

pytestmark = pytest.mark.django_db
KEY = "checkpoint-key-for-tests-0123456789abcdefghijkl"


@pytest.fixture(autouse=True)
def checkpoint_settings(settings, tmp_path):
    settings.AUDIT_CHECKPOINT_KEY = KEY
    settings.AUDIT_CHECKPOINT_DIR = tmp_path / "checkpoints"
    settings.AUDIT_CHECKPOINT_WEBHOOK = ""
    return settings


def _rewrite_everything_from(seq: int) -> None:
    """What a superuser could do: alter one event and re-hash every later one."""
    rows = list(iter_chain_rows())
    with superuser_bypass() as cursor:
        prev = rows[seq - 2]["hash"] if seq > 1 else "0" * 64
        for row in rows[seq - 1:]:
            if row["seq"] == seq:
                row["payload"] = {**row["payload"], "amount": 4000}
                set_payload_text(cursor, seq, json.dumps(row["payload"]))
            digest = event_hash(row, prev)
            cursor.execute("UPDATE audit_auditevent SET prev_hash = %s, hash = %s WHERE seq = %s",
                           [prev, digest, row["seq"]])
            prev = digest


def test_take_signs_the_verified_head_and_records_it():
    write_events(5)
    record = checkpoint_take()
    assert (record["seq"], record["hash"]) == (5, AuditEvent.objects.get(seq=5).hash)
    lines = read_checkpoints()
    assert len(lines) == 1 and lines[0][1]["sig"] == record["sig"]
    event = AuditEvent.objects.get(action="audit.checkpoint")
    assert event.seq == 6 and event.payload["seq"] == 5
    assert KEY not in json.dumps(event.payload) and "sig" not in event.payload
    second = checkpoint_take()
    assert second["seq"] == 6 and second["prev_sig"] == record["sig"]
    report = checkpoint_verify()
    assert report.ok, report.problems
    assert report.checkpoints == 2


def test_rewrite_and_rehash_passes_the_chain_but_not_the_checkpoints():
    write_events(8)
    checkpoint_take()
    _rewrite_everything_from(3)
    assert verify_chain().ok  # the chain alone is fooled
    report = checkpoint_verify()
    assert not report.ok
    assert report.first_bad_checkpoint == 1
    assert "different hash" in report.problems[0]


def test_truncated_tail_is_caught():
    write_events(6)
    checkpoint_take()
    with superuser_bypass() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE seq >= 5")
    assert verify_chain().ok  # a shorter chain is still a valid chain
    report = checkpoint_verify()
    assert not report.ok
    assert "missing" in report.problems[0]


def test_a_forged_or_removed_checkpoint_line_is_caught():
    write_events(3)
    checkpoint_take()
    checkpoint_take()
    checkpoint_take()
    path = checkpoint_path()
    lines = path.read_text().splitlines()
    forged = json.loads(lines[1])
    forged["seq"] = 2
    path.write_text("\n".join([lines[0], json.dumps(forged), lines[2]]) + "\n")
    report = checkpoint_verify()
    assert not report.ok and report.first_bad_checkpoint == 2
    assert "bad signature" in report.problems[0]
    path.write_text("\n".join([lines[0], lines[2]]) + "\n")
    report = checkpoint_verify()
    assert not report.ok and "previous checkpoint" in report.problems[0]


def test_a_broken_chain_is_never_signed():
    write_events(4)
    checkpoint_take()
    write_events(2)
    with superuser_bypass() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE seq = 6")
    with pytest.raises(CheckpointError, match=r"does not verify.*first bad seq 6"):
        checkpoint_take()
    assert len(read_checkpoints()) == 1


def test_without_a_key_checkpoints_refuse_clearly(checkpoint_settings):
    checkpoint_settings.AUDIT_CHECKPOINT_KEY = ""
    with pytest.raises(CheckpointError, match="AUDIT_CHECKPOINT_KEY is not set"):
        checkpoint_take()
    with pytest.raises(CommandError, match="AUDIT_CHECKPOINT_KEY is not set"):
        call_command("audit_checkpoint", "take")


def test_another_key_cannot_verify(checkpoint_settings):
    write_events(2)
    checkpoint_take()
    checkpoint_settings.AUDIT_CHECKPOINT_KEY = "another-key-" + "x" * 40
    report = checkpoint_verify()
    assert not report.ok and "not the configured key" in report.problems[0]


def test_command_take_and_verify(capsys):
    write_events(2)
    call_command("audit_checkpoint", "take")
    assert "checkpoint seq=2" in capsys.readouterr().out
    call_command("audit_checkpoint", "verify")
    assert "OK: 1 checkpoints agree" in capsys.readouterr().out
    _rewrite_everything_from(1)
    with pytest.raises(CommandError, match="FAILED") as info:
        call_command("audit_checkpoint", "verify")
    assert info.value.returncode == 1


def test_beat_schedule_names_the_task():
    from django.conf import settings

    from audit.tasks import checkpoint_task

    entry = settings.CELERY_BEAT_SCHEDULE["audit-checkpoint"]
    assert entry["task"] == checkpoint_task.name


def test_task_takes_a_checkpoint_and_skips_quietly_without_key(checkpoint_settings):
    from audit.tasks import checkpoint_task

    write_events(1)
    assert checkpoint_task()["seq"] == 1
    checkpoint_settings.AUDIT_CHECKPOINT_KEY = ""
    assert checkpoint_task() is None


class _Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_receives_the_signed_checkpoint(checkpoint_settings):
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        checkpoint_settings.AUDIT_CHECKPOINT_WEBHOOK = f"http://127.0.0.1:{server.server_port}/cp"
        write_events(2)
        record = checkpoint_take()
    finally:
        server.shutdown()
    assert record["webhook"] == "delivered"
    assert _Receiver.received[-1]["sig"] == record["sig"]
    assert _Receiver.received[-1]["seq"] == 2


def test_webhook_failure_keeps_the_file_copy_and_is_recorded(checkpoint_settings):
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    port = server.server_port
    server.server_close()  # nothing listens there now
    checkpoint_settings.AUDIT_CHECKPOINT_WEBHOOK = f"http://127.0.0.1:{port}/cp"
    write_events(1)
    record = checkpoint_take()
    assert record["webhook"].startswith("failed")
    assert len(read_checkpoints()) == 1
    assert AuditEvent.objects.get(action="audit.checkpoint").payload["webhook"].startswith("failed")
