"""The restricted-role PostgreSQL deployment: set up and check the app role's grants.

Triggers alone do not make the audit table append-only on PostgreSQL: pgtrigger's
``Protect`` is skipped by any session that sets ``pgtrigger.ignore``, and the table's
owner (or a superuser) can ``ALTER TABLE ... DISABLE TRIGGER`` or set
``session_replication_role = replica``. So migrations run as an owner role and the web and
worker processes run as an app role that:

- holds only SELECT and INSERT on the audit table (no UPDATE, DELETE, TRUNCATE,
  REFERENCES or TRIGGER, not even on one column) -- the privilege check happens before any
  trigger, so ``pgtrigger.ignore`` does not help it;
- does not own the table and is not a member of the owner role (it cannot ``SET ROLE``
  to the owner, nor disable triggers);
- is not a superuser and has no CREATEROLE (which could grant itself the owner role);
- holds SELECT/INSERT/UPDATE/DELETE on the other tables (never TRUNCATE), SELECT only on
  ``django_migrations``, and USAGE/SELECT on the sequences.

Run ``manage.py audit_grants --app-role NAME`` as the owner after every ``migrate`` (new
tables need their grants) and ``--check`` in deployment health checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.db import connection

from audit.models import AuditEvent
from console.errors import InvalidInput

_ROLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
APP_TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"
READ_ONLY_TABLES = frozenset({"django_migrations"})
FORBIDDEN_ON_AUDIT = ("UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


def _q(name: str) -> str:
    return connection.ops.quote_name(name)


def _require_postgres() -> None:
    if connection.vendor != "postgresql":
        raise InvalidInput(
            "audit_grants applies to PostgreSQL only. On SQLite there are no roles: the "
            "raising triggers are the protection, and file access is the boundary."
        )


def _validate_role(role: str) -> None:
    if not _ROLE_RE.match(role):
        raise InvalidInput(f"{role!r} is not a plain PostgreSQL role name (letters, digits, _).")
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
        if cursor.fetchone() is None:
            raise InvalidInput(
                f"Role {role!r} does not exist. Create it first as a superuser, e.g. "
                f"CREATE ROLE {role} LOGIN PASSWORD '...'; then run this command again."
            )


def _schema_tables(cursor) -> tuple[list[str], list[str]]:
    cursor.execute(
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'S') ORDER BY c.relname"
    )
    rows = cursor.fetchall()
    return [name for name, kind in rows if kind in ("r", "p")], [n for n, k in rows if k == "S"]


def grants_apply(*, app_role: str) -> list[str]:
    """Grant the app role what it needs and nothing more; return the statements run."""
    _require_postgres()
    _validate_role(app_role)
    problems = [c for c in _role_checks(app_role) if not c.ok]
    if problems:
        raise InvalidInput(
            f"Role {app_role!r} cannot be made a restricted app role: "
            + "; ".join(f"{c.name} ({c.detail})" for c in problems)
        )
    audit_table = AuditEvent._meta.db_table
    role = _q(app_role)
    statements: list[str] = []
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database(), current_schema()")
        database, schema = cursor.fetchone()
        tables, sequences = _schema_tables(cursor)
        statements.append(f"GRANT CONNECT ON DATABASE {_q(database)} TO {role}")
        statements.append(f"GRANT USAGE ON SCHEMA {_q(schema)} TO {role}")
        for table in tables:
            statements.append(f"REVOKE ALL ON TABLE {_q(table)} FROM {role}")
            if table == audit_table:
                # PUBLIC grants would reach the app role too.
                statements.append(f"REVOKE ALL ON TABLE {_q(table)} FROM PUBLIC")
                statements.append(f"GRANT SELECT, INSERT ON TABLE {_q(table)} TO {role}")
            elif table in READ_ONLY_TABLES:
                statements.append(f"GRANT SELECT ON TABLE {_q(table)} TO {role}")
            else:
                statements.append(f"GRANT {APP_TABLE_PRIVILEGES} ON TABLE {_q(table)} TO {role}")
        for sequence in sequences:
            statements.append(f"GRANT USAGE, SELECT ON SEQUENCE {_q(sequence)} TO {role}")
        for statement in statements:
            cursor.execute(statement)
    return statements


def _role_checks(app_role: str) -> list[Check]:
    audit_table = AuditEvent._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT rolsuper, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = %s",
            [app_role],
        )
        superuser, createrole, bypassrls = cursor.fetchone()
        cursor.execute(
            "SELECT r.rolname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
            "WHERE c.oid = %s::regclass", [audit_table],
        )
        owner = cursor.fetchone()[0]
        cursor.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", [app_role, owner])
        member_of_owner = cursor.fetchone()[0]
    return [
        Check("app role is not a superuser", not superuser,
              "superusers bypass every privilege and can disable triggers"),
        Check("app role has no CREATEROLE", not createrole,
              "CREATEROLE can grant itself membership in the owner role"),
        Check("app role has no BYPASSRLS", not bypassrls, "not needed by the app"),
        Check(f"app role is not the owner of {audit_table} nor a member of its owner "
              f"({owner})", app_role != owner and not member_of_owner,
              "the owner can ALTER TABLE ... DISABLE TRIGGER; run the app as another role"),
    ]


def grants_check(*, app_role: str) -> list[Check]:
    """Every condition of the restricted deployment, each with a pass/fail."""
    _require_postgres()
    _validate_role(app_role)
    audit_table = AuditEvent._meta.db_table
    checks = _role_checks(app_role)
    with connection.cursor() as cursor:
        for privilege in ("SELECT", "INSERT"):
            cursor.execute("SELECT has_table_privilege(%s, %s, %s)",
                           [app_role, audit_table, privilege])
            checks.append(Check(f"app role may {privilege} on {audit_table}", cursor.fetchone()[0],
                                "the app must be able to append and read events"))
        for privilege in FORBIDDEN_ON_AUDIT:
            if privilege in ("UPDATE", "REFERENCES"):
                # A grant on a single column counts too.
                cursor.execute("SELECT has_any_column_privilege(%s, %s, %s)",
                               [app_role, audit_table, privilege])
            else:
                cursor.execute("SELECT has_table_privilege(%s, %s, %s)",
                               [app_role, audit_table, privilege])
            checks.append(Check(f"app role may NOT {privilege} on {audit_table}",
                                not cursor.fetchone()[0],
                                f"REVOKE {privilege} ON {audit_table} FROM {app_role} (and PUBLIC)"))
        cursor.execute(
            "SELECT t.tgname, t.tgenabled FROM pg_trigger t "
            "WHERE t.tgrelid = %s::regclass AND NOT t.tgisinternal", [audit_table]
        )
        triggers = dict(cursor.fetchall())
        for name in ("audit_no_update", "audit_no_delete", "audit_no_truncate"):
            found = [(tg, state) for tg, state in triggers.items() if name in tg]
            enabled = bool(found) and all(state != "D" for _, state in found)
            checks.append(Check(f"trigger {name} exists and is enabled", enabled,
                                "run `manage.py migrate audit` / ALTER TABLE ... ENABLE TRIGGER"))
        cursor.execute(
            "SELECT t.tgenabled FROM pg_trigger t WHERE t.tgrelid = 'audit_stage'::regclass "
            "AND t.tgname = 'audit_chain_at_commit'"
        )
        state = cursor.fetchone()
        checks.append(Check("trigger audit_chain_at_commit (chains staged events at COMMIT) "
                            "exists and is enabled", state is not None and state[0] != "D",
                            "run `manage.py migrate audit` / ALTER TABLE audit_stage ENABLE "
                            "TRIGGER audit_chain_at_commit"))
        cursor.execute("SELECT has_parameter_privilege(%s, 'session_replication_role', 'SET')",
                       [app_role])
        checks.append(Check("app role cannot SET session_replication_role (skips triggers)",
                            not cursor.fetchone()[0],
                            f"REVOKE SET ON PARAMETER session_replication_role FROM {app_role}"))
        cursor.execute("SELECT has_schema_privilege(%s, current_schema(), 'CREATE')", [app_role])
        checks.append(Check("app role cannot CREATE in the schema", not cursor.fetchone()[0],
                            "REVOKE CREATE ON SCHEMA public FROM PUBLIC (PostgreSQL < 15 default)"))
        tables, sequences = _schema_tables(cursor)
        missing = []
        for table in tables:
            if table == audit_table:
                continue
            needed = ("SELECT",) if table in READ_ONLY_TABLES else ("SELECT", "INSERT", "UPDATE",
                                                                    "DELETE")
            for privilege in needed:
                cursor.execute("SELECT has_table_privilege(%s, %s, %s)",
                               [app_role, table, privilege])
                if not cursor.fetchone()[0]:
                    missing.append(f"{privilege} on {table}")
        for sequence in sequences:
            cursor.execute("SELECT has_sequence_privilege(%s, %s, 'USAGE')", [app_role, sequence])
            if not cursor.fetchone()[0]:
                missing.append(f"USAGE on sequence {sequence}")
        checks.append(Check("app role has what the app needs on the other tables and sequences",
                            not missing,
                            ("missing: " + ", ".join(missing[:10])
                             + (" ..." if len(missing) > 10 else "")
                             + " -- run `manage.py audit_grants --app-role ROLE` after migrate")
                            if missing else ""))
    return checks
