"""Switch semantics, propagation and auditing, in this process (PostgreSQL+Redis or the
embedded default: the same tests run on both). Real workers: test_workers.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from agents import switches as switch_state
from agents.approval_subject import requests_of
from agents.models import KillSwitch, RunStatus, ToolInvocation
from agents.services.switches import switch_engage, switch_expire_due, switch_release, switch_set
from approvals.services import approval_decide
from audit.models import AuditEvent
from console.errors import Conflict, InvalidInput
from support.models import CreditLedger
from tests.switches.conftest import QUESTION, REFUND

pytestmark = pytest.mark.django_db


def _actions(prefix="switch."):
    return list(
        AuditEvent.objects.filter(action__startswith=prefix).order_by("seq").values_list("action", flat=True)
    )


# --- each scope's effect ------------------------------------------------------------------


def test_tool_switch_refuses_the_tool_before_execution_and_reads_keep_working(
    start_run, step, pending_request, lead, operator
):
    run = step(start_run(REFUND))
    approval_decide(actor=lead, request=pending_request(run), decision="approve", reason="dup")
    switch_engage(actor=operator, scope="tool", target="apply_credit", reason="INC-1 ledger")
    run = step(run)
    assert run.status == RunStatus.KILLED and "INC-1 ledger" in run.terminal_reason
    assert ToolInvocation.objects.get(run=run, tool="apply_credit").state == "refused"
    assert not CreditLedger.objects.exists()
    question = step(start_run(QUESTION))
    assert question.status == RunStatus.SUCCEEDED
    assert question.invocations.get(tool="lookup_subscription").state == "succeeded"


def test_intent_switch_sends_new_runs_straight_to_handoff_without_a_model_call(start_run, step, operator):
    switch_engage(actor=operator, scope="intent", target="billing_refund", reason="billing to humans tonight")
    run = step(start_run(REFUND))
    assert run.status == RunStatus.HANDED_OFF
    assert "routed to humans" in run.terminal_reason and "billing to humans tonight" in run.terminal_reason
    assert not run.steps.filter(kind="model").exists()
    assert "handoff_summary" in run.result
    assert step(start_run(QUESTION)).status == RunStatus.SUCCEEDED  # other intents unaffected


def test_intent_switch_hands_off_a_running_run_at_its_next_step(
    start_run, step, pending_request, lead, operator
):
    run = step(start_run(REFUND))  # parked at apply_credit after its reads
    assert run.status == RunStatus.WAITING_APPROVAL
    approval_decide(actor=lead, request=pending_request(run), decision="approve", reason="ok")
    switch_engage(actor=operator, scope="intent", target="billing_refund", reason="route")
    run = step(run)
    assert run.status == RunStatus.HANDED_OFF and not CreditLedger.objects.exists()


def test_memory_switch_freezes_memory_and_release_unfreezes(runtime, operator, acme):
    from agents.knowledge.models import MemoryFreeze
    from agents.knowledge.services import MemoryFrozen, memory_write

    switch_engage(actor=operator, scope="memory", target="*", reason="poisoned notes")
    assert MemoryFreeze.objects.count() == 1
    with pytest.raises(MemoryFrozen):
        memory_write(actor=operator, tenant=acme, agent="support", key="k", value="remember this")
    switch_release(actor=operator, scope="memory", target="*", reason="cleaned")
    assert not MemoryFreeze.objects.exists()
    assert {"memory.frozen", "memory.unfrozen"} <= set(_actions("memory."))


def test_force_approval_for_a_tier_parks_what_policy_would_allow(start_run, step, operator):
    switch_engage(actor=operator, scope="approval", target="read", reason="audit week")
    run = step(start_run(QUESTION))
    assert run.status == RunStatus.WAITING_APPROVAL
    request = requests_of(run).get()
    assert request.tool == "lookup_subscription" and "audit week" in request.policy_reason


def test_force_approval_for_one_tool_leaves_other_tools_alone(start_run, step, operator):
    switch_engage(actor=operator, scope="approval", target="search_tickets", reason="check searches")
    run = step(start_run(QUESTION))
    assert run.status == RunStatus.WAITING_APPROVAL
    assert requests_of(run).get().tool == "search_tickets"
    assert run.invocations.get(tool="lookup_subscription").state == "succeeded"  # not forced


def test_pause_leaves_new_runs_queued_untouched_and_release_resumes_them(
    start_run, step, operator, monkeypatch
):
    from agents import tasks

    sent = []
    monkeypatch.setattr(tasks, "send_run", lambda run_id: sent.append(run_id))
    switch_engage(actor=operator, scope="agent", target="support", reason="bad prompt release")
    run = step(start_run(QUESTION))
    assert run.status == RunStatus.QUEUED and run.lease_token == "" and not run.steps.exists()
    switch_release(actor=operator, scope="agent", target="support", reason="rolled back")
    assert step(run).status == RunStatus.SUCCEEDED


def test_pause_parks_a_running_run_as_queued_with_a_reason(start_run, step, operator):
    from agents.runtime import _step, run_claim

    run = start_run(QUESTION)
    lease = run_claim(run_pk=run.pk, worker="pytest")
    run.refresh_from_db()
    switch_engage(actor=operator, scope="agent", target="support", reason="pause it")
    assert _step(run, lease) == RunStatus.QUEUED
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and run.lease_token == ""
    assert run.state["parked"]["switch"] == "agent:support" and run.state["parked"]["reason"] == "pause it"
    assert run.steps.get().name == "agent_paused"
    assert AuditEvent.objects.filter(action="run.paused", trace_id=run.trace_id).exists()
    switch_release(actor=operator, scope="agent", target="support", reason="go")
    run = step(run)
    assert run.status == RunStatus.SUCCEEDED and "parked" not in run.state


def test_release_of_a_pause_enqueues_the_parked_runs_on_commit(
    start_run, operator, monkeypatch, django_capture_on_commit_callbacks
):
    from agents import tasks

    sent = []
    monkeypatch.setattr(tasks, "send_run", lambda run_id: sent.append(run_id))
    switch_engage(actor=operator, scope="agent", target="support", reason="pause")
    run = start_run(QUESTION)
    with django_capture_on_commit_callbacks(execute=True):
        switch_release(actor=operator, scope="agent", target="support", reason="go")
    assert str(run.public_id) in sent


def test_global_stop_stops_new_and_running_runs(start_run, step, pending_request, lead, operator):
    parked = step(start_run(REFUND))
    approval_decide(actor=lead, request=pending_request(parked), decision="approve", reason="ok")
    switch_set(actor=operator, scope="global", target="", engaged=True, reason="stop everything")
    fresh = step(start_run(QUESTION))
    assert fresh.status == RunStatus.KILLED and not fresh.steps.filter(kind="model").exists()
    parked = step(parked)
    assert parked.status == RunStatus.KILLED and not CreditLedger.objects.exists()
    assert "global kill switch" in parked.terminal_reason


# --- flips: reason, who, when, expiry, audit ------------------------------------------------


def test_every_flip_is_audited_with_who_and_why_and_a_refused_flip_writes_nothing(runtime, operator):
    before = AuditEvent.objects.count()
    with pytest.raises(InvalidInput, match="reason"):
        switch_set(actor=operator, scope="tool", target="apply_credit", engaged=True, reason="")
    with pytest.raises(InvalidInput, match="Unknown tool"):
        switch_set(actor=operator, scope="tool", target="nope", engaged=True, reason="x")
    with pytest.raises(InvalidInput, match="Unknown intent"):
        switch_set(actor=operator, scope="intent", target="nope", engaged=True, reason="x")
    with pytest.raises(InvalidInput, match="No agent"):
        switch_set(actor=operator, scope="agent", target="nope", engaged=True, reason="x")
    with pytest.raises(InvalidInput, match="reason"):
        switch_set(actor=operator, scope="tool", target="apply_credit", engaged=False, reason=" ")
    assert AuditEvent.objects.count() == before
    switch_set(actor=operator, scope="tool", target="apply_credit", engaged=True, reason="INC-7")
    switch_set(actor=operator, scope="tool", target="apply_credit", engaged=False, reason="fixed")
    with pytest.raises(Conflict):
        switch_set(actor=operator, scope="tool", target="apply_credit", engaged=False, reason="again")
    events = list(AuditEvent.objects.filter(action__startswith="switch.").order_by("seq"))
    assert [e.action for e in events] == ["switch.engaged", "switch.released"]
    assert all(e.actor_label == "operator" and e.object_id == "tool:apply_credit" for e in events)
    assert [e.payload["reason"] for e in events] == ["INC-7", "fixed"]
    switch = KillSwitch.objects.get()
    assert switch.changed_by == operator and switch.changed_at is not None


def test_expiry_lifts_the_switch_readers_first_then_the_sweep_records_it(runtime, operator):
    soon = timezone.now() + timedelta(minutes=5)
    switch_engage(
        actor=operator, scope="tool", target="apply_credit", reason="until the fix", expires_at=soon
    )
    assert [str(s) for s in switch_state.engaged()] == ["tool:apply_credit"]
    assert switch_expire_due() == []  # not due yet
    KillSwitch.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert switch_state.engaged() == []  # readers ignore an expired switch at once
    assert switch_expire_due() == ["tool:apply_credit"]
    assert switch_expire_due() == []  # conditional: lifted once
    switch = KillSwitch.objects.get()
    assert not switch.engaged and switch.changed_by_label == "expiry"
    expired = AuditEvent.objects.get(action="switch.expired")
    assert expired.payload["engaged_by"] == "operator" and expired.payload["reason"] == "until the fix"


def test_expired_pause_reenqueues_its_runs(
    start_run, operator, monkeypatch, django_capture_on_commit_callbacks
):
    from agents import tasks

    sent = []
    monkeypatch.setattr(tasks, "send_run", lambda run_id: sent.append(run_id))
    switch_engage(
        actor=operator,
        scope="agent",
        target="support",
        reason="p",
        expires_at=timezone.now() + timedelta(minutes=1),
    )
    run = start_run(QUESTION)
    with django_capture_on_commit_callbacks(execute=True):
        switch_expire_due(now=timezone.now() + timedelta(minutes=2))
    assert str(run.public_id) in sent


def test_expiry_in_the_past_is_refused(runtime, operator):
    with pytest.raises(InvalidInput, match="past"):
        switch_engage(actor=operator, scope="global", reason="x", expires_at=timezone.now() - timedelta(1))


# --- propagation -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_cached_view_follows_the_version_key_and_the_ttl_backs_up_a_missed_bump(runtime, operator):
    assert switch_state.engaged() == []
    switch_engage(actor=operator, scope="tool", target="draft_reply", reason="flip")
    assert [str(s) for s in switch_state.engaged()] == ["tool:draft_reply"]  # bumped: re-read
    # A change that bypasses the services (no bump): the cached copy stays until the TTL.
    KillSwitch.objects.filter(scope="tool").update(engaged=False, reason="")
    with override_settings(SWITCHES_CACHE_TTL_SECONDS=3600):
        assert [str(s) for s in switch_state.engaged()] == ["tool:draft_reply"]
        assert switch_state.engaged(fresh=True) == []
    with override_settings(SWITCHES_CACHE_TTL_SECONDS=0):
        assert switch_state.engaged() == []
    before = switch_state.read_version()
    switch_state.bump_version()
    assert switch_state.read_version() not in (before, "0")


@pytest.mark.django_db(transaction=True)
def test_write_tools_read_the_authority_even_when_the_cache_is_stale(runtime, operator):
    with override_settings(SWITCHES_CACHE_TTL_SECONDS=3600):
        assert switch_state.engaged() == []
        KillSwitch.objects.create(scope="tool", target="draft_reply", engaged=True, reason="direct")
        assert switch_state.engaged() == []  # stale on purpose (no bump)
        assert "draft_reply" in switch_state.tool_gate(tool="draft_reply", writes=True)
        assert switch_state.tool_gate(tool="draft_reply", writes=False) is None  # the cached path


def test_without_redis_the_version_is_a_file_every_process_reads(tmp_path, settings, monkeypatch):
    settings.SWITCHES_REDIS_URL = ""
    settings.VAR_DIR = tmp_path
    assert switch_state.read_version() == "0"  # never bumped
    switch_state.bump_version()
    token = switch_state.read_version()
    assert token != "0" and (tmp_path / "switches.version").read_text() == token
    assert [p.name for p in tmp_path.iterdir()] == ["switches.version"]  # no temporary left
    # a bump that cannot replace the file (full disk, say) leaves no temporary either, and
    # the flip that asked for it goes on: readers catch up within the TTL
    import os

    def refuse(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    switch_state.bump_version()
    monkeypatch.undo()
    assert switch_state.read_version() == token
    assert [p.name for p in tmp_path.iterdir()] == ["switches.version"]
    (tmp_path / "switches.version").unlink()
    (tmp_path / "switches.version").mkdir()
    with pytest.raises(switch_state.SwitchStoreUnavailable, match="version file unreadable"):
        switch_state.read_version()
    assert "fail closed" in switch_state.tool_gate(tool="draft_reply", writes=True)


@override_settings(SWITCHES_REDIS_URL="redis://127.0.0.1:1/0", SWITCHES_REDIS_TIMEOUT_SECONDS=0.2)
def test_unreachable_switch_store_fails_closed_for_writes_and_reads_keep_working(
    start_run, step, pending_request, lead
):
    with pytest.raises(switch_state.SwitchStoreUnavailable):
        switch_state.read_version()
    run = step(start_run(REFUND))
    assert run.status == RunStatus.WAITING_APPROVAL  # the run's first write is the credit: parked
    approval_decide(actor=lead, request=pending_request(run), decision="approve", reason="dup")
    run = step(run)
    assert run.status == RunStatus.KILLED
    assert "unreachable" in run.terminal_reason and "fail closed" in run.terminal_reason
    assert run.invocations.get(tool="apply_credit").state == "refused"
    assert not CreditLedger.objects.exists()
    assert run.invocations.get(tool="lookup_subscription").state == "succeeded"
    assert AuditEvent.objects.filter(action="tool.refused", trace_id=run.trace_id).exists()
    assert step(start_run(QUESTION)).status == RunStatus.SUCCEEDED


# --- blast radius ------------------------------------------------------------------------------


def test_blast_radius_counts_active_runs_parked_approvals_and_recent_volume(start_run, step):
    parked = step(start_run(REFUND))
    assert parked.status == RunStatus.WAITING_APPROVAL
    start_run(QUESTION)  # queued
    credit = switch_state.blast_radius(scope="tool", target="apply_credit")
    assert credit["parked_approvals"] == 1 and credit["queued"] == 1
    assert credit["recent_volume"] == 1  # the proposed credit
    intent = switch_state.blast_radius(scope="intent", target="billing_refund")
    assert intent["parked_approvals"] == 1 and intent["recent_volume"] == 1 and intent["queued"] == 0
    everything = switch_state.blast_radius(scope="global", target="")
    assert everything["queued"] == 1 and everything["recent_volume"] == 2
    lookups = switch_state.blast_radius(scope="tool", target="lookup_subscription")
    assert lookups["parked_approvals"] == 0 and lookups["recent_volume"] == 1
