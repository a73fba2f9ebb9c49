"""Verification of the hash chain.

``verify_chain`` walks the table in ``seq`` order in batches (each its own short query, no
long-running transaction, no server cursor, constant memory; on PostgreSQL a closed seq
range per batch, elsewhere ``seq > last LIMIT n``) and checks, for every row:

- its ``seq`` is the previous one plus one (the first is 1): a deleted row is reported as
  the missing sequence number;
- its ``prev_hash`` is the stored ``hash`` of its predecessor (genesis for seq 1): a row
  re-chained onto another predecessor, or a predecessor re-hashed after an edit;
- its ``hash`` is the SHA-256 of its canonical serialisation: any altered field.

It reports ``{"ok", "checked", "first_bad_seq"}`` plus a ``reason`` a person can read and
the head it reached. The chain alone cannot see a truncated tail or a log rewritten and
re-hashed from the first altered row onwards: signed checkpoints (``audit.checkpoints``)
exported out of the database catch those.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from django.db import connection

from audit.chain import GENESIS_HASH, HASHED_FIELDS, event_hash
from audit.models import AuditEvent

BATCH_SIZE = 5000
_COLUMNS = (*HASHED_FIELDS, "prev_hash", "hash")


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str
    head_seq: int | None  # the last sequence number checked and found good
    head_hash: str | None

    def as_dict(self) -> dict:
        return asdict(self)


def iter_chain_rows(*, after_seq: int = 0, batch_size: int = BATCH_SIZE) -> Iterator[dict]:
    """Every event after ``after_seq`` in seq order, as dicts of the hashed fields."""
    last = after_seq
    while True:
        rows = list(
            AuditEvent.objects.filter(seq__gt=last).order_by("seq").values_list(*_COLUMNS)[:batch_size]
        )
        if not rows:
            return
        for row in rows:
            yield dict(zip(_COLUMNS, row, strict=True))
        last = rows[-1][0]


# --- the fast path (PostgreSQL) -----------------------------------------------------------
# The ORM path spends most of its time turning columns into Python objects (datetimes,
# UUIDs) only to turn them back into text for hashing. On PostgreSQL the server renders
# them directly in the canonical text form, and the canonical JSON is assembled from
# pre-sorted keys. It must produce byte-identical input to ``audit.chain.canonical``; a
# test holds the two together, and any row whose fast hash disagrees is re-checked with
# the reference implementation before it is reported bad.

_FAST_SQL = (
    "SELECT seq, event_id::text, "
    "to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"'), "
    "actor_type, actor_id, actor_label, action, tenant_id::text, object_type, object_id, "
    "trace_id, policy_version, payload::text, prev_hash, hash "
    "FROM audit_auditevent WHERE seq > %s AND seq <= %s ORDER BY seq"
)
# A batch is a closed seq range, not "seq > last LIMIT n": with stale statistics (right
# after a bulk load or a restore) the planner answered the LIMIT form with a scan of the
# whole remaining table and an on-disk sort, 8x slower. A bounded range reads and sorts at
# most one batch whatever the plan; a gap only makes a batch shorter.
_NEXT_SQL = "SELECT min(seq) FROM audit_auditevent WHERE seq > %s"
_str = json.encoder.c_encode_basestring or json.encoder.py_encode_basestring  # ensure_ascii=False
_payload_json = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_FAST_TEMPLATE = (
    '{"action":%s,"actor_id":%s,"actor_label":%s,"actor_type":%s,"event_id":%s,'
    '"object_id":%s,"object_type":%s,"occurred_at":%s,"payload":%s,"policy_version":%s,'
    '"prev_hash":%s,"seq":%d,"tenant_id":%s,"trace_id":%s}'
)


def fast_canonical(row: tuple, prev_hash: str) -> bytes:
    (seq, event_id, occurred_at, actor_type, actor_id, actor_label, action, tenant_id,
     object_type, object_id, trace_id, policy_version, payload_text, _prev, _hash) = row
    return (_FAST_TEMPLATE % (
        _str(action), _str(actor_id), _str(actor_label), _str(actor_type), _str(event_id),
        _str(object_id), _str(object_type), _str(occurred_at),
        _payload_json(json.loads(payload_text)), _str(policy_version), _str(prev_hash), seq,
        "null" if tenant_id is None else _str(tenant_id), _str(trace_id),
    )).encode()


def _fast_batches(after_seq: int, batch_size: int, up_to_seq: int | None) -> Iterator[list[tuple]]:
    last = after_seq
    stop = None if up_to_seq is None else up_to_seq + 1  # one past: "missing" vs "ends"
    while stop is None or last < stop:
        high = last + batch_size if stop is None else min(last + batch_size, stop)
        with connection.cursor() as cursor:
            cursor.execute(_FAST_SQL, [last, high])
            rows = cursor.fetchall()
            if not rows:  # the end, or a gap of a whole batch: jump to the next event
                cursor.execute(_NEXT_SQL, [high])
                following = cursor.fetchone()[0]
                if following is None or (stop is not None and following > stop):
                    return
                high = following - 1
        if rows:
            yield rows
        last = high


def _reference_hash(seq: int, prev_hash: str) -> str | None:
    row = AuditEvent.objects.filter(seq=seq).values_list(*_COLUMNS).first()
    return event_hash(dict(zip(_COLUMNS, row, strict=True)), prev_hash) if row else None


def _walk(after_seq: int, batch_size: int,
          up_to_seq: int | None = None) -> Iterator[tuple[int, str, str, bool]]:
    """``(seq, prev_hash, hash, content_ok)`` for every event after ``after_seq``."""
    if connection.vendor == "postgresql":
        for rows in _fast_batches(after_seq, batch_size, up_to_seq):
            for row in rows:
                seq, stored_prev, stored = row[0], row[13], row[14]
                ok = hashlib.sha256(fast_canonical(row, stored_prev)).hexdigest() == stored
                if not ok:  # confirm with the reference implementation before accusing
                    ok = _reference_hash(seq, stored_prev) == stored
                yield seq, stored_prev, stored, ok
        return
    for row in iter_chain_rows(after_seq=after_seq, batch_size=batch_size):
        yield row["seq"], row["prev_hash"], row["hash"], event_hash(row, row["prev_hash"]) == row["hash"]


def verify_chain(
    *,
    after_seq: int = 0,
    after_hash: str | None = None,
    batch_size: int = BATCH_SIZE,
    up_to_seq: int | None = None,
    workers: int | None = None,
) -> VerifyResult:
    """Recompute the chain; stop at the first bad event.

    By default from the genesis. ``after_seq``/``after_hash`` start from a trusted point
    (a verified signed checkpoint): the row at ``after_seq`` must still carry
    ``after_hash``, and the walk continues after it. ``up_to_seq`` stops early.

    ``workers``: processes for a parallel walk on PostgreSQL (see ``_verify_parallel``);
    ``None`` picks ``default_workers()`` when the log is large enough and the call is not
    inside a transaction, 1 forces the single walk. The result is the same either way.
    """
    if workers is None:
        workers = _auto_workers(after_seq, up_to_seq)
    if workers > 1:
        return _verify_parallel(after_seq, after_hash, batch_size, up_to_seq, workers)
    expected_seq = after_seq + 1
    prev_hash = GENESIS_HASH
    checked = 0
    if after_seq:
        stored = AuditEvent.objects.filter(seq=after_seq).values_list("hash", flat=True).first()
        if stored is None:
            return VerifyResult(False, 0, after_seq, f"event #{after_seq} is missing", None, None)
        if after_hash is not None and stored != after_hash:
            return VerifyResult(False, 0, after_seq,
                                f"event #{after_seq} no longer has the hash it had", None, None)
        prev_hash = stored
    head_seq, head_hash = (after_seq or None), (prev_hash if after_seq else None)
    for seq, stored_prev, stored_hash, content_ok in _walk(after_seq, batch_size, up_to_seq):
        if up_to_seq is not None and seq > up_to_seq and expected_seq > up_to_seq:
            break  # (a gap just before up_to_seq is reported below, as the full walk would)
        if seq != expected_seq:
            return VerifyResult(False, checked, expected_seq,
                                f"event #{expected_seq} is missing (next present is #{seq})",
                                head_seq, head_hash)
        if stored_prev != prev_hash:
            return VerifyResult(False, checked, seq,
                                f"event #{seq} does not link to its predecessor's hash "
                                "(it or its predecessor was altered or re-hashed)",
                                head_seq, head_hash)
        if not content_ok:
            return VerifyResult(False, checked, seq,
                                f"event #{seq} does not match its hash (its content was altered)",
                                head_seq, head_hash)
        checked += 1
        prev_hash = stored_hash
        head_seq, head_hash = seq, prev_hash
        expected_seq = seq + 1
    if up_to_seq is not None and (head_seq or 0) < up_to_seq:
        return VerifyResult(False, checked, expected_seq,
                            f"event #{expected_seq} is missing (the chain ends at "
                            f"#{head_seq or 0}, expected at least #{up_to_seq})",
                            head_seq, head_hash)
    return VerifyResult(True, checked, None, "chain intact", head_seq, head_hash)


# --- parallel verification (PostgreSQL) ----------------------------------------------------
# The walk is CPU-bound in Python (canonical JSON and SHA-256), so one process uses one
# core while the server waits, and vice versa. Ranges of seq are independent: a range
# (lo..hi) is verified with verify_chain(after_seq=lo-1, up_to_seq=hi), which starts from
# the STORED hash of event lo-1 and checks every row of the range (seq continuity, link,
# content). The link across a boundary is therefore checked by the later range, and the
# content of event lo-1 by the earlier one, so every check of the single walk is made
# exactly once. The first failing range (in seq order) holds the first bad event: every
# earlier range passed, so the single walk would have reached that range carrying exactly
# the stored hash the range started from. Its ``first_bad_seq`` and ``checked`` (plus the
# rows of the earlier ranges) are what the single walk reports; only the wording of a
# "missing" reason at a range's end can differ.

PARALLEL_MIN_ROWS = 100_000  # below this, process start-up costs more than it saves


def _auto_workers(after_seq: int, up_to_seq: int | None) -> int:
    import multiprocessing
    import os

    if (connection.vendor != "postgresql" or connection.in_atomic_block
            or multiprocessing.current_process().daemon or (os.cpu_count() or 1) < 2):
        return 1
    head = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
    end = head if up_to_seq is None else min(head, up_to_seq)
    return default_workers() if end - after_seq >= PARALLEL_MIN_ROWS else 1


def default_workers() -> int:
    """One process more than CPUs: each alternates between waiting for the server's batch
    and hashing it, so CPU+1 keeps every core busy (2 CPUs: 3 beat 2 and 4, measured)."""
    import os

    return min((os.cpu_count() or 1) + 1, 8)


def _verify_range(job: tuple[int, str | None, int, int | None]) -> VerifyResult:
    after_seq, after_hash, batch_size, up_to_seq = job
    try:
        return verify_chain(after_seq=after_seq, after_hash=after_hash, batch_size=batch_size,
                            up_to_seq=up_to_seq, workers=1)
    finally:
        connection.close()


def _verify_parallel(after_seq: int, after_hash: str | None, batch_size: int,
                     up_to_seq: int | None, workers: int) -> VerifyResult:
    import multiprocessing

    if connection.vendor != "postgresql" or connection.in_atomic_block:
        # rows written in this transaction are invisible to other connections
        return verify_chain(after_seq=after_seq, after_hash=after_hash, batch_size=batch_size,
                            up_to_seq=up_to_seq, workers=1)
    head = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
    end = head if up_to_seq is None else min(head, up_to_seq)
    span = max(0, end - after_seq)
    if span < workers * 2:
        return verify_chain(after_seq=after_seq, after_hash=after_hash, batch_size=batch_size,
                            up_to_seq=up_to_seq, workers=1)
    bounds = [after_seq + span * k // workers for k in range(workers + 1)]
    jobs = [(bounds[k], after_hash if k == 0 else None, batch_size,
             # the last range runs to the caller's bound (or the live head, like the walk)
             bounds[k + 1] if k < workers - 1 else up_to_seq)
            for k in range(workers)]
    # Children are forked: they must not share this process's socket, so close it first
    # (allowed: not inside a transaction) and let each child open its own connection.
    connection.close()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        results = pool.map(_verify_range, jobs, chunksize=1)
    checked = 0
    for result in results:
        if not result.ok:
            return VerifyResult(False, checked + result.checked, result.first_bad_seq,
                                result.reason, result.head_seq, result.head_hash)
        checked += result.checked
    last = results[-1]
    return VerifyResult(True, checked, None, "chain intact", last.head_seq, last.head_hash)
