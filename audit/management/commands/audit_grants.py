"""``manage.py audit_grants --app-role NAME [--check]``: the restricted-role deployment.

Run as the owner role (the one that ran ``migrate``) after every migration. ``--check``
changes nothing and exits 1 when any condition fails. See audit/grants.py and
docs/audit.md.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audit.grants import grants_apply, grants_check
from console.errors import DomainError


class Command(BaseCommand):
    help = ("Grant the app role only SELECT and INSERT on the audit table (and what the app "
            "needs elsewhere), or --check that the deployment is set up that way.")

    def add_arguments(self, parser):
        parser.add_argument("--app-role", required=True, help="the role web and workers use")
        parser.add_argument("--check", action="store_true", help="check only, change nothing")

    def handle(self, *args, app_role, check, **options):
        try:
            if not check:
                for statement in grants_apply(app_role=app_role):
                    self.stdout.write(statement)
            checks = grants_check(app_role=app_role)
        except DomainError as exc:
            raise CommandError(exc.message, returncode=2) from None
        failed = 0
        for item in checks:
            mark = "OK  " if item.ok else "FAIL"
            line = f"{mark} {item.name}"
            if not item.ok:
                failed += 1
                line += f"  -- {item.detail}"
            self.stdout.write(line)
        if failed:
            raise CommandError(f"{failed} check(s) failed for role {app_role!r}.", returncode=1)
        self.stdout.write(f"Role {app_role!r} is a restricted app role: it can append to and "
                          "read the audit log, and cannot change or remove a row.")
