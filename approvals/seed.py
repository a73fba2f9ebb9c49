"""Demo review queues and the reviewers' object permissions on them."""

from __future__ import annotations

from guardian.shortcuts import assign_perm, get_perms

from approvals.models import ReviewQueue

QUEUES = (
    # slug, name, tools, tiers, sla minutes, capacity
    ("escalations", "Escalations", [], [], 60, 1000),
    ("billing-credits", "Billing credits", ["apply_credit"], [], 240, 500),
    ("account-changes", "Account changes", ["update_account_status"], ["write_high"], 480, 500),
)
REVIEWERS = {
    "billing-credits": ("lead", "lead2"),
    "account-changes": ("accounts",),
    "escalations": ("admin",),
}


def seed_queues(*, users: dict) -> int:
    created = 0
    queues = {}
    for slug, name, tools, tiers, sla, capacity in QUEUES:
        queues[slug], made = ReviewQueue.objects.get_or_create(
            slug=slug,
            defaults={"name": name, "tools": tools, "tiers": tiers, "sla_minutes": sla,
                      "capacity": capacity},
        )
        created += made
    for slug in ("billing-credits", "account-changes"):
        queue = queues[slug]
        if queue.escalation_queue_id is None:
            queue.escalation_queue = queues["escalations"]
            queue.save(update_fields=["escalation_queue"])
            created += 1
    for slug, usernames in REVIEWERS.items():
        for username in usernames:
            user = users[username]
            held = set(get_perms(user, queues[slug]))
            for perm in ("view_reviewqueue", "decide_reviewqueue"):
                if perm not in held:
                    assign_perm(perm, user, queues[slug])
                    created += 1
    return created
