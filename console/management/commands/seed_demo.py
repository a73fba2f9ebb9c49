from django.core.management.base import BaseCommand
from django.db import transaction

from agents.knowledge.seed import seed_knowledge
from agents.seed import seed_runtime
from approvals.seed import seed_queues
from audit.services import Actor, audit_record
from console.seed import PERSONAS, SERVICE_ACCOUNTS, demo_password, seed_identity
from support.seed import seed_support_data


class Command(BaseCommand):
    help = "Create the demo tenants, personas, queues, policy and support data. Safe to run twice."

    def handle(self, *args, **options):
        with transaction.atomic():
            created, tenants, users = seed_identity()
            created += seed_queues(users=users)
            created += seed_support_data(tenants=tenants)
            created += seed_runtime()
            created += seed_knowledge(tenants=tenants)
            if created:
                audit_record(actor=Actor.system("seed_demo"), action="demo.seeded",
                             payload={"rows_created": created})
        verb = f"created {created} rows" if created else "nothing to do, already seeded"
        self.stdout.write(self.style.SUCCESS(f"Demo data: {verb}."))
        self.stdout.write("Demo logins (console at /accounts/login/):")
        for persona in PERSONAS:
            self.stdout.write(f"  {persona.username:<10} {demo_password(persona.username):<22} "
                              f"{persona.description}")
        self.stdout.write("Service accounts (API tokens only: manage.py issue_token NAME):")
        for username, slug in SERVICE_ACCOUNTS:
            self.stdout.write(f"  {username:<10} starts runs for tenant {slug} only")
