"""A writer process for the concurrency test: ``python -m tests.audit._writer ID N GO_FILE``.

Waits for GO_FILE to exist (so all writers start together), then appends N events, each in
its own transaction, through the one write function.
"""

import os
import sys
import time


def main() -> None:
    writer_id, count, go_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings_test")
    import django

    django.setup()
    from django.db import connection, transaction

    from audit.services import Actor, audit_record

    connection.ensure_connection()
    open(f"{go_file}.ready-{writer_id}", "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(go_file):
        if time.monotonic() > deadline:
            sys.exit("never told to start")
        time.sleep(0.01)
    for index in range(count):
        with transaction.atomic():
            audit_record(actor=Actor.system(f"writer-{writer_id}"), action="run.step",
                         object_type="run", object_id=f"w{writer_id}-{index}",
                         payload={"writer": writer_id, "i": index})
    print("done", writer_id)


if __name__ == "__main__":
    main()
