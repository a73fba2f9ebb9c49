"""``manage.py audit_verify``: recompute the hash chain; exit 1 on the first bad event."""

from __future__ import annotations

import getpass
import json

from django.core.management.base import BaseCommand, CommandError

from audit.services import Actor, chain_verify


class Command(BaseCommand):
    help = ("Recompute the audit hash chain. Exit status 0 only when it verifies; otherwise "
            "print the first bad sequence number and exit 1.")

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
        parser.add_argument(
            "--no-record", action="store_true",
            help="do not append an audit.verified event (e.g. against a read-only replica)",
        )

    def handle(self, *args, **options):
        try:
            who = getpass.getuser()
        except Exception:
            who = "unknown"
        actor = Actor.system(f"cli:audit_verify ({who})"[:150])
        result = chain_verify(actor=actor, record=not options["no_record"])
        if options["json"]:
            self.stdout.write(json.dumps({"ok": result.ok, "checked": result.checked,
                                          "first_bad_seq": result.first_bad_seq,
                                          "reason": result.reason}))
        elif result.ok:
            self.stdout.write(f"OK: {result.checked} events verified (head #{result.head_seq}).")
        if not result.ok:
            raise CommandError(
                f"audit chain BROKEN at seq {result.first_bad_seq}: {result.reason} "
                f"({result.checked} events verified before it)",
                returncode=1,
            )
