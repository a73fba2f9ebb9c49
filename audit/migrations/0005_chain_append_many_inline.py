"""PostgreSQL: ``audit_chain_append_many`` chains its events itself (docs/audit.md).

0003's version called ``audit_chain_append`` once per event through ``PERFORM``: for the
one event of a typical step, a query for the array's elements, a nested function call
(its SELECT, fifteen argument extractions, a second plpgsql frame) and the advisory lock
taken again. This version takes the lock once and runs the same INSERT ... SELECT per
event with the event's fields read from the array element; the element loop is an
integer loop over simple expressions (no query). Same lock, same statement-per-event
snapshots (each INSERT sees the previous holder's committed event and this call's
earlier ones), same hash: the canonical text and the columns are unchanged.
"""

# S608: the SQL is built from the module constants of 0003 and fixed column positions.
# ruff: noqa: S608

from django.db import migrations

CHAIN_LOCK_KEY = 0x41554449  # audit.services.CHAIN_LOCK_KEY ("AUDI")
GENESIS_HASH = "0" * 64  # audit.chain.GENESIS_HASH

# the element's positions: audit.services.STAGE_COLUMNS
_EV = {
    "event_id": "(ev->>0)::uuid", "actor_type": "(ev->>1)", "actor_id": "(ev->>2)",
    "actor_label": "(ev->>3)", "action": "(ev->>4)", "tenant_id": "(ev->>5)::uuid",
    "object_type": "(ev->>6)", "object_id": "(ev->>7)", "trace_id": "(ev->>8)",
    "policy_version": "(ev->>9)", "payload": "(ev->10)", "part_a": "(ev->>11)",
    "part_b": "(ev->>12)", "part_c": "(ev->>13)", "part_d": "(ev->>14)",
}  # parenthesized: ->> and || share a precedence (left to right)

INLINE = f"""
CREATE OR REPLACE FUNCTION audit_chain_append_many(p_events jsonb) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    ev jsonb;
    total integer := jsonb_array_length(p_events);
BEGIN
    IF total = 0 THEN
        RETURN 0;
    END IF;
    PERFORM pg_advisory_xact_lock({CHAIN_LOCK_KEY});
    FOR i IN 0 .. total - 1 LOOP
        ev := p_events->i;
        -- a new statement, so a new snapshot: it sees the previous holder's event
        INSERT INTO audit_auditevent (seq, event_id, occurred_at, actor_type, actor_id,
            actor_label, action, tenant_id, object_type, object_id, trace_id, policy_version,
            payload, prev_hash, hash)
        SELECT head.seq + 1, {_EV["event_id"]}, clock.ts, {_EV["actor_type"]}, {_EV["actor_id"]},
            {_EV["actor_label"]}, {_EV["action"]}, {_EV["tenant_id"]}, {_EV["object_type"]},
            {_EV["object_id"]}, {_EV["trace_id"]}, {_EV["policy_version"]}, {_EV["payload"]},
            head.hash,
            encode(sha256(convert_to({_EV["part_a"]} || clock.txt || {_EV["part_b"]} || head.hash
                || {_EV["part_c"]} || (head.seq + 1)::text || {_EV["part_d"]}, 'UTF8')), 'hex')
        FROM (SELECT ts, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')
                  AS txt FROM clock_timestamp() AS ts) AS clock,
             (SELECT coalesce(max(seq), 0) AS seq,
                     coalesce((array_agg(hash))[1], '{GENESIS_HASH}') AS hash
              FROM (SELECT seq, hash FROM audit_auditevent ORDER BY seq DESC LIMIT 1) AS last)
                  AS head;
    END LOOP;
    RETURN total;
END
$fn$
"""

# 0003's definition, restored on the way back
NESTED = """
CREATE OR REPLACE FUNCTION audit_chain_append_many(p_events jsonb) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    ev jsonb;
    n integer := 0;
BEGIN
    FOR ev IN SELECT value FROM jsonb_array_elements(p_events) WITH ORDINALITY
              ORDER BY ordinality LOOP
        PERFORM audit_chain_append((ev->>0)::uuid, ev->>1, ev->>2, ev->>3, ev->>4,
            (ev->>5)::uuid, ev->>6, ev->>7, ev->>8, ev->>9, ev->10, ev->>11, ev->>12,
            ev->>13, ev->>14);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$fn$
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(INLINE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(NESTED)


class Migration(migrations.Migration):
    dependencies = [("audit", "0004_audit_hash_not_indexed")]
    operations = [migrations.RunPython(forwards, backwards)]
