"""seed_runtime brings a demo database seeded before the planner learned its intents up
to date: the shared support agent gets a new version declaring them, audited."""

from __future__ import annotations

import pytest

from agents.models import Agent
from agents.planner import INTENTS
from agents.seed import seed_runtime
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db

OLD_INTENTS = ["billing_refund", "account_status", "general_question"]


def test_an_old_support_agent_gets_a_new_version_declaring_the_new_intents(start_run):
    old = Agent.objects.get(slug="support", tenant__isnull=True)
    Agent.objects.filter(pk=old.pk).update(intents=OLD_INTENTS)  # as seeded before this change

    assert seed_runtime() == 1
    versions = list(Agent.objects.filter(slug="support", tenant__isnull=True).order_by("version"))
    assert [(a.version, a.is_active) for a in versions] == [(1, False), (2, True)]
    new = versions[1]
    assert new.intents[:3] == OLD_INTENTS and set(new.intents) == set(INTENTS)
    same = ("name", "model_route", "allowed_tools", "max_steps", "max_tokens", "max_cost_usd")
    assert [getattr(new, f) for f in same] == [getattr(old, f) for f in same]
    event = AuditEvent.objects.get(action="agent.version_created")
    assert event.payload["previous_version"] == 1 and event.payload["version"] == 2
    assert set(event.payload["intents_added"]) == set(INTENTS) - set(OLD_INTENTS)

    run = start_run("Cancel my subscription, I'm C-1003")  # refused before the re-seed
    assert run.intent == "cancellation" and run.agent_id == new.pk
    assert seed_runtime() == 0  # up to date: nothing more
    assert Agent.objects.filter(slug="support").count() == 2


def test_a_support_agent_switched_off_by_hand_is_left_alone(runtime):
    Agent.objects.filter(slug="support").update(intents=OLD_INTENTS, is_active=False)
    assert seed_runtime() == 0
    assert Agent.objects.filter(slug="support").count() == 1
    assert not AuditEvent.objects.filter(action="agent.version_created").exists()
