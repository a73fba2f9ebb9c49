from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError

from audit.services import Actor
from console.services import token_issue


class Command(BaseCommand):
    help = "Issue a new API token for USERNAME. The token is printed once, on the last line."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="cli", help="a label for the token")

    def handle(self, *args, username, name, **options):
        user = User.objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}. Run `manage.py seed_demo` or "
                               "create the user first.")
        if not user.is_active:
            raise CommandError(f"User {username!r} is disabled; enable it before issuing a token.")
        token, plaintext = token_issue(actor=Actor.system("issue_token"), user=user, name=name)
        self.stderr.write(f"Issued token {token.prefix} for {username}. Store it now: it is "
                          "not shown again.")
        self.stdout.write(plaintext)
