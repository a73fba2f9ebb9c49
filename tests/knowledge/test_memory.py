"""Memory: long-term items with a DB-authoritative freeze, conversation summarisation at a
token budget, and the per-run scratchpad."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from agents.knowledge.models import ConversationMessage, MemoryFreeze, MemoryItem
from agents.knowledge.selectors import (
    conversation_tokens,
    conversation_window,
    memory_read,
    scratchpad_get,
)
from agents.knowledge.services import (
    MemoryFrozen,
    conversation_append,
    deterministic_summariser,
    memory_forget,
    memory_freeze,
    memory_refresh,
    memory_refresh_all,
    memory_unfreeze,
    memory_write,
    scratchpad_clear,
    scratchpad_set,
)
from agents.knowledge.tasks import memory_refresh_task
from audit.models import AuditEvent
from audit.services import Actor
from console.errors import InvalidInput

RUN = Actor.run("run-1")


def events(action):
    return list(AuditEvent.objects.filter(action=action).order_by("seq"))


# --- long-term memory and freeze ----------------------------------------------------------


def test_runs_write_memory_sanitised_and_audited(acme):
    item = memory_write(actor=RUN, tenant=acme, agent="support", key="C-1001.preference",
                        value={"note": "prefers email to ada@acme.example"}, run_id="run-1")
    assert item.value == {"note": "prefers email to [EMAIL]"}
    view = memory_read(tenant=acme, agent="support")
    assert [i["key"] for i in view.items] == ["C-1001.preference"] and not view.frozen
    assert events("memory.written")[-1].payload["key"] == "C-1001.preference"


def test_memory_is_per_tenant_and_agent(acme, globex):
    memory_write(actor=RUN, tenant=acme, agent="support", key="k", value=1)
    assert memory_read(tenant=globex, agent="support").items == ()
    assert memory_read(tenant=acme, agent="billing").items == ()


def test_freeze_refuses_writes_and_refresh_while_reads_serve_the_frozen_state(acme, operator):
    memory_write(actor=RUN, tenant=acme, agent="support", key="kept", value="before the freeze")
    memory_write(actor=RUN, tenant=acme, agent="support", key="expiring", value="x", ttl=timedelta(seconds=1))
    freeze = memory_freeze(actor=operator, tenant=acme, agent="support", reason="suspected poisoning")
    assert events("memory.frozen")[-1].payload["reason"] == "suspected poisoning"

    with pytest.raises(MemoryFrozen, match="suspected poisoning") as caught:
        memory_write(actor=RUN, tenant=acme, agent="support", key="kept", value="overwritten")
    assert caught.value.code == "memory_frozen" and caught.value.status == 409
    with pytest.raises(MemoryFrozen, match="memory refresh"):
        memory_refresh(actor=Actor.system("refresh"), tenant=acme, agent="support",
                       now=timezone.now() + timedelta(days=1))
    with pytest.raises(MemoryFrozen):
        memory_forget(actor=RUN, tenant=acme, agent="support", key="kept")

    view = memory_read(tenant=acme, agent="support")
    assert view.frozen and view.freeze_reason == "suspected poisoning"
    assert {i["key"]: i["value"] for i in view.items} == {"kept": "before the freeze", "expiring": "x"}
    refused = events("memory.refused")
    assert [e.payload["operation"] for e in refused] == ["write", "refresh", "forget"]
    assert all(e.payload["freeze"] == freeze.scope_key and e.tenant_id == acme.pk for e in refused)

    assert memory_unfreeze(actor=operator, tenant=acme, agent="support", reason="clean") is True
    assert events("memory.unfrozen")
    counts = memory_refresh(actor=Actor.system("refresh"), tenant=acme, agent="support",
                            now=timezone.now() + timedelta(days=1))
    assert counts == {"expired": 1, "trimmed": 0, "kept": 1}
    memory_write(actor=RUN, tenant=acme, agent="support", key="kept", value="after")
    assert memory_read(tenant=acme, agent="support").items[0]["value"] == "after"


@pytest.mark.parametrize(("scope", "covered", "free"), [
    ({}, [("acme", "support"), ("globex", "billing")], []),
    ({"tenant": "acme"}, [("acme", "support"), ("acme", "billing")], [("globex", "support")]),
    ({"agent": "support"}, [("acme", "support"), ("globex", "support")], [("acme", "billing")]),
])
def test_freeze_scopes(tenants, operator, scope, covered, free):
    kwargs = {"tenant": tenants[scope["tenant"]]} if "tenant" in scope else {}
    memory_freeze(actor=operator, agent=scope.get("agent"), reason="drill", **kwargs)
    for slug, agent in covered:
        with pytest.raises(MemoryFrozen):
            memory_write(actor=RUN, tenant=tenants[slug], agent=agent, key="k", value=1)
    for slug, agent in free:
        memory_write(actor=RUN, tenant=tenants[slug], agent=agent, key="k", value=1)


def test_freeze_needs_a_reason_and_is_idempotent(acme, operator):
    with pytest.raises(InvalidInput, match="reason"):
        memory_freeze(actor=operator, tenant=acme, reason="  ")
    first = memory_freeze(actor=operator, tenant=acme, reason="one")
    again = memory_freeze(actor=operator, tenant=acme, reason="two")
    assert again.pk == first.pk and MemoryFreeze.objects.count() == 1
    assert len(events("memory.frozen")) == 1
    assert memory_unfreeze(actor=operator, tenant=acme) is True
    assert memory_unfreeze(actor=operator, tenant=acme) is False


def test_the_periodic_refresh_skips_frozen_scopes_and_audits_each_refusal(acme, globex, operator):
    memory_write(actor=RUN, tenant=acme, agent="support", key="a", value=1)
    memory_write(actor=RUN, tenant=globex, agent="support", key="b", value=2)
    memory_freeze(actor=operator, tenant=globex, reason="audit in progress")
    assert memory_refresh_all(actor=Actor.system("beat")) == {"refreshed": 1, "refused": 1}
    assert MemoryItem.objects.get(tenant=acme).refreshed_at is not None
    assert MemoryItem.objects.get(tenant=globex).refreshed_at is None
    assert events("memory.refused")[-1].tenant_id == globex.pk
    assert memory_refresh_task() == {"refreshed": 1, "refused": 1}  # the thin beat task


def test_refresh_trims_to_the_cap(acme, settings):
    settings.MEMORY_MAX_ITEMS_PER_AGENT = 2
    for index in range(4):
        memory_write(actor=RUN, tenant=acme, agent="support", key=f"k{index}", value=index)
    assert memory_refresh(actor=RUN, tenant=acme, agent="support")["trimmed"] == 2
    assert MemoryItem.objects.filter(tenant=acme).count() == 2


def test_oversized_memory_value_is_refused(acme):
    with pytest.raises(InvalidInput, match="Store a summary"):
        memory_write(actor=RUN, tenant=acme, agent="support", key="big", value="x" * 10_000)


# --- conversation -------------------------------------------------------------------------


def turn(index: int) -> str:
    return f"Turn {index}: customer C-1001 asks about the March invoice. " + "details " * 45


def test_summarisation_kicks_in_when_the_conversation_passes_the_budget(acme):
    conversation = str(uuid.uuid4())
    budget = 400
    for index in range(3):
        conversation_append(tenant=acme, conversation_id=conversation, role="user", content=turn(index),
                            token_budget=budget)
    assert not ConversationMessage.objects.filter(role="summary").exists()
    assert conversation_tokens(tenant=acme, conversation_id=conversation) <= budget

    conversation_append(tenant=acme, conversation_id=conversation, role="assistant", content=turn(3),
                        token_budget=budget)
    summaries = ConversationMessage.objects.filter(conversation_id=conversation, role="summary")
    assert summaries.count() == 1
    window = conversation_window(tenant=acme, conversation_id=conversation)
    assert window[0]["role"] == "summary" and "Turn 0" in window[0]["content"]
    assert window[-1]["content"].startswith("Turn 3")
    assert conversation_tokens(tenant=acme, conversation_id=conversation) <= budget
    # Folded turns stay on record, out of the window.
    assert ConversationMessage.objects.filter(conversation_id=conversation,
                                              summarised_at__isnull=False).count() >= 1


def test_summaries_roll_up_as_the_conversation_grows(acme):
    conversation = str(uuid.uuid4())
    for index in range(12):
        conversation_append(tenant=acme, conversation_id=conversation, role="user", content=turn(index),
                            token_budget=400)
        assert conversation_tokens(tenant=acme, conversation_id=conversation) <= 400
    window = conversation_window(tenant=acme, conversation_id=conversation)
    assert [m["role"] for m in window].count("summary") == 1


def test_the_deterministic_summary_is_stable_and_bounded():
    messages = [{"role": "user", "content": turn(i)} for i in range(10)]
    first = deterministic_summariser(messages, 100)
    assert first == deterministic_summariser(messages, 100)
    assert len(first) <= 400 and "Summary of 10 earlier turn(s)" in first


def test_conversations_are_tenant_scoped(acme, globex):
    conversation_append(tenant=acme, conversation_id="conv-1", role="user", content="hello")
    assert conversation_window(tenant=globex, conversation_id="conv-1") == []


# --- scratchpad ---------------------------------------------------------------------------


def test_scratchpad_per_run_and_tenant(acme, globex):
    run = str(uuid.uuid4())
    scratchpad_set(tenant=acme, run_id=run, key="customer", value={"code": "C-1001"})
    scratchpad_set(tenant=acme, run_id=run, key="step", value=2)
    scratchpad_set(tenant=acme, run_id=run, key="step", value=3)
    assert scratchpad_get(tenant=acme, run_id=run) == {"customer": {"code": "C-1001"}, "step": 3}
    assert scratchpad_get(tenant=acme, run_id=run, key="missing") is None
    assert scratchpad_get(tenant=globex, run_id=run) == {}
    assert scratchpad_clear(tenant=acme, run_id=run) == 2


def test_scratchpad_is_bounded(acme):
    with pytest.raises(InvalidInput, match="bytes"):
        scratchpad_set(tenant=acme, run_id="r", key="big", value="x" * 20_000)
    for index in range(100):
        scratchpad_set(tenant=acme, run_id="r", key=f"k{index}", value=index)
    with pytest.raises(InvalidInput, match="at most 100 keys"):
        scratchpad_set(tenant=acme, run_id="r", key="one-more", value=1)
