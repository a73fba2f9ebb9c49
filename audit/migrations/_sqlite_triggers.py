"""SQLite triggers that make the audit table append-only (created by migration 0002; put
back by ``restore`` after a migration that rebuilds the table: 0004, 0006)."""

NAMES = ("audit_no_update", "audit_no_delete")
CREATE = (
    """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit_auditevent
       BEGIN SELECT RAISE(ABORT, 'audit log is append-only: UPDATE refused'); END;""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit_auditevent
       BEGIN SELECT RAISE(ABORT, 'audit log is append-only: DELETE refused'); END;""",
)


def restore(apps, schema_editor):
    """SQLite alters a column by rebuilding the table, which drops its triggers: put the
    append-only triggers back (no-op elsewhere). A migration runs it after its AlterField
    and, reversed, after the AlterField's reversal."""
    if schema_editor.connection.vendor != "sqlite":
        return
    for sql in CREATE:
        schema_editor.execute(sql)
