"""``manage.py credentials_reencrypt``: re-encrypt every stored downstream credential with
the first key of CREDENTIALS_KEYS. Run it after putting a new key in front; then the old
key can be dropped."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audit.services import Actor
from integrations.crypto import CredentialUnreadable
from integrations.services import credentials_reencrypt


class Command(BaseCommand):
    help = "Re-encrypt every stored credential with the newest CREDENTIALS_KEYS key."

    def handle(self, *args, **options):
        try:
            count = credentials_reencrypt(actor=Actor.system("credentials_reencrypt"))
        except CredentialUnreadable as exc:
            raise CommandError(f"{exc}; nothing was changed.") from None
        self.stdout.write(f"re-encrypted {count} credential(s) with the newest key")
