"""Demo identity: tenants, role groups, personas, service accounts. Safe to run twice."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import Group, User

from console.models import ServiceAccount, Tenant, TenantMembership
from console.roles import ADMIN, ALL_ROLES, AUDITOR, OPERATOR, REVIEWER

TENANTS = (("acme", "Acme Corp"), ("globex", "Globex Inc"))


@dataclass(frozen=True)
class Persona:
    username: str
    role: str | None
    description: str
    tenants: tuple[str, ...] = ("acme", "globex")


PERSONAS = (
    Persona("operator", OPERATOR, "ops: switches, runs, handoffs"),
    Persona("lead", REVIEWER, "support lead: reviewer on Billing credits"),
    Persona("lead2", REVIEWER, "support lead: reviewer on Billing credits"),
    Persona("accounts", REVIEWER, "reviewer on Account changes only"),
    Persona("auditor", AUDITOR, "read-only audit access"),
    Persona("admin", ADMIN, "administrator (superuser)"),
)
SERVICE_ACCOUNTS = (("svc-acme", "acme"), ("svc-globex", "globex"))


def demo_password(username: str) -> str:
    """Deterministic demo passwords (override all with DEMO_PASSWORD)."""
    return settings.DEMO_PASSWORD or f"{username}-demo-pass"


def seed_identity() -> tuple[int, dict[str, Tenant], dict[str, User]]:
    created = 0
    tenants: dict[str, Tenant] = {}
    for slug, name in TENANTS:
        tenants[slug], made = Tenant.objects.get_or_create(slug=slug, defaults={"name": name})
        created += made
    groups = {}
    for role in ALL_ROLES:
        groups[role], made = Group.objects.get_or_create(name=role)
        created += made
    users: dict[str, User] = {}
    for persona in PERSONAS:
        user, made = User.objects.get_or_create(
            username=persona.username,
            defaults={"email": f"{persona.username}@example.com",
                      "is_staff": persona.role == ADMIN,
                      "is_superuser": persona.role == ADMIN},
        )
        if made:
            user.set_password(demo_password(persona.username))
            user.save(update_fields=["password"])
            created += 1
        if persona.role and not user.groups.filter(name=persona.role).exists():
            user.groups.add(groups[persona.role])
            created += 1
        for slug in persona.tenants:
            _, made = TenantMembership.objects.get_or_create(user=user, tenant=tenants[slug])
            created += made
        users[persona.username] = user
    for username, slug in SERVICE_ACCOUNTS:
        user, made = User.objects.get_or_create(username=username)
        if made:
            user.set_unusable_password()
            user.save(update_fields=["password"])
            created += 1
        _, made = ServiceAccount.objects.get_or_create(
            user=user, defaults={"tenant": tenants[slug],
                                 "description": f"Integration account for {slug}"})
        created += made
        users[username] = user
    return created, tenants, users
