"""The support toolkit's demo data: customers, subscriptions and tickets per tenant. The
agent and the policy that act on them are the runtime's (``agents.seed.seed_runtime``)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from support.models import Customer, Subscription, Ticket

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
    """Twenty customers per demo tenant, each with a subscription and tickets; the duplicate
    charges of the support scenario. Safe to run twice. Returns the rows created."""
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
    return created
