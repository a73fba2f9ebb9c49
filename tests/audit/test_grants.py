"""The restricted-role deployment, proven by connecting as such a role (PostgreSQL only).

A real LOGIN role is created in the test database's cluster, `audit_grants` sets up its
privileges, and a direct psycopg connection as that role tries everything a compromised
app could: UPDATE/DELETE/TRUNCATE, `SET pgtrigger.ignore`, disabling the triggers,
`session_replication_role`, taking the owner role.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from audit.models import AuditEvent
from audit.services import audit_fields, stage_params, stage_rows_sql
from tests.audit.conftest import on_postgres, write_events

pytestmark = [on_postgres, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
PASSWORD = "app-role-test-password"


@pytest.fixture
def app_role():
    name = f"acp_test_app_{uuid.uuid4().hex[:10]}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {name} LOGIN PASSWORD %s", [PASSWORD])
    yield name
    with connection.cursor() as cursor:
        cursor.execute(f"DROP OWNED BY {name}")  # its grants in this database
        cursor.execute(f"DROP ROLE {name}")


def _connect(role: str) -> psycopg.Connection:
    settings_dict = connection.settings_dict
    return psycopg.connect(
        host=settings_dict.get("HOST") or "127.0.0.1", port=settings_dict.get("PORT") or 5432,
        dbname=settings_dict["NAME"], user=role, password=PASSWORD, autocommit=True,
    )


def _refused(conn: psycopg.Connection, sql: str, params=()) -> str:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    return str(info.value)


def test_check_fails_before_setup_and_passes_after(app_role, capsys):
    with pytest.raises(CommandError, match="check\\(s\\) failed"):
        call_command("audit_grants", "--app-role", app_role, "--check")
    assert "FAIL app role may SELECT on audit_auditevent" in capsys.readouterr().out
    call_command("audit_grants", "--app-role", app_role)
    out = capsys.readouterr().out
    assert "GRANT SELECT, INSERT ON TABLE \"audit_auditevent\"" in out
    assert "FAIL" not in out
    call_command("audit_grants", "--app-role", app_role, "--check")
    assert "is a restricted app role" in capsys.readouterr().out


def test_app_role_can_append_and_read_but_never_change_or_remove(app_role):
    write_events(3)
    call_command("audit_grants", "--app-role", app_role)
    before = list(AuditEvent.objects.order_by("seq").values_list("seq", "action", "hash"))
    with _connect(app_role) as conn:
        assert conn.execute("SELECT count(*) FROM audit_auditevent").fetchone()[0] == 3
        # INSERT is allowed (this row is not chained: verification would flag it)
        conn.execute(
            "INSERT INTO audit_auditevent (seq, event_id, occurred_at, actor_type, actor_id, "
            "actor_label, action, object_type, object_id, trace_id, policy_version, payload, "
            "prev_hash, hash) VALUES (4, gen_random_uuid(), now(), 'system', '', 'app', "
            "'run.step', '', '', '', '', '{}', %s, %s)", [before[-1][2], "a" * 64])
        assert "permission denied" in _refused(conn, "UPDATE audit_auditevent SET action = 'x'")
        assert "permission denied" in _refused(conn, "DELETE FROM audit_auditevent WHERE seq = 1")
        assert "permission denied" in _refused(conn, "TRUNCATE audit_auditevent")

        # pgtrigger's escape hatch: any session may set it, but privileges come first
        conn.execute("SET pgtrigger.ignore = 'audit.AuditEvent:audit_no_update,"
                     "audit.AuditEvent:audit_no_delete'")
        assert "permission denied" in _refused(conn, "UPDATE audit_auditevent SET action = 'x'")
        assert "permission denied" in _refused(conn, "DELETE FROM audit_auditevent")

        assert "must be owner" in _refused(conn, "ALTER TABLE audit_auditevent DISABLE TRIGGER ALL")
        trigger = conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'audit_auditevent'::regclass "
            "AND tgname LIKE %s", ["%audit_no_update%"]).fetchone()[0]
        assert "must be owner" in _refused(
            conn, f"ALTER TABLE audit_auditevent DISABLE TRIGGER {trigger}")
        assert "permission denied" in _refused(conn, "SET session_replication_role = replica")
        owner = conn.execute("SELECT tableowner FROM pg_tables "
                             "WHERE tablename = 'audit_auditevent'").fetchone()[0]
        assert "permission denied" in _refused(conn, f'SET ROLE "{owner}"')
        assert "must be owner" in _refused(conn, "DROP TABLE audit_auditevent")
        # the real append path works as the app role: staged, chained by the trigger at
        # COMMIT; and the app role cannot switch that trigger off
        fields = audit_fields(actor=None, action="run.step", payload={"as": "app role"})
        with conn.transaction():
            conn.execute(*stage_rows_sql([stage_params(fields)]))
        assert conn.execute("SELECT seq FROM audit_auditevent WHERE event_id = %s",
                            [fields["event_id"]]).fetchone()[0] == 5
        assert "must be owner" in _refused(
            conn, "ALTER TABLE audit_stage DISABLE TRIGGER audit_chain_at_commit")
        # the app keeps working on its other tables
        conn.execute("SELECT count(*) FROM console_tenant")
    after = list(AuditEvent.objects.filter(seq__lte=3).order_by("seq")
                 .values_list("seq", "action", "hash"))
    assert after == before


def test_a_superuser_app_role_is_refused(capsys):
    name = f"acp_test_su_{uuid.uuid4().hex[:8]}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {name} SUPERUSER")
    try:
        with pytest.raises(CommandError, match=r"cannot be made a restricted app role.*superuser"):
            call_command("audit_grants", "--app-role", name)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP ROLE {name}")


def test_unknown_or_malformed_role_is_a_clear_error():
    with pytest.raises(CommandError, match=r"does not exist\. Create it first"):
        call_command("audit_grants", "--app-role", "no_such_role_here")
    with pytest.raises(CommandError, match="not a plain PostgreSQL role name"):
        call_command("audit_grants", "--app-role", "x; DROP TABLE y")


def test_an_extra_update_grant_is_reported(app_role, capsys):
    call_command("audit_grants", "--app-role", app_role)
    with connection.cursor() as cursor:
        cursor.execute(f"GRANT UPDATE (payload) ON audit_auditevent TO {app_role}")
    with pytest.raises(CommandError):
        call_command("audit_grants", "--app-role", app_role, "--check")
    assert "FAIL app role may NOT UPDATE on audit_auditevent" in capsys.readouterr().out
