"""Hand-written SQL for the per-step writes of the step loop (the hot path).

The Django ORM spends 0.2-0.5 ms of CPU compiling each INSERT/UPDATE; a step writes three
rows (the run fenced by its lease, the step, the invocation's outcome), every step. This
module writes the same rows with the same column values, prepared by the models' own
fields (``Field.get_db_prep_save``: JSON, datetimes, decimals exactly as the ORM stores
them), through ``connection.cursor()``:

- PostgreSQL: one statement (data-modifying CTEs). The step INSERT and the invocation
  UPDATE select from the fenced run UPDATE, so when the lease is gone nothing is written.
- SQLite (and any other backend): the same three statements one after the other; the
  caller's transaction makes them atomic and the fence is the UPDATE's row count.

Only what the fast path understands is written here: plain values, and ``F(col) + value``
increments of the column itself. Anything else (another expression) returns None and the
caller uses the ORM. The column lists are read once per process from the models.
"""

# S608: the SQL text is built only from model metadata (table and column names, quoted by
# the backend) and placeholders; every value is a parameter.
# ruff: noqa: S608

from __future__ import annotations

import json
import uuid
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import F, Value
from django.db.models.expressions import CombinedExpression
from django.utils import timezone

from agents.models import AgentRun, RunStatus, Step, ToolInvocation
from audit.services import STAGE_COLUMNS, chain_events_json, stage_params
from console.db_postgresql import execute as pg_execute
from console.db_postgresql.base import FLUSH_BARRIER

_STAGE_COLUMNS = ", ".join(STAGE_COLUMNS)
# one VALUES row of audit_stage, typed (VALUES columns are not typed by the target table)
_STAGE_ROW = ", ".join(
    "%s::uuid" if c in ("event_id", "tenant_id") else "%s::jsonb" if c == "payload" else "%s::text"
    for c in STAGE_COLUMNS
)

class Json(str):
    """A JSON document already encoded (the text is stored as is: no second encoding)."""


@cache
def _fields(model) -> dict[str, Any]:
    """name -> field and attname -> field of the model's concrete columns."""
    out: dict[str, Any] = {}
    for f in model._meta.concrete_fields:
        out[f.name] = f
        out[f.attname] = f
    return out


_QUOTED: dict[tuple[str, str], str] = {}


def _db():
    """The default connection itself: ``django.db.connection`` is a proxy that looks the
    connection up in a context-local on every attribute access (~3 us, ~100 per step)."""
    return connections[DEFAULT_DB_ALIAS]


def _quote(name: str, conn=None) -> str:
    conn = conn or _db()
    key = (conn.vendor, name)
    quoted = _QUOTED.get(key)
    if quoted is None:
        quoted = _QUOTED[key] = conn.ops.quote_name(name)
    return quoted


# Per field kind, the value types for which ``get_db_prep_save`` returns the value itself
# on PostgreSQL (tests/agents/test_hot_path.py checks every field of the hot models against
# the ORM); None is passed through for every kind listed.
_INT = (int,)
_IDENTITY_TYPES: dict[str, tuple[type, ...]] = {
    "CharField": (str,), "TextField": (str,), "BooleanField": (bool,), "FloatField": (float,),
    "DecimalField": (Decimal,), "UUIDField": (uuid.UUID,), "DateTimeField": (datetime,),
    "AutoField": _INT, "BigAutoField": _INT, "BigIntegerField": _INT, "IntegerField": _INT,
    "PositiveIntegerField": _INT, "PositiveBigIntegerField": _INT,
    "PositiveSmallIntegerField": _INT, "SmallIntegerField": _INT,
}


@cache
def _identity_types(field) -> tuple[type, ...] | None:
    target = field.target_field if field.is_relation else field
    return _IDENTITY_TYPES.get(target.get_internal_type())


@cache
def _internal_type(field) -> str:
    return (field.target_field if field.is_relation else field).get_internal_type()


def _prep(field, value, conn):
    """``field.get_db_prep_save(value, conn)``, skipped where it is the identity (integers:
    only the backend's sized wrapper, as the ORM applies it)."""
    if conn.vendor == "postgresql":
        kinds = _identity_types(field)
        if kinds is not None:
            if value is None:
                return value
            kind = type(value)
            if kind in kinds and (kind is not datetime or value.tzinfo is not None):
                if kinds is _INT:
                    sized = conn.ops.integerfield_type_map.get(_internal_type(field))
                    return value if sized is None else sized(value)
                return value
    return field.get_db_prep_save(value, conn)


def _param(field, value, conn=None) -> tuple[str, Any]:
    """The placeholder and the parameter for ``value`` in ``field``'s column."""
    conn = conn or _db()
    if isinstance(value, Json):
        if conn.vendor == "postgresql":
            return "%s::jsonb", str(value)
        return "%s", str(value)
    return "%s", _prep(field, value, conn)


def _set_clause(model, values: dict[str, Any]) -> tuple[str, list[Any]] | None:
    """``col = %s, col = col + %s, ...`` for plain values and self-increments; None for
    anything else (the caller falls back to the ORM)."""
    conn = _db()
    fields = _fields(model)
    parts: list[str] = []
    params: list[Any] = []
    for name, value in values.items():
        field = fields.get(name)
        if field is None:
            return None
        column = _quote(field.column, conn)
        if isinstance(value, CombinedExpression):
            lhs, rhs = value.lhs, value.rhs
            if not (
                value.connector == "+"
                and isinstance(lhs, F)
                and lhs.name == name
                and isinstance(rhs, Value)
                and not hasattr(rhs.value, "resolve_expression")
            ):
                return None
            parts.append(f"{column} = {column} + %s")
            params.append(_prep(field, rhs.value, conn))
            continue
        if hasattr(value, "resolve_expression"):
            return None
        holder, param = _param(field, value, conn)
        parts.append(f"{column} = {holder}")
        params.append(param)
    return ", ".join(parts), params


@cache
def _step_columns() -> tuple[tuple[Any, ...], ...]:
    return tuple(f for f in Step._meta.concrete_fields if not f.primary_key)


def _step_values(step: dict[str, Any], *, run_pk: int, seq: int, trace_id: str):
    """Columns, placeholders and parameters of the step row (defaults as the model's)."""
    values = dict(step)
    invocation = values.pop("invocation", None)
    values["invocation_id"] = getattr(invocation, "pk", invocation)
    values.update(run_id=run_pk, seq=seq, trace_id=trace_id)
    conn = _db()
    columns, holders, params = [], [], []
    for field in _step_columns():
        if field.attname in values:
            value = values[field.attname]
        elif field.name in values:
            value = values[field.name]
        else:
            value = field.get_default()
        if hasattr(value, "resolve_expression"):
            return None
        holder, param = _param(field, value, conn)
        columns.append(_quote(field.column, conn))
        holders.append(holder)
        params.append(param)
    return columns, holders, params


def step_write(
    *,
    run_pk: int,
    lease: str,
    run_fields: dict[str, Any],
    step: dict[str, Any] | None,
    seq: int,
    trace_id: str,
    invocation: tuple[Any, dict[str, Any]] | None = None,
    audit_events: list[dict[str, Any]] | None = None,
    async_commit: bool = False,
    spend: tuple[int, Any] | None = None,
    new_invocation: ToolInvocation | None = None,
) -> tuple[bool, int | None] | None:
    """Inside the caller's transaction: the fenced run UPDATE, the step INSERT and the
    invocation outcome UPDATE. Returns (fenced ok, step id), or None when a value needs
    the ORM (nothing was written then).

    ``audit_events`` (PostgreSQL only; fields prepared by ``audit.services.audit_fields``)
    are staged in the same statement, also only when the fence holds: called outside a
    transaction, the step, its run, its invocation and its audit events are then one
    autocommitted statement -- one round trip, one commit, at which the audit trigger
    chains the events (audit migration 0003). ``spend`` (PostgreSQL): (day's spend row,
    delta) -- ``spend_adjust`` in the same statement, when the fence holds. ``async_commit`` (PostgreSQL) sets
    ``synchronous_commit = off`` for the transaction the statement is in: only for writes
    whose loss in a server crash recovery already handles (``runtime._commit``). Otherwise
    a statement that appends to the chain commits without waiting for the flush too, and
    a second tiny transaction waits for it (the commit barrier of console.db_postgresql):
    the chain lock is not held through the fsync, so concurrent writers' flushes overlap;
    the caller still returns only once the step is durable.

    ``new_invocation``: a pure read's invocation built by ``invocation_new``, never
    inserted, its outcome set (``invocation_finish``): INSERTed with the step. The run
    UPDATE's fence then also requires that the step has no invocation row yet; when it has
    one, nothing is written and StepHasInvocation is raised."""
    conn = _db()
    if (audit_events or spend) and conn.vendor != "postgresql":
        raise ValueError("audit events and spend join the step statement on PostgreSQL only")
    run_set = _set_clause(AgentRun, run_fields)
    if run_set is None:
        return None
    step_cols = None
    if step is not None:
        step_cols = _step_values(step, run_pk=run_pk, seq=seq, trace_id=trace_id)
        if step_cols is None:
            return None
    if invocation is not None and new_invocation is not None:
        raise ValueError("a step either updates its invocation or inserts it, not both")
    inv_row = None
    if new_invocation is not None:
        inv_row = _invocation_row(new_invocation, conn)
    inv_set = None
    if invocation is not None:
        inv_set = _set_clause(ToolInvocation, invocation[1])
        if inv_set is None:
            return None
    run_table = _quote(AgentRun._meta.db_table, conn)
    fence = (f"WHERE {_quote('id', conn)} = %s AND {_quote('lease_token', conn)} = %s "
             f"AND {_quote('status', conn)} = %s")
    fence_params = [run_pk, lease, RunStatus.RUNNING.value]
    inv_table = _quote(ToolInvocation._meta.db_table, conn)
    unrecorded = f"NOT EXISTS (SELECT 1 FROM {inv_table} WHERE run_id = %s AND step_seq = %s)"
    if inv_row is not None:
        fence += f" AND {unrecorded}"
        fence_params += [run_pk, new_invocation.step_seq]
    step_table = _quote(Step._meta.db_table, conn)
    inv_pk_field = _fields(ToolInvocation)["id"]
    if conn.vendor == "postgresql":
        sql = [f"WITH r AS (UPDATE {run_table} SET {run_set[0]} {fence} RETURNING id)"]
        params: list[Any] = [*run_set[1], *fence_params]
        # each INSERT selects from r: no row when the fence failed
        if step_cols is not None:
            sql.append(_insert_cte("s", step_table, step_cols, returning=True))
            params += step_cols[2]
        if inv_row is not None:
            sql.append(_insert_cte("n", inv_table, inv_row))
            params += inv_row[2]
        if inv_set is not None:
            sql.append(
                f", i AS (UPDATE {inv_table} SET {inv_set[0]} WHERE id = %s "
                "AND EXISTS (SELECT 1 FROM r) RETURNING id)"
            )
            params += [*inv_set[1], _prep(inv_pk_field, invocation[0], conn)]
        if spend is not None:
            sql.append(
                ", m AS (UPDATE agents_tenantspend SET spent_usd = LEAST(spent_usd + %s, "
                "cap_usd) WHERE id = %s AND EXISTS (SELECT 1 FROM r) RETURNING id)"
            )
            params += [spend[1], spend[0]]
        chain_now = bool(audit_events) and not conn.in_atomic_block
        if audit_events and not chain_now:
            # inside a caller's transaction: staged, chained by the COMMIT trigger. ONE
            # insert, rows in the order given (data-modifying CTEs run in no defined order;
            # the chain must follow the events' order)
            rows = ", ".join(f"({_STAGE_ROW}, {n})" for n in range(len(audit_events)))
            sql.append(
                f", a AS (INSERT INTO audit_stage ({_STAGE_COLUMNS}) "
                f"SELECT {_STAGE_COLUMNS} FROM (VALUES {rows}) AS v({_STAGE_COLUMNS}, n) "
                "WHERE EXISTS (SELECT 1 FROM r) ORDER BY n)"
            )
            for fields in audit_events:
                params += stage_params(fields)
        barrier = chain_now and not async_commit
        sql.append(
            "SELECT (SELECT count(*) FROM r), "
            + ("(SELECT id FROM s)" if step_cols is not None else "NULL")
            + (", (SELECT count(*) FROM i)" if inv_set is not None else "")
            # the statement's snapshot: a row that existed before it (the fence's reason)
            + (f", {unrecorded}" if inv_row is not None else "")
            + (", set_config('synchronous_commit', 'off', true)" if async_commit or barrier else "")
            # the statement is its own transaction: append the events at its end, in
            # order, only when the fence held (audit migration 0003)
            + (", (SELECT audit_chain_append_many(%s::jsonb) FROM r)" if chain_now else "")
        )
        if inv_row is not None:
            params += [run_pk, new_invocation.step_seq]
        if chain_now:
            params.append(chain_events_json(audit_events))
        with pg_execute(" ".join(sql), params) as pg:
            row = pg.fetchone()
        if barrier:
            # its own transaction, synchronous: returns once the WAL is flushed up to its
            # commit record, which lies after the step's
            with pg_execute(FLUSH_BARRIER, []):
                pass
        if inv_row is not None and not row[2]:  # count(r), step id, then this
            raise StepHasInvocation(f"step {new_invocation.step_seq} of run {run_pk} has an invocation")
        if inv_row is not None and row[0]:
            _mark_saved(new_invocation, conn)
        return bool(row[0]), row[1]
    with conn.cursor() as cursor:
        if inv_row is not None:
            cursor.execute(f"SELECT {unrecorded}", [run_pk, new_invocation.step_seq])
            if not cursor.fetchone()[0]:
                raise StepHasInvocation(f"step {new_invocation.step_seq} of run {run_pk} has one")
        cursor.execute(f"UPDATE {run_table} SET {run_set[0]} {fence}", [*run_set[1], *fence_params])
        if cursor.rowcount != 1:
            return False, None
        if inv_row is not None:
            cols, holders, values = inv_row
            cursor.execute(
                f"INSERT INTO {inv_table} ({', '.join(cols)}) VALUES ({', '.join(holders)})", values
            )
            _mark_saved(new_invocation, conn)
        step_id = None
        if step_cols is not None:
            cols, holders, values = step_cols
            cursor.execute(
                f"INSERT INTO {step_table} ({', '.join(cols)}) VALUES ({', '.join(holders)})", values
            )
            step_id = cursor.lastrowid
        if inv_set is not None:
            cursor.execute(
                f"UPDATE {inv_table} SET {inv_set[0]} WHERE id = %s",
                [*inv_set[1], inv_pk_field.get_db_prep_save(invocation[0], connection)],
            )
        return True, step_id


def _insert_cte(name: str, table: str, row: tuple[list[str], list[str], list[Any]], *,
                returning: bool = False) -> str:
    """``, name AS (INSERT INTO table (...) SELECT ... FROM r [RETURNING id])``: the row
    is inserted only when the fenced run UPDATE ``r`` matched."""
    cols, holders, _ = row
    return (f", {name} AS (INSERT INTO {table} ({', '.join(cols)}) SELECT {', '.join(holders)} FROM r"
            + (" RETURNING id)" if returning else ")"))


class StepHasInvocation(Exception):
    """The step already has an invocation row (``step_write`` with ``new_invocation``, or
    ``invocation_record``): nothing was written; the caller takes the general path."""


def _invocation_row(invocation: ToolInvocation, conn) -> tuple[list[str], list[str], list[Any]]:
    """Columns, placeholders and parameters of ``invocation`` as an INSERT row."""
    columns, holders, params = [], [], []
    for field in ToolInvocation._meta.concrete_fields:
        holder, param = _param(field, getattr(invocation, field.attname), conn)
        columns.append(_quote(field.column, conn))
        holders.append(holder)
        params.append(param)
    return columns, holders, params


def invocation_new(**values: Any) -> ToolInvocation:
    """An invocation built as the ORM would (defaults applied, ``created_at`` set), not
    yet inserted: ``invocation_insert`` inserts it now; a pure read's goes into its step's
    statement instead (``step_write(new_invocation=...)``)."""
    invocation = ToolInvocation(**values)
    if invocation.created_at is None:
        invocation.created_at = timezone.now()
    return invocation


def invocation_insert(*, durable: bool = True, **values: Any) -> ToolInvocation | None:
    """INSERT one invocation unless (run, step) or its key exists already (then None): one
    statement, autocommitted outside a transaction, no savepoint needed inside one (a
    conflict is not an error). ``values`` as for ``ToolInvocation(**values)``.

    ``durable=False`` (PostgreSQL, outside a transaction): the commit does not wait for the
    WAL flush (a caller's own transaction is never made asynchronous)."""
    invocation = invocation_new(**values)
    return invocation if _insert_row(invocation, durable=durable) else None


def invocation_record(invocation: ToolInvocation) -> None:
    """Inside the caller's transaction: insert a pure read's invocation (built by
    ``invocation_new``, never inserted; its outcome set by ``invocation_finish``). Raises
    StepHasInvocation when the step has a row already."""
    if not _insert_row(invocation, durable=True):
        raise StepHasInvocation(f"step {invocation.step_seq} of run {invocation.run_id} has an invocation")


def invocation_finish(invocation: ToolInvocation, finish: dict[str, Any]) -> ToolInvocation:
    """The outcome columns (``broker.invocation_finish_fields``) set on an invocation not
    inserted yet; ``F("attempts") + n`` adds to its own value."""
    for name, value in finish.items():
        if isinstance(value, CombinedExpression):  # F("attempts") + n
            value = getattr(invocation, name) + value.rhs.value
        setattr(invocation, name, value)
    return invocation


def _insert_row(invocation: ToolInvocation, *, durable: bool) -> bool:
    conn = _db()
    columns, holders, params = _invocation_row(invocation, conn)
    sql = (
        f"INSERT INTO {_quote(ToolInvocation._meta.db_table, conn)} ({', '.join(columns)}) "
        f"VALUES ({', '.join(holders)}) ON CONFLICT DO NOTHING"
    )
    if conn.vendor == "postgresql":
        if not durable and not conn.in_atomic_block:
            # evaluated only for an inserted row; local to this statement's own transaction
            sql += " RETURNING set_config('synchronous_commit', 'off', true)"
        with pg_execute(sql, params) as cursor:
            inserted = cursor.rowcount == 1
    else:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            inserted = cursor.rowcount == 1
    if inserted:
        _mark_saved(invocation, conn)
    return inserted


def _mark_saved(invocation: ToolInvocation, conn) -> None:
    """As ``Model.save`` leaves an instance it inserted (the runtime tells an invocation
    not inserted yet by ``_state.adding``)."""
    invocation._state.adding = False
    invocation._state.db = conn.alias


def json_text(value: Any) -> Json:
    return Json(json.dumps(value, default=str))


__all__ = [
    "Json",
    "StepHasInvocation",
    "invocation_finish",
    "invocation_insert",
    "invocation_new",
    "invocation_record",
    "json_text",
    "step_write",
]


@cache
def _run_select() -> tuple[str, tuple[str, ...], tuple[Any, ...]]:
    fields = tuple(AgentRun._meta.concrete_fields)
    table = _quote(AgentRun._meta.db_table)
    columns = ", ".join(f"{table}.{_quote(f.column)}" for f in fields)
    sql = f"SELECT {columns} FROM {table} WHERE {table}.{_quote('id')} = %s"
    return sql, tuple(f.attname for f in fields), tuple(f.get_col(AgentRun._meta.db_table) for f in fields)


def run_fetch(pk: int) -> AgentRun | None:
    """``AgentRun.objects.get(pk=pk)`` (None when missing) without compiling a query: the
    run row re-read before every step. Values go through the same converters as the
    ORM's (backend and field ``from_db_value``)."""
    sql, names, cols = _run_select()
    with connection.cursor() as cursor:
        cursor.execute(sql, [pk])
        row = cursor.fetchone()
    if row is None:
        return None
    compiler = AgentRun.objects.none().query.get_compiler(connection=connection)
    converters = compiler.get_converters(cols)
    if converters:
        row = next(iter(compiler.apply_converters([row], converters)))
    return AgentRun.from_db(connection.alias, list(names), list(row))


@cache
def _switch_select() -> tuple[str, tuple[str, ...], tuple[Any, ...]]:
    from agents.models import KillSwitch

    fields = tuple(KillSwitch._meta.concrete_fields)
    table = _quote(KillSwitch._meta.db_table)
    columns = ", ".join(f"{table}.{_quote(f.column)}" for f in fields)
    sql = (f"SELECT {columns} FROM {table} WHERE {table}.{_quote('engaged')} "
           f"AND ({table}.{_quote('expires_at')} IS NULL OR {table}.{_quote('expires_at')} > %s)")
    return sql, tuple(f.attname for f in fields), tuple(f.get_col(KillSwitch._meta.db_table) for f in fields)


def switches_engaged(now) -> list:
    """Every engaged, unexpired switch -- the ORM query of ``services.switches_engaged``
    without compiling it (write tools read the switch table before every call)."""
    from agents.models import KillSwitch

    sql, names, cols = _switch_select()
    expires_at = _fields(KillSwitch)["expires_at"]
    with connection.cursor() as cursor:
        cursor.execute(sql, [expires_at.get_db_prep_value(now, connection)])
        rows = cursor.fetchall()
    if not rows:
        return []
    compiler = KillSwitch.objects.none().query.get_compiler(connection=connection)
    converters = compiler.get_converters(cols)
    if converters:
        rows = list(compiler.apply_converters(rows, converters))
    return [KillSwitch.from_db(connection.alias, list(names), list(row)) for row in rows]


def spend_add(*, spend_id: int, tenant_id: Any, day: Any, amount: Any) -> bool | None:
    """PostgreSQL: reserve ``amount`` on the day's spend row within its cap (the same
    conditional UPDATE as the ORM's); None on other backends (the caller uses the ORM)."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE agents_tenantspend SET spent_usd = spent_usd + %s WHERE id = %s AND tenant_id = %s "
            "AND day = %s AND spent_usd <= cap_usd - %s",
            [amount, spend_id, tenant_id, day, amount],
        )
        return cursor.rowcount == 1


def spend_adjust(*, spend_id: int, delta: Any) -> bool:
    """PostgreSQL: add ``delta`` to the day's spend, never beyond the cap; False on other
    backends (the caller uses the ORM)."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE agents_tenantspend SET spent_usd = LEAST(spent_usd + %s, cap_usd) WHERE id = %s",
            [delta, spend_id],
        )
    return True


def run_head(public_id: str) -> tuple[int, str, str, str] | None:
    """(pk, trace_id, status, agent slug) of the run ``public_id``: what a task execution
    reads before it claims the run. None when there is no such run (or the id is malformed)."""
    try:
        key = _fields(AgentRun)["public_id"].get_db_prep_save(public_id, connection)
    except Exception:  # ValidationError for a malformed id: no such run
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT r.id, r.trace_id, r.status, a.slug FROM agents_agentrun r "
            "JOIN agents_agent a ON a.id = r.agent_id WHERE r.public_id = %s",
            [key],
        )
        row = cursor.fetchone()
    return tuple(row) if row else None


def run_claim(*, run_pk: int, token: str, worker: str, now, expires) -> bool:
    """The lease's conditional UPDATE: only a queued or running run whose lease is free or
    expired is taken (one statement; the caller's transaction)."""
    f = _fields(AgentRun)
    at = f["updated_at"].get_db_prep_save(now, connection)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE agents_agentrun SET status = %s, lease_token = %s, lease_owner = %s, "
            "lease_expires_at = %s, attempts = attempts + 1, started_at = COALESCE(started_at, %s), "
            "updated_at = %s WHERE id = %s AND status IN (%s, %s) "
            "AND (lease_expires_at IS NULL OR lease_expires_at < %s)",
            [
                RunStatus.RUNNING.value,
                token,
                worker,
                f["lease_expires_at"].get_db_prep_save(expires, connection),
                at,
                at,
                run_pk,
                RunStatus.QUEUED.value,
                RunStatus.RUNNING.value,
                at,
            ],
        )
        return cursor.rowcount == 1
