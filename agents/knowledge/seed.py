"""Demo knowledge per tenant: a critical billing policy and non-critical help articles.

``seed_knowledge(tenants={"acme": <Tenant>, ...})`` is safe to run twice (upserts; nothing
is re-audited when unchanged). Sources are marked refreshed at seeding time.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from agents.knowledge.models import Document, Source
from agents.knowledge.services import document_upsert, source_upsert
from audit.services import Actor

DOCS: dict[str, list[dict[str, Any]]] = {
    "acme": [
        {"source": "Billing policy", "kind": Source.Kind.POLICY, "owner": "Acme Billing Operations",
         "critical": True, "max_age_days": 180, "documents": [
            ("Refund and duplicate charge policy",
             "When a customer is billed twice for the same period, the duplicate charge is refunded "
             "in full as an account credit. Check the subscription's charges for two charges in the "
             "same month before proposing a refund. Credits below $100 need one support lead's "
             "approval; credits from $100 need two different support leads; credits above $1,000 are "
             "never issued by support and go to the finance team. Refunds are proposed, never "
             "promised, until they are approved."),
            ("Goodwill credit guidelines",
             "A goodwill credit may be offered after a service outage of more than four hours, up to "
             "one month's subscription price. Record the outage ticket in the credit reason."),
        ]},
        {"source": "Help center", "kind": Source.Kind.HELP, "owner": "Acme Support Content",
         "critical": False, "max_age_days": 365, "documents": [
            ("Updating your payment method",
             "Customers update their card under Settings, Billing, Payment method. Support never "
             "takes card numbers by email or chat."),
            ("Understanding your invoice",
             "Invoices are issued on the first day of each month. A pro-rated line appears when the "
             "plan changed during the month. Credits appear as negative lines on the next invoice."),
            ("Cancelling a subscription",
             "A subscription can be cancelled at any time; it stays active until the end of the "
             "paid period. There is no refund for the unused part of a month."),
        ]},
    ],
    "globex": [
        {"source": "Billing policy", "kind": Source.Kind.POLICY, "owner": "Globex Finance Desk",
         "critical": True, "max_age_days": 90, "documents": [
            ("Refunds at Globex",
             "Globex refunds a duplicate charge only within 30 days of the charge, to the original "
             "payment method, after the finance desk confirms it. Support proposes the refund; "
             "every refund needs one support lead's approval."),
        ]},
        {"source": "Help center", "kind": Source.Kind.HELP, "owner": "Globex Customer Care",
         "critical": False, "max_age_days": 365, "documents": [
            ("Resetting your password",
             "Use the Forgot password link on the sign-in page; the reset link is valid for one hour."),
            ("Quarterly billing",
             "Globex bills quarterly in advance on the first day of January, April, July and October."),
        ]},
    ],
}


def seed_knowledge(*, tenants: Any) -> int:
    """Seed the demo sources and documents for the given tenants (a dict slug -> Tenant or
    an iterable of tenants). Create-only, so running it twice changes nothing: returns the
    number of sources and documents created."""
    if isinstance(tenants, dict):
        tenants = tenants.values()
    actor = Actor.system("seed")
    now = timezone.now()
    created = 0
    for tenant in tenants:
        for spec in DOCS.get(tenant.slug, []):
            source = Source.objects.filter(tenant=tenant, name=spec["source"]).first()
            if source is None:
                source = source_upsert(
                    actor=actor, tenant=tenant, name=spec["source"], owner=spec["owner"],
                    kind=spec["kind"], critical=spec["critical"],
                    max_age=timedelta(days=spec["max_age_days"]), refreshed_at=now)
                created += 1
            for title, body in spec["documents"]:
                if not Document.objects.filter(source=source, title=title).exists():
                    document_upsert(actor=actor, source=source, title=title, body=body)
                    created += 1
    return created
