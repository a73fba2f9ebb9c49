"""``manage.py audit_checkpoint take|verify``: signed checkpoints kept out of the database."""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from audit.checkpoints import CheckpointError, checkpoint_path, checkpoint_take, checkpoint_verify
from audit.services import Actor


class Command(BaseCommand):
    help = ("take: verify the chain since the last checkpoint, then sign and export the head. "
            "verify: check every exported checkpoint against the database (exit 1 on failure).")

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["take", "verify"])
        parser.add_argument("--file", type=Path, default=None,
                            help="checkpoint file to verify (default: the configured one, or a "
                                 "copy fetched from where the webhook delivered them)")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, action, file, **options):
        try:
            if action == "take":
                record = checkpoint_take(actor=Actor.system("cli:audit_checkpoint"))
                if options["json"]:
                    self.stdout.write(json.dumps(record))
                else:
                    self.stdout.write(f"checkpoint seq={record['seq']} hash={record['hash']} "
                                      f"-> {checkpoint_path()} (webhook: {record['webhook']})")
                return
            report = checkpoint_verify(path=file)
        except CheckpointError as exc:
            raise CommandError(exc.message, returncode=1) from None
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict()))
        elif report.ok:
            self.stdout.write(f"OK: {report.checkpoints} checkpoints agree with the database; "
                              f"chain verified ({report.chain['checked']} events).")
        if not report.ok:
            raise CommandError("audit checkpoints FAILED:\n  " + "\n  ".join(report.problems),
                               returncode=1)
