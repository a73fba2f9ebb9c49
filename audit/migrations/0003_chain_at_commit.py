"""PostgreSQL: chain events at COMMIT, inside the server (see docs/audit.md, "The chain").

``audit_record`` inserts the event's prepared fields into ``audit_stage`` in the caller's
transaction and returns. A ``DEFERRABLE INITIALLY DEFERRED`` constraint trigger on that
table runs ``audit_chain_staged()`` for each staged row when the transaction commits:
it takes the chain's advisory lock, reads the head, assigns
``seq`` and ``occurred_at``, hashes (sha256 over the canonical text that
``audit.chain.canonical_parts`` prepared) and inserts the event into
``audit_auditevent``. The lock is held until the commit completes, as before, but the
critical section no longer contains a client round trip: only this function and the
WAL flush.

- An event exists iff its transaction commits: a rollback (or a rolled-back savepoint)
  discards the staged row and its pending trigger event together.
- ``audit_stage`` is UNLOGGED and has no index: a staged row is needed only until its
  transaction's COMMIT has chained it, so it needs no WAL; once committed it is garbage,
  deleted in bulk by ``audit.services.stage_sweep`` (a beat task) -- a committed row is
  always a chained one, and rows of transactions still open are invisible to the sweep.
  After a crash PostgreSQL empties the table, which holds nothing needed by then.
- The function reads the head with a fresh snapshot per statement (plpgsql, VOLATILE, READ
  COMMITTED), so it sees the previous lock holder's committed event.

SQLite keeps the in-transaction Python append (its write lock is held from BEGIN
IMMEDIATE): nothing to do there.
"""

# S608: the SQL is built from the two module constants above, no input.
# ruff: noqa: S608

from django.db import migrations

CHAIN_LOCK_KEY = 0x41554449  # audit.services.CHAIN_LOCK_KEY ("AUDI")
GENESIS_HASH = "0" * 64  # audit.chain.GENESIS_HASH

def _chain_body(source: str) -> str:
    """The chaining statements, reading the event's columns from ``source`` (``NEW.`` in
    the trigger, ``p_`` in the function)."""
    v = {c: f"{source}{c}" for c in (
        "event_id", "actor_type", "actor_id", "actor_label", "action", "tenant_id",
        "object_type", "object_id", "trace_id", "policy_version", "payload", "part_a",
        "part_b", "part_c", "part_d")}
    return f"""
        PERFORM pg_advisory_xact_lock({CHAIN_LOCK_KEY});
{_chain_insert(v)}"""


def _chain_insert(v: dict[str, str]) -> str:
    """The INSERT that appends one event after the head (the caller holds the chain lock),
    with each column's SQL expression from ``v`` (also used by migration 0005)."""
    return f"""        -- a new statement, so a new snapshot: it sees the previous holder's event
        INSERT INTO audit_auditevent (seq, event_id, occurred_at, actor_type, actor_id,
            actor_label, action, tenant_id, object_type, object_id, trace_id, policy_version,
            payload, prev_hash, hash)
        SELECT head.seq + 1, {v["event_id"]}, clock.ts, {v["actor_type"]}, {v["actor_id"]},
            {v["actor_label"]}, {v["action"]}, {v["tenant_id"]}, {v["object_type"]},
            {v["object_id"]}, {v["trace_id"]}, {v["policy_version"]}, {v["payload"]},
            head.hash,
            encode(sha256(convert_to({v["part_a"]} || clock.txt || {v["part_b"]} || head.hash
                || {v["part_c"]} || (head.seq + 1)::text || {v["part_d"]}, 'UTF8')), 'hex')
        FROM (SELECT ts, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')
                  AS txt FROM clock_timestamp() AS ts) AS clock,
             (SELECT coalesce(max(seq), 0) AS seq,
                     coalesce((array_agg(hash))[1], '{GENESIS_HASH}') AS hash
              FROM (SELECT seq, hash FROM audit_auditevent ORDER BY seq DESC LIMIT 1) AS last)
                  AS head;"""


# Events as a JSON array of [event_id, actor_type, ..., payload, part_a .. part_d]
# (audit.services.STAGE_COLUMNS order), appended in array order. (0005 replaces it.)
APPEND_MANY = """
    CREATE FUNCTION audit_chain_append_many(p_events jsonb) RETURNS integer
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


FORWARDS = [
    """
    CREATE UNLOGGED TABLE audit_stage (
        event_id uuid NOT NULL,
        actor_type varchar(16) NOT NULL,
        actor_id varchar(64) NOT NULL,
        actor_label varchar(150) NOT NULL,
        action varchar(64) NOT NULL,
        tenant_id uuid NULL,
        object_type varchar(64) NOT NULL,
        object_id varchar(64) NOT NULL,
        trace_id varchar(64) NOT NULL,
        policy_version varchar(32) NOT NULL,
        payload jsonb NOT NULL,
        part_a text NOT NULL,
        part_b text NOT NULL,
        part_c text NOT NULL,
        part_d text NOT NULL
    )
    """,
    # The chaining routine (lock, head, seq, occurred_at, hash, insert), once as the trigger
    # that runs at COMMIT for each staged row and once as a function for the runtime's
    # autocommitted step statements (``audit_chain_append_many``): the same SQL text,
    # ``_chain_body``, over NEW's columns or the function's arguments.
    f"""
    CREATE FUNCTION audit_chain_append(p_event_id uuid, p_actor_type text, p_actor_id text,
        p_actor_label text, p_action text, p_tenant_id uuid, p_object_type text,
        p_object_id text, p_trace_id text, p_policy_version text, p_payload jsonb,
        p_part_a text, p_part_b text, p_part_c text, p_part_d text)
    RETURNS void LANGUAGE plpgsql AS $fn$
    BEGIN
        {_chain_body("p_")}
    END
    $fn$
    """,
    f"""
    CREATE FUNCTION audit_chain_staged() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        {_chain_body("NEW.")}
        RETURN NULL;
    END
    $fn$
    """,
    APPEND_MANY,
    """
    CREATE CONSTRAINT TRIGGER audit_chain_at_commit AFTER INSERT ON audit_stage
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION audit_chain_staged()
    """,
]

BACKWARDS = [
    "DROP TABLE IF EXISTS audit_stage",
    "DROP FUNCTION IF EXISTS audit_chain_staged()",
    "DROP FUNCTION IF EXISTS audit_chain_append_many(jsonb)",
    "DROP FUNCTION IF EXISTS audit_chain_append(uuid, text, text, text, text, uuid, text, text, "
    "text, text, jsonb, text, text, text, text)",
]


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for sql in FORWARDS:
        schema_editor.execute(sql)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for sql in BACKWARDS:
        schema_editor.execute(sql)


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_sqlite_append_only")]
    operations = [migrations.RunPython(forwards, backwards)]
