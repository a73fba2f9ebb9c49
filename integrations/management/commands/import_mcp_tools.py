"""``manage.py import_mcp_tools SERVER [--tenant SLUG] [--prefix P] [--credential-scope S]``:
register the tools an MCP server lists. New tools start as write_high and need approval on
every call until an admin reviews them (docs/tools.md)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audit.services import Actor
from console.errors import DomainError
from console.models import Tenant
from integrations.models import McpServer
from integrations.services import mcp_tools_import


class Command(BaseCommand):
    help = "Import an MCP server's tools (tools/list) as tools that need review."

    def add_arguments(self, parser):
        parser.add_argument("server", help="the MCP server's slug")
        parser.add_argument("--tenant", default="", help="the tenant (a tenant's server, or whom a "
                            "global server's tools are imported for; default: the server's own)")
        parser.add_argument("--prefix", default="", help="put before every tool's name, e.g. billing_")
        parser.add_argument("--credential-scope", default="", help="the credential scope the tools need "
                            "(the tenant's credential of that scope also lists them)")

    def handle(self, *args, **options):
        tenant = None
        if options["tenant"]:
            tenant = Tenant.objects.filter(slug=options["tenant"]).first()
            if tenant is None:
                raise CommandError(f"No tenant {options['tenant']!r}.")
        # the tenant's own server of that slug wins over a global one
        servers = McpServer.objects.filter(slug=options["server"])
        servers = [s for s in servers if s.tenant_id is None or (tenant and s.tenant_id == tenant.pk)]
        if not servers:
            raise CommandError(f"No MCP server {options['server']!r}; register it in the admin first.")
        server = min(servers, key=lambda s: s.tenant_id is None)
        try:
            report = mcp_tools_import(actor=Actor.system("import_mcp_tools"), server=server,
                                      prefix=options["prefix"], tenant=tenant,
                                      credential_scope=options["credential_scope"])
        except DomainError as exc:
            raise CommandError(exc.message) from None
        for label, names in (("created", report.created), ("updated", report.updated),
                             ("unchanged", report.unchanged)):
            for name in names:
                self.stdout.write(f"{label:9} {name}")
        for name, why in report.skipped:
            self.stdout.write(f"skipped   {name}: {why}")
        if report.created or report.updated:
            self.stdout.write("New and changed tools are write_high and need approval on every call until "
                              "an admin reviews them (admin: Integrations > Tool definitions).")
