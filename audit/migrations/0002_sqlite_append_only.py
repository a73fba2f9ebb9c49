"""On SQLite, triggers that refuse UPDATE and DELETE on the audit table.

SQLite has no TRUNCATE; its ``DELETE FROM`` without WHERE is refused by the same DELETE
trigger (a table with a DELETE trigger never takes the truncate shortcut). On PostgreSQL
the pgtrigger triggers of 0001 apply instead.
"""

from django.db import migrations

from audit.migrations._sqlite_triggers import CREATE, NAMES


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    for sql in CREATE:
        schema_editor.execute(sql)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    for name in NAMES:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
