"""Audit log benchmarks on PostgreSQL: append rate (chain on vs off), verification, search.

    python -m bench audit                       # defaults below
    python -m bench audit -- --search-rows 200000 --keep
    python -m bench audit -- --only appends     # or verify, search (comma-separated)

Uses its own database (``--db``, default ``acp_bench_audit``) on the server of
``BENCH_PG_URL`` (default ``postgres://postgres@127.0.0.1:5432/postgres``), migrates it,
and drops it at the end (``--keep`` to inspect it).

1. Appends/s with 1 and 8 writer PROCESSES (each its own connection, one event per
   transaction), interleaved in each round, medians printed:
   - chain on = ``audit_record`` (redact, prepare the canonical text, stage the event;
     at COMMIT the deferred trigger takes the chain lock, reads the head, hashes in the
     server and appends -- migration audit 0003);
   - chain off = the same redaction and an INSERT of the same row into a copy of the table
     (same indexes and constraints, no triggers) with no lock, no head read, no hash;
   - chain off in one round trip = the same INSERT sent as ``BEGIN; INSERT; COMMIT`` in
     one message: an audit-only transaction on the chain-on path also costs one round
     trip (its event travels with the COMMIT), so this is the like-for-like baseline;
   - bare = a one-column row per transaction through the same Django stack: the commit
     ceiling of this machine for these writers.
2. Verification events/s over a valid chain of ``--verify-rows`` events (written with real
   hashes and COPY): the single walk, then the parallel walk (``--verify-workers``). Before
   that, the number of times ``occurred_at`` steps backwards in seq order over the events
   the concurrent writers appended (the time-window search relies on it being 0).
3. Search p50/p95 over ``--search-rows`` events: the rows above plus bulk rows from
   ``generate_series`` with realistic spreads of actors, actions, tenants, objects, traces
   and 90 days of time. The bulk rows carry placeholder hashes (the search does not read
   them), so the chain is not valid after this step -- it runs last.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench._runtime_common import machine

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def _db_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def _env(db: str) -> dict[str, str]:
    env = os.environ.copy()
    env.update({
        "DATABASE_URL": _db_url(db), "DJANGO_SETTINGS_MODULE": "console.settings",
        "DEBUG": "0", "SECRET_KEY": env.get("SECRET_KEY") or secrets.token_urlsafe(48),
        "VAR_DIR": env.get("VAR_DIR") or tempfile.mkdtemp(prefix="acp-bench-"),
        "LOG_LEVEL": "WARNING",
    })
    return env


def _setup_django(db: str) -> None:
    os.environ.update(_env(db))
    import django

    django.setup()


# --- writer processes ---------------------------------------------------------------------


def writer(mode: str, count: int, go_file: str, ident: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    import django

    django.setup()
    from django.db import connection, transaction

    from audit.chain import normalise_payload
    from audit.redaction import redact
    from audit.services import Actor, audit_record

    connection.ensure_connection()
    Path(f"{go_file}.ready-{ident}").touch()
    while not os.path.exists(go_file):
        time.sleep(0.005)
    actor = Actor.system(f"bench-{ident}")
    for index in range(count):
        payload = {"writer": ident, "i": index, "amount": 40, "customer": "C-1001"}
        if mode == "bare":  # the commit ceiling: one tiny row per transaction, nothing else
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("INSERT INTO bench_bare (v) VALUES (%s)", [index])
        elif mode == "chain":
            with transaction.atomic():
                audit_record(actor=actor, action="tool.executed", object_type="run",
                             object_id=f"run-{ident}", trace_id=f"trace-{ident}-{index}",
                             payload=payload)
        else:
            clean = normalise_payload(redact(payload))
            insert = ("INSERT INTO bench_plain (event_id, occurred_at, actor_type, actor_id, "
                      "actor_label, action, tenant_id, object_type, object_id, trace_id, "
                      "policy_version, payload, prev_hash, hash) VALUES (%s, now(), 'system', "
                      "'', %s, 'tool.executed', NULL, 'run', %s, %s, '', %s::jsonb, '', %s)")
            values = [uuid.uuid4(), actor.label, f"run-{ident}", f"trace-{ident}-{index}",
                      json.dumps(clean), uuid.uuid4().hex * 2]
            if mode == "plain1":  # the same, sent as BEGIN; INSERT; COMMIT in one message
                with connection.cursor() as cursor:
                    cursor.execute(f"BEGIN; {insert}; COMMIT", values)
            else:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute(insert, values)
    print(json.dumps({"end": time.time()}))


def run_writers(db: str, mode: str, writers: int, per_writer: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp) / "go"
        procs = [subprocess.Popen(
            [sys.executable, "-m", "bench.audit_log", "--writer", mode, str(per_writer), str(go),
             str(n)], cwd=ROOT, env=_env(db), stdout=subprocess.PIPE, text=True)
            for n in range(writers)]
        while len(list(Path(tmp).glob("go.ready-*"))) < writers:
            if any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError("a writer failed to start")
            time.sleep(0.05)
        start = time.time()
        go.touch()
        ends = []
        for proc in procs:
            out, _ = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"writer failed: {out}")
            ends.append(json.loads(out.strip().splitlines()[-1])["end"])
    return writers * per_writer / (max(ends) - start)


# --- the benchmark ------------------------------------------------------------------------


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def bench_appends(db: str, args) -> list[str]:
    lines = []
    modes = ("chain", "plain", "plain1", "bare")
    for writers, per in ((1, args.events_1), (8, args.events_8)):
        rates: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(args.rounds):
            for mode in modes:
                rates[mode].append(run_writers(db, mode, writers, per))
        rate = {mode: statistics.median(values) for mode, values in rates.items()}
        chain, plain = rate["chain"], rate["plain"]
        lines.append(f"appends, {writers} writer(s) x {per} events, median of {args.rounds}: "
                     f"chain on {chain:,.0f}/s, chain off {plain:,.0f}/s, "
                     f"ratio {chain / plain:.2f}; chain off in one round trip "
                     f"{rate['plain1']:,.0f}/s, ratio {chain / rate['plain1']:.2f}; "
                     f"bare 1-row commits {rate['bare']:,.0f}/s")
        print(lines[-1], flush=True)
    return lines


def load_valid_chain(total: int) -> None:
    """Append real, correctly hashed events with COPY until the table holds ``total``."""
    from django.db import connection
    from django.utils import timezone

    from audit.chain import GENESIS_HASH, event_hash
    from audit.models import AuditEvent

    last = AuditEvent.objects.order_by("-seq").values_list("seq", "hash").first()
    seq, prev = last if last else (0, GENESIS_HASH)
    columns = ("seq", "event_id", "occurred_at", "actor_type", "actor_id", "actor_label",
               "action", "tenant_id", "object_type", "object_id", "trace_id",
               "policy_version", "payload", "prev_hash", "hash")
    raw = connection.connection
    while seq < total:
        batch = min(50_000, total - seq)
        with raw.cursor() as cursor, cursor.copy(
                f"COPY audit_auditevent ({', '.join(columns)}) FROM STDIN") as copy:
            for _ in range(batch):
                seq += 1
                fields = {"seq": seq, "event_id": uuid.uuid4(), "occurred_at": timezone.now(),
                          "actor_type": "user", "actor_id": str(seq % 50),
                          "actor_label": f"user-{seq % 50}", "action": "tool.executed",
                          "tenant_id": None, "object_type": "run", "object_id": f"run-{seq // 7}",
                          "trace_id": f"trace-{seq // 20}", "policy_version": "3",
                          "payload": {"i": seq, "amount": 40, "tool": "apply_credit",
                                      "arguments": {"customer": "C-1001", "amount": 40}}}
                digest = event_hash(fields, prev)
                copy.write_row([seq, fields["event_id"], fields["occurred_at"], "user",
                                fields["actor_id"], fields["actor_label"], "tool.executed", None,
                                "run", fields["object_id"], fields["trace_id"], "3",
                                json.dumps(fields["payload"]), prev, digest])
                prev = digest
        raw.commit() if not raw.autocommit else None


def bench_verify(args) -> list[str]:
    from django.db import connection

    from audit.verify import verify_chain

    with connection.cursor() as cursor:  # the claim the time-window search relies on
        cursor.execute("SELECT count(*), count(*) FILTER (WHERE back) FROM (SELECT occurred_at "
                       "< lag(occurred_at) OVER (ORDER BY seq) AS back FROM audit_auditevent) t")
        appended, backwards = cursor.fetchone()
    lines = [f"occurred_at vs seq over the {appended:,} events appended by concurrent writers: "
             f"{backwards} step(s) backwards"]
    print(lines[-1], flush=True)
    load_valid_chain(args.verify_rows)
    from audit.verify import default_workers

    workers = args.verify_workers or default_workers()
    for label, count in (("single walk", 1), (f"{workers} processes", workers)):
        results = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            result = verify_chain(workers=count)
            elapsed = time.perf_counter() - start
            assert result.ok, result.reason
            results.append(result.checked / elapsed)
        lines.append(f"verification ({label}): {result.checked:,} events, median of "
                     f"{args.rounds}: {statistics.median(results):,.0f} events/s")
        print(lines[-1], flush=True)
    return lines


def bulk_load_search_rows(total: int) -> None:
    from django.db import connection

    from audit.actions import ACTIONS
    from console.models import Tenant

    acme, _ = Tenant.objects.get_or_create(slug="acme", defaults={"name": "Acme"})
    globex, _ = Tenant.objects.get_or_create(slug="globex", defaults={"name": "Globex"})
    actions = sorted(ACTIONS)
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(seq), 0) FROM audit_auditevent")
        start = cursor.fetchone()[0] + 1
        span = max(1, total - start + 1)
        step = 90 * 86400.0 / span  # seconds between events: 90 days in all
        while start <= total:
            end = min(total, start + 200_000 - 1)
            cursor.execute(
                """
                INSERT INTO audit_auditevent (seq, event_id, occurred_at, actor_type, actor_id,
                    actor_label, action, tenant_id, object_type, object_id, trace_id,
                    policy_version, payload, prev_hash, hash)
                SELECT s, gen_random_uuid(),
                       now() - interval '90 days' + (s * %(step)s) * interval '1 second',
                       'user', (s %% 200)::text, 'user-' || (s %% 200),
                       (%(actions)s::text[])[1 + (s * 7) %% %(n)s],
                       CASE s %% 3 WHEN 0 THEN %(acme)s::uuid WHEN 1 THEN %(globex)s::uuid END,
                       (ARRAY['run', 'approval', 'credit', 'switch'])[1 + s %% 4],
                       'obj-' || (s / 4), 'trace-' || (s / 12), '3',
                       jsonb_build_object('i', s, 'note', 'bulk row'),
                       repeat('0', 64), md5(s::text) || md5((s + 1)::text)
                FROM generate_series(%(start)s::bigint, %(end)s::bigint) AS s
                """,
                {"step": step, "actions": actions, "n": len(actions), "acme": str(acme.pk),
                 "globex": str(globex.pk), "start": start, "end": end},
            )
            start = end + 1
        cursor.execute("ANALYZE audit_auditevent")


def bench_search(args) -> list[str]:
    from django.db import connection, reset_queries

    from audit.selectors import event_search, parse_filters

    bulk_load_search_rows(args.search_rows)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), min(occurred_at), max(occurred_at) FROM audit_auditevent")
        count, first, last = cursor.fetchone()
    middle = first + (last - first) / 2
    day = middle.replace(hour=0, minute=0, second=0, microsecond=0)
    old = first + (last - first) / 10
    mid_cursor = event_search(filters=parse_filters({}), limit=1).next_cursor  # shape only
    from audit.selectors import encode_cursor

    mid_cursor = encode_cursor(count // 2)
    queries = {
        "newest page, no filter": {},
        "action": {"action": "approval.decided"},
        "actor": {"actor": "user-17"},
        "tenant": {"tenant": "acme"},
        "object": {"object_type": "run", "object_id": "obj-123456"},
        "trace": {"trace_id": "trace-54321"},
        "time window (1 day, mid-range)": {"since": day.isoformat(),
                                           "until": (day + (last - first) / 90).isoformat()},
        "action + tenant": {"action": "credit.applied", "tenant": "globex"},
        "actor + 1 day window": {"actor": "user-17", "since": day.isoformat(),
                                 "until": (day + (last - first) / 90).isoformat()},
        "action + old 1 day window": {"action": "switch.engaged", "since": old.isoformat(),
                                      "until": (old + (last - first) / 90).isoformat()},
        "action, deep cursor": {"action": "tool.executed", "cursor": mid_cursor},
        "tenant, deep cursor": {"tenant": "globex", "cursor": mid_cursor},
    }
    lines = [f"search: {count:,} events, limit 50, {args.search_repeats} runs per query "
             "(event_search incl. ORM, after one warm-up)"]
    every = []
    for name, params in queries.items():
        params = dict(params)
        cursor = params.pop("cursor", None)
        filters = parse_filters(params)
        event_search(filters=filters, cursor=cursor)  # warm-up
        timings = []
        for _ in range(args.search_repeats):
            start = time.perf_counter()
            page = event_search(filters=filters, cursor=cursor)
            timings.append((time.perf_counter() - start) * 1000)
        reset_queries()
        every += timings
        lines.append(f"  {name:34s} p50 {statistics.median(timings):7.2f} ms  "
                     f"p95 {_percentile(timings, 95):7.2f} ms  ({len(page.events)} rows)")
        print(lines[-1], flush=True)
    lines.append(f"  {'ALL QUERIES':34s} p50 {statistics.median(every):7.2f} ms  "
                 f"p95 {_percentile(every, 95):7.2f} ms")
    print(lines[-1], flush=True)
    return lines


def main(argv: list[str]) -> int:
    if argv[:1] == ["--writer"]:
        writer(argv[1], int(argv[2]), argv[3], argv[4])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench audit --")
    parser.add_argument("--db", default="acp_bench_audit")
    parser.add_argument("--events-1", type=int, default=3000, help="events for the 1-writer run")
    parser.add_argument("--events-8", type=int, default=750, help="events per writer, 8 writers")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--verify-rows", type=int, default=300_000)
    parser.add_argument("--search-rows", type=int, default=1_000_000)
    parser.add_argument("--search-repeats", type=int, default=40)
    parser.add_argument("--keep", action="store_true", help="do not drop the bench database")
    parser.add_argument("--only", type=lambda v: set(v.split(",")),
                        default={"appends", "verify", "search"},
                        help="comma-separated subset of appends,verify,search")
    parser.add_argument("--verify-workers", type=int, default=None,
                        help="processes for the parallel verification (default: CPUs + 1, "
                             "as verify_chain picks)")
    args = parser.parse_args(argv)
    import psycopg

    print("machine:", machine(), flush=True)
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{args.db}"')
    try:
        _setup_django(args.db)
        from django.core.management import call_command
        from django.db import connection

        call_command("migrate", verbosity=0)
        with connection.cursor() as cursor:
            cursor.execute("CREATE TABLE bench_plain (LIKE audit_auditevent INCLUDING ALL)")
            cursor.execute("ALTER TABLE bench_plain ALTER COLUMN seq "
                           "ADD GENERATED ALWAYS AS IDENTITY")
            cursor.execute("CREATE TABLE bench_bare (id bigserial PRIMARY KEY, v int)")
        if "appends" in args.only:
            bench_appends(args.db, args)
        if "verify" in args.only:
            bench_verify(args)
        if "search" in args.only:
            bench_search(args)
        connection.close()
    finally:
        if not args.keep:
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
