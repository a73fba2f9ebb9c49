"""The runtime's demo definitions: the shared support agent and the default policy. The
support toolkit's demo data (customers, subscriptions, tickets) is ``support.seed``."""

from __future__ import annotations

from django.db import transaction

from agents.models import Agent
from audit.services import Actor, audit_record

SUPPORT_TOOLS = ["lookup_subscription", "search_tickets", "draft_reply", "apply_credit",
                 "update_account_status"]


def seed_runtime() -> int:
    """The shared ``support`` agent (scripted planner) and policy v1 (DESIGN.md's default),
    active. Safe to run twice: nothing changes when they exist and the agent already
    declares every intent the planner knows (else a new version does, see below)."""
    from agents.models import Policy
    from agents.planner import INTENTS
    from agents.policy import DEFAULT_RULES
    from agents.services.policies import policy_create

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
