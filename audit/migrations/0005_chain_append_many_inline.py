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

# S608: the SQL is built from 0003's constants and fixed column positions, no input.
# ruff: noqa: S608

from importlib import import_module

from django.db import migrations

# 0003's SQL, not a copy: the same INSERT (lock key, genesis hash, hash input) by construction
_m0003 = import_module("audit.migrations.0003_chain_at_commit")

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
    PERFORM pg_advisory_xact_lock({_m0003.CHAIN_LOCK_KEY});
    FOR i IN 0 .. total - 1 LOOP
        ev := p_events->i;
{_m0003._chain_insert(_EV)}
    END LOOP;
    RETURN total;
END
$fn$
"""

# 0003's definition, restored on the way back
NESTED = _m0003.APPEND_MANY.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(INLINE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(NESTED)


class Migration(migrations.Migration):
    dependencies = [("audit", "0004_audit_hash_not_indexed")]
    operations = [migrations.RunPython(forwards, backwards)]
