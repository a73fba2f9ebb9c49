"""Signed checkpoints of the chain head, kept out of the database.

The hash chain proves the rows agree with each other; it cannot prove they are the rows
that were written. Someone with superuser access could alter an event and re-hash every
later one, or delete the newest events (a truncated tail leaves a valid, shorter chain).
A checkpoint records ``(seq, hash, taken_at)`` of the head, HMAC-SHA256 signed with
``AUDIT_CHECKPOINT_KEY`` -- a key the database never holds -- and is appended to a JSONL
file (``AUDIT_CHECKPOINT_DIR/checkpoints.jsonl``) and, when configured, POSTed to
``AUDIT_CHECKPOINT_WEBHOOK`` (a system the database's administrators do not control).

Before signing, the chain is verified from the previous checkpoint to the head, so a
checkpoint attests "the chain was intact up to here"; a broken chain is never signed.
Each checkpoint also carries the previous one's signature, so removing a line from the
middle of the file is detected.

``checkpoint_verify`` checks every exported checkpoint's signature and links, that the
event at each checkpointed ``seq`` still exists with the same hash (catches a rewrite
plus re-hash, and a truncated tail), and the chain itself.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.chain import GENESIS_HASH
from audit.models import AuditEvent
from audit.verify import verify_chain
from console.errors import DomainError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SIGNED_FIELDS = ("v", "seq", "hash", "taken_at", "key_id", "prev_sig")


class CheckpointError(DomainError):
    code = "audit_checkpoint_failed"
    status = 409


@dataclass
class CheckpointReport:
    ok: bool
    checkpoints: int
    first_bad_checkpoint: int | None  # 1-based line number in the file
    problems: list[str] = field(default_factory=list)
    chain: dict | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _key() -> bytes:
    key = getattr(settings, "AUDIT_CHECKPOINT_KEY", "")
    if not key:
        raise CheckpointError(
            "Audit checkpoints are disabled: AUDIT_CHECKPOINT_KEY is not set. Set it (or "
            "AUDIT_CHECKPOINT_KEY_FILE) to a random secret of 32+ characters kept outside "
            "the database, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`.",
            code="audit_checkpoint_disabled",
        )
    return key.encode()


def key_id(key: bytes) -> str:
    """A public fingerprint of the key, so a verifier knows which key signed a line."""
    return hashlib.sha256(b"acp-audit-checkpoint-key:" + key).hexdigest()[:16]


def checkpoint_path() -> Path:
    return Path(settings.AUDIT_CHECKPOINT_DIR) / "checkpoints.jsonl"


def _signing_bytes(record: dict) -> bytes:
    doc = {name: record.get(name) for name in SIGNED_FIELDS}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def sign(record: dict, key: bytes) -> str:
    return hmac.new(key, _signing_bytes(record), hashlib.sha256).hexdigest()


def read_checkpoints(path: Path | None = None) -> list[tuple[int, dict | None, str]]:
    """``(line_no, record or None, raw)`` for every non-empty line of the file."""
    path = path or checkpoint_path()
    if not path.exists():
        return []
    out = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        out.append((number, record if isinstance(record, dict) else None, raw))
    return out


def _check_record(record: dict | None, key: bytes, prev_sig: str | None) -> str | None:
    """Why this checkpoint line is not trustworthy, or None."""
    if record is None:
        return "not a JSON object"
    missing = [name for name in (*SIGNED_FIELDS, "sig") if name not in record]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    if record["key_id"] != key_id(key):
        return (f"signed with key {record['key_id']}, not the configured key {key_id(key)} "
                "(rotated key? verify with the old key)")
    if not hmac.compare_digest(str(record["sig"]), sign(record, key)):
        return "bad signature (the line was altered or forged)"
    if record["prev_sig"] != prev_sig:
        return "does not link to the previous checkpoint (a line was removed or reordered)"
    if not isinstance(record["seq"], int) or record["seq"] < 0:
        return "seq is not a non-negative integer"
    return None


def _append_line(path: Path, build) -> dict:
    """Append under an exclusive lock; ``build(last_record)`` makes the new record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0)
            lines = [raw for raw in handle.read().splitlines() if raw.strip()]
            last = json.loads(lines[-1]) if lines else None
            record = build(last)
            handle.seek(0, os.SEEK_END)
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            return record
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _post_webhook(url: str, record: dict) -> None:
    import httpx

    response = httpx.post(url, json=record, timeout=10.0)
    response.raise_for_status()


def checkpoint_take(*, actor: Any = None) -> dict:
    """Verify the chain since the last checkpoint, sign the head, export it, audit it.

    Raises ``CheckpointError`` (and signs nothing) when the key is missing, the last
    exported checkpoint is not trustworthy, or the chain does not verify.
    """
    from audit.services import Actor, audit_record

    key = _key()
    path = checkpoint_path()

    def build(last: dict | None) -> dict:
        prev_sig = None
        after_seq, after_hash = 0, None
        if last is not None:
            problem = _check_record(last, key, last.get("prev_sig"))
            if problem:
                raise CheckpointError(
                    f"The last checkpoint in {path} is not trustworthy ({problem}); refusing "
                    "to extend it. Investigate, then run `manage.py audit_checkpoint verify`."
                )
            prev_sig = last["sig"]
            after_seq, after_hash = last["seq"], last["hash"]
        if after_seq == 0:
            result = verify_chain()
        else:
            result = verify_chain(after_seq=after_seq, after_hash=after_hash)
        if not result.ok:
            raise CheckpointError(
                f"The audit chain does not verify ({result.reason}; first bad seq "
                f"{result.first_bad_seq}); no checkpoint was signed."
            )
        # Sign exactly the head the walk verified (events appended meanwhile wait for
        # the next checkpoint).
        seq, digest = result.head_seq or 0, result.head_hash or GENESIS_HASH
        record = {"v": FORMAT_VERSION, "seq": seq, "hash": digest,
                  "taken_at": timezone.now().isoformat(timespec="microseconds"),
                  "key_id": key_id(key), "prev_sig": prev_sig}
        record["sig"] = sign(record, key)
        return record

    record = _append_line(path, build)
    webhook = getattr(settings, "AUDIT_CHECKPOINT_WEBHOOK", "")
    webhook_status = "not configured"
    if webhook:
        try:
            _post_webhook(webhook, record)
            webhook_status = "delivered"
        except Exception as exc:  # the file copy exists; report, don't lose the checkpoint
            logger.error("audit checkpoint webhook failed: %s", exc)
            webhook_status = f"failed: {type(exc).__name__}"
    with transaction.atomic():
        audit_record(
            actor=actor if actor is not None else Actor.system("audit-checkpoint"),
            action="audit.checkpoint", object_type="audit_chain", object_id=str(record["seq"]),
            payload={"seq": record["seq"], "hash": record["hash"], "key_id": record["key_id"],
                     "file": str(path), "webhook": webhook_status},
        )
    record["webhook"] = webhook_status
    return record


def checkpoint_verify(*, path: Path | None = None, chain: bool = True) -> CheckpointReport:
    """Check every exported checkpoint and that the database still agrees with each."""
    key = _key()
    lines = read_checkpoints(path)
    problems: list[str] = []
    first_bad: int | None = None
    prev_sig: str | None = None
    good: list[tuple[int, dict]] = []
    for number, record, _raw in lines:
        problem = _check_record(record, key, prev_sig)
        if problem:
            problems.append(f"checkpoint line {number}: {problem}")
            first_bad = first_bad or number
            prev_sig = record.get("sig") if record else prev_sig
            continue
        prev_sig = record["sig"]
        good.append((number, record))
    # The event at each checkpointed seq must still exist with the signed hash.
    seqs = sorted({record["seq"] for _, record in good if record["seq"] > 0})
    stored: dict[int, str] = {}
    for start in range(0, len(seqs), 1000):
        chunk = seqs[start:start + 1000]
        stored.update(AuditEvent.objects.filter(seq__in=chunk).values_list("seq", "hash"))
    for number, record in good:
        seq = record["seq"]
        if seq == 0:
            continue
        if seq not in stored:
            problems.append(f"checkpoint line {number}: event #{seq} is missing from the "
                            "database (deleted, or the tail was truncated)")
            first_bad = first_bad or number
        elif stored[seq] != record["hash"]:
            problems.append(f"checkpoint line {number}: event #{seq} has a different hash "
                            "than when it was checkpointed (the chain was rewritten)")
            first_bad = first_bad or number
    chain_result = verify_chain() if chain else None
    if chain_result is not None and not chain_result.ok:
        problems.append(f"chain: {chain_result.reason}")
    return CheckpointReport(
        ok=not problems, checkpoints=len(lines), first_bad_checkpoint=first_bad,
        problems=problems, chain=chain_result.as_dict() if chain_result else None,
    )
