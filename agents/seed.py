"""The support toolkit's demo data: customers, subscriptions and tickets per tenant."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from django.db import transaction

from agents.models import Agent, Customer, Subscription, Ticket
from audit.services import Actor, audit_record

FIRST = ("Ada", "Ben", "Cleo", "Dev", "Eva", "Finn", "Gia", "Hugo", "Ines", "Jon",
         "Kai", "Lena", "Milo", "Nora", "Omar", "Pia", "Quin", "Rosa", "Sam", "Tess")
LAST = ("Lovelace", "Okafor", "Martin", "Patel", "Novak", "Berg", "Rossi", "Klein", "Silva",
        "Moreau", "Tanaka", "Fischer", "Costa", "Haddad", "Ali", "Jensen", "Ng", "Diaz",
        "Kowal", "Ivers")
PLANS = (("starter", 1900), ("team", 4000), ("business", 9900), ("enterprise", 49900))
TENANT_CODES = {"acme": ("C", 1001), "globex": ("G", 2001)}
BASE_TIME = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _customer_rows(slug: str):
    letter, start = TENANT_CODES[slug]
    for index in range(20):
        code = f"{letter}-{start + index}"
        first, last = FIRST[index], LAST[(index * 7) % 20]
        yield index, code, f"{first} {last}", f"{first.lower()}.{last.lower()}@{slug}.example"


def _charges(index: int, price: int) -> list[dict]:
    charges = [{"date": f"2026-0{month}-01", "amount_cents": price, "ref": f"ch_{index}_{month}"}
               for month in (1, 2, 3)]
    if index == 0:  # the scenario: billed twice in March
        charges.append({"date": "2026-03-02", "amount_cents": price, "ref": f"ch_{index}_3b"})
    if index == 2:  # a larger duplicate (enterprise, February): credits that need two leads
        charges.insert(2, {"date": "2026-02-03", "amount_cents": price, "ref": f"ch_{index}_2b"})
    return charges


def seed_support_data(*, tenants: dict) -> int:
    created = 0
    for slug, tenant in tenants.items():
        if slug not in TENANT_CODES:
            continue
        for index, code, name, email in _customer_rows(slug):
            customer, made = Customer.objects.get_or_create(
                tenant=tenant, code=code, defaults={"name": name, "email": email})
            created += made
            # C-1001 (index 0) is on the team plan ($40), the scenario DESIGN.md describes.
            plan, price = PLANS[(index + 1) % len(PLANS)]
            if not Subscription.objects.filter(tenant=tenant, customer=customer).exists():
                Subscription.objects.create(
                    tenant=tenant, customer=customer, plan=plan, monthly_price_cents=price,
                    started_on=date(2025, 1 + index % 12, 1), charges=_charges(index, price))
                created += 1
            tickets = [
                (f"{code}-T1", "Question about my invoice",
                 f"Hi, this is {name}. Can you explain the {plan} plan charge on my invoice?"),
            ]
            if index == 0:
                tickets.append((f"{code}-T2", "Billed twice in March",
                                f"I was charged twice for {plan} in March "
                                f"(${price / 100:.2f} on 2026-03-01 and 2026-03-02). "
                                "Please refund the duplicate."))
            if index == 2:
                tickets.append((f"{code}-T2", "Charged twice in February",
                                f"Our {plan} plan was charged twice in February "
                                f"(${price / 100:.2f} on 2026-02-01 and 2026-02-03)."))
            for offset, (number, subject, body) in enumerate(tickets):
                _, made = Ticket.objects.get_or_create(
                    tenant=tenant, number=number,
                    defaults={"customer": customer, "subject": subject, "body": body,
                              "created_at": BASE_TIME + timedelta(days=index, hours=offset)})
                created += made
    created += seed_runtime()
    return created


# --- the runtime's demo definitions: the support agent and the default policy -----------

SUPPORT_TOOLS = ["lookup_subscription", "search_tickets", "draft_reply", "apply_credit",
                 "update_account_status"]


def seed_runtime() -> int:
    """The shared ``support`` agent (scripted planner) and policy v1 (DESIGN.md's default),
    active. Safe to run twice: nothing changes when they exist and the agent already
    declares every intent the planner knows (else a new version does, see below)."""
    from agents.models import Policy
    from agents.planner import INTENTS
    from agents.policy import DEFAULT_RULES
    from agents.services import policy_create

    created = 0
    if not Agent.objects.filter(slug="support", tenant__isnull=True).exists():
        Agent.objects.create(
            slug="support", version=1, name="Support agent",
            description="Answers billing and account questions; proposes credits for review.",
            model_route=["scripted"], allowed_tools=SUPPORT_TOOLS, intents=list(INTENTS),
            max_steps=12, max_tokens=20_000, max_wall_seconds=300, max_cost_usd=1)
        created += 1
    else:
        created += _support_intents_up_to_date(INTENTS)
    if not Policy.objects.exists():
        policy_create(actor=Actor.system("seed_demo"), rules=DEFAULT_RULES,
                      description="Default: credits need one lead, two from $100, none above $1,000.",
                      activate=True)
        created += 1
    return created


def _support_intents_up_to_date(intents) -> int:
    """A demo database seeded before the planner learned an intent: ``run_start`` refuses
    intents the agent does not declare. Agents are versioned and runs pin the version they
    started with, so the shared ``support`` agent gets a new active version declaring the
    missing intents (the old one stays, inactive, for its runs); nothing else changes.
    An agent switched off by hand (no active shared version) is left alone. Returns 1 when
    a version was created."""
    with transaction.atomic():
        # locked: two seeds at once create one version, not two
        versions = list(Agent.objects.select_for_update().filter(slug="support", tenant__isnull=True))
        current = next((agent for agent in versions if agent.is_active), None)
        declared = list(current.intents or []) if current else []
        missing = [intent for intent in intents if intent not in declared]
        if current is None or not missing:
            return 0
        Agent.objects.filter(pk=current.pk).update(is_active=False)  # one active shared version
        fields = ("name", "description", "model_route", "allowed_tools", "max_steps", "max_tokens",
                  "max_wall_seconds", "max_cost_usd")
        agent = Agent.objects.create(
            slug="support", version=max(a.version for a in versions) + 1, intents=[*declared, *missing],
            **{name: getattr(current, name) for name in fields})
        audit_record(
            actor=Actor.system("seed_demo"), action="agent.version_created", object_type="agent",
            object_id=f"support v{agent.version}",
            payload={"slug": "support", "version": agent.version, "previous_version": current.version,
                     "intents_added": missing, "intents": agent.intents})
    return 1
