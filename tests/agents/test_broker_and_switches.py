"""The broker's idempotency and credentials, kill switches, policy storage, database guards."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from agents import broker
from agents.credentials import CredentialError, credential_issue, credential_verify
from agents.models import (
    AgentRun,
    InvocationState,
    KillSwitch,
    Policy,
    RunStatus,
    TenantSpend,
    ToolInvocation,
)
from agents.services.policies import policy_create
from agents.services.spend import spend_reserve
from agents.services.switches import switch_engage, switch_release, switches_active_for
from agents.tools import get_tool
from approvals.services import approval_decide
from audit.models import AuditEvent
from console.errors import Conflict, InvalidInput
from support.models import AccountChange, CreditLedger, Customer
from tests.agents.conftest import REFUND

pytestmark = pytest.mark.django_db
postgres_only = pytest.mark.skipif("connection.vendor != 'postgresql'", reason="needs PostgreSQL")


# --- broker -------------------------------------------------------------------------------


def _credit_invocation(run, **args):
    tool = get_tool("apply_credit")
    arguments = {"customer": "C-1001", "amount_cents": 4000, "reason": "dup", "ticket": "C-1001-T2",
                 "charges": ["ch_0_3b"], **args}
    return tool, broker.invocation_propose(run=run, step_seq=1, tool=tool, arguments=arguments)


def test_same_key_same_arguments_returns_the_stored_result(start_run):
    run = start_run(REFUND)
    tool, invocation = _credit_invocation(run)
    first = broker.broker_execute(run=run, invocation=invocation, tool=tool, lease_token="L1")
    ToolInvocation.objects.filter(pk=invocation.pk).update(**broker.invocation_finish_fields(first))
    again = broker.invocation_propose(run=run, step_seq=1, tool=tool, arguments=dict(invocation.arguments))
    assert again.pk == invocation.pk
    second = broker.broker_execute(run=run, invocation=again, tool=tool, lease_token="L2")
    assert second.replayed and second.result == first.result
    assert CreditLedger.objects.count() == 1


def test_same_step_with_other_arguments_is_an_error(start_run):
    run = start_run(REFUND)
    _credit_invocation(run)
    with pytest.raises(broker.IdempotencyConflict):
        _credit_invocation(run, amount_cents=9999)


def test_key_is_derived_from_run_step_and_canonical_arguments():
    a = broker.idempotency_key_for(run_public_id="r", step_seq=3, arguments={"a": 1, "b": 2})
    b = broker.idempotency_key_for(run_public_id="r", step_seq=3, arguments={"b": 2, "a": 1})
    assert a == b and a.startswith("idk_")
    assert a != broker.idempotency_key_for(run_public_id="r", step_seq=4, arguments={"a": 1, "b": 2})


def test_a_call_in_flight_is_not_started_twice(start_run):
    run = start_run(REFUND)
    tool, invocation = _credit_invocation(run)
    ToolInvocation.objects.filter(pk=invocation.pk).update(
        state=InvocationState.STARTED, holder="other-worker", started_at=timezone.now()
    )
    invocation.refresh_from_db()
    with pytest.raises(broker.InFlight):
        broker.broker_execute(run=run, invocation=invocation, tool=tool, lease_token="mine")
    assert not CreditLedger.objects.exists()


def test_an_orphaned_call_is_taken_over_and_the_tool_dedupes(start_run):
    run = start_run(REFUND)
    tool, invocation = _credit_invocation(run)
    first = broker.broker_execute(run=run, invocation=invocation, tool=tool, lease_token="dead")
    assert first.ok  # the credit was written, but the worker "died" before recording it
    ToolInvocation.objects.filter(pk=invocation.pk).update(
        started_at=timezone.now() - timezone.timedelta(seconds=60)
    )
    invocation.refresh_from_db()
    assert invocation.state == InvocationState.STARTED
    second = broker.broker_execute(run=run, invocation=invocation, tool=tool, lease_token="new")
    assert second.ok and second.result["replayed"] is True
    assert CreditLedger.objects.count() == 1


def test_tool_refuses_a_credential_for_another_tool_or_expired(acme):
    token = credential_issue(
        tenant_id=str(acme.pk), tenant_slug="acme", run_id="r", tool="lookup_subscription"
    )
    assert credential_verify(token, tool="lookup_subscription").tenant_slug == "acme"
    with pytest.raises(CredentialError, match="scoped to"):
        credential_verify(token, tool="apply_credit")
    expired = credential_issue(
        tenant_id=str(acme.pk), tenant_slug="acme", run_id="r", tool="x", ttl_seconds=-1
    )
    with pytest.raises(CredentialError, match="expired"):
        credential_verify(expired, tool="x")
    with pytest.raises(CredentialError, match="signature"):
        credential_verify(token[:-3] + "abc", tool="lookup_subscription")


def test_tool_takes_the_tenant_from_the_credential_not_the_arguments(runtime, globex):
    from agents.tools.registry import ToolContext, ToolError

    ctx = ToolContext(
        credential=credential_issue(
            tenant_id=str(globex.pk), tenant_slug="globex", run_id="r", tool="lookup_subscription"
        ),
        idempotency_key="k",
        run_pk=0,
        run_public_id="r",
        trace_id="t",
        deadline=0,
    )
    with pytest.raises(ToolError, match="Customer C-1001 not found in tenant globex"):
        get_tool("lookup_subscription").func(ctx, {"customer": "C-1001"})


@postgres_only
def test_concurrent_executions_of_one_key_give_one_credit(start_run, transactional_db):
    run = start_run(REFUND)
    tool, invocation = _credit_invocation(run)
    results, barrier = [], threading.Barrier(4)

    def go(n):
        try:
            barrier.wait()
            inv = ToolInvocation.objects.get(pk=invocation.pk)
            results.append(broker.broker_execute(run=run, invocation=inv, tool=tool, lease_token=f"L{n}"))
        except broker.InFlight:
            results.append("in_flight")
        finally:
            connection.close()

    threads = [threading.Thread(target=go, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert CreditLedger.objects.count() == 1
    assert len(results) == 4  # every thread answered (an exception would be missing here)
    assert sum(1 for r in results if r != "in_flight") == 1


# --- budgets: the daily cap is reserved atomically -------------------------------------


@postgres_only
def test_concurrent_reservations_cannot_overspend_the_cap(runtime, acme, transactional_db):
    from agents.models import TenantBudget

    TenantBudget.objects.create(tenant=acme, daily_cap_usd=Decimal("1.00"))
    wins, barrier = [], threading.Barrier(8)

    def go():
        try:
            barrier.wait()
            for _ in range(5):
                ok, _ = spend_reserve(tenant_id=acme.pk, amount=Decimal("0.10"))
                wins.append(ok)
        finally:
            connection.close()

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 40  # every reservation answered
    assert wins.count(True) == 10
    assert TenantSpend.objects.get(tenant=acme).spent_usd == Decimal("1.00")


# --- kill switches ----------------------------------------------------------------------


def test_switch_engage_needs_a_reason_and_a_known_target(operator):
    with pytest.raises(InvalidInput, match="reason"):
        switch_engage(actor=operator, scope="tool", target="apply_credit", reason=" ")
    with pytest.raises(InvalidInput, match="Unknown tool"):
        switch_engage(actor=operator, scope="tool", target="nope", reason="x")
    with pytest.raises(Conflict):
        switch_release(actor=operator, scope="tool", target="apply_credit")


def test_switches_active_for_matches_scope_and_honours_expiry(operator):
    switch_engage(actor=operator, scope="tool", target="apply_credit", reason="incident 42")
    switch_engage(
        actor=operator,
        scope="intent",
        target="billing_refund",
        reason="route",
        expires_at=timezone.now() + timezone.timedelta(minutes=5),
    )
    assert [str(s) for s in switches_active_for(tool="apply_credit")] == ["tool:apply_credit"]
    assert switches_active_for(tool="lookup_subscription") == []
    assert len(switches_active_for(intent="billing_refund")) == 1
    KillSwitch.objects.filter(scope="intent").update(expires_at=timezone.now())
    assert switches_active_for(intent="billing_refund") == []
    switch_release(actor=operator, scope="tool", target="apply_credit", reason="fixed")
    assert switches_active_for(tool="apply_credit") == []
    assert AuditEvent.objects.filter(action__in=["switch.engaged", "switch.released"]).count() == 3


def test_tool_switch_refuses_credit_but_lookups_keep_working(
    start_run, step, pending_request, lead, operator
):
    run = step(start_run(REFUND))
    approval_decide(actor=lead, request=pending_request(run), decision="approve", reason="ok")
    switch_engage(actor=operator, scope="tool", target="apply_credit", reason="ledger incident")
    run = step(run)
    assert run.status == RunStatus.KILLED and "ledger incident" in run.terminal_reason
    assert not CreditLedger.objects.exists()
    assert AuditEvent.objects.filter(action="tool.refused", trace_id=run.trace_id).exists()
    assert step(start_run("What plan is customer C-1002 on?")).status == RunStatus.SUCCEEDED


def test_global_switch_kills_and_intent_switch_hands_off(start_run, step, operator):
    switch_engage(actor=operator, scope="intent", target="billing_refund", reason="billing to humans")
    run = step(start_run(REFUND))
    assert run.status == RunStatus.HANDED_OFF and "billing to humans" in run.terminal_reason
    switch_engage(actor=operator, scope="global", reason="stop everything")
    run = step(start_run("What plan is customer C-1002 on?"))
    assert run.status == RunStatus.KILLED and not run.steps.filter(kind="tool").exists()


def test_agent_pause_parks_the_run_as_queued_without_a_worker(start_run, step, operator):
    switch_engage(actor=operator, scope="agent", target="support", reason="pause")
    run = step(start_run("What plan is customer C-1002 on?"))
    assert run.status == RunStatus.QUEUED and run.lease_token == ""
    switch_release(actor=operator, scope="agent", target="support")
    assert step(run).status == RunStatus.SUCCEEDED


def test_force_approval_switch_turns_allow_into_require_approval(
    start_run, step, operator, admin, pending_request
):
    from agents.runtime import UNRECORDED

    switch_engage(actor=operator, scope="approval", target="read", reason="audit week")
    run = step(start_run("What plan is customer C-1002 on?"))
    assert run.status == RunStatus.WAITING_APPROVAL
    # the parked read has its invocation row now, and the pending action says so: when it
    # resumes, even with approval no longer forced, it must find that row (the decision)
    pending = run.state["pending"]
    assert UNRECORDED not in pending
    parked = ToolInvocation.objects.get(run=run, step_seq=pending["seq"])
    assert parked.state == InvocationState.AWAITING_APPROVAL
    switch_release(actor=operator, scope="approval", target="read")
    approval_decide(actor=admin, request=pending_request(run), decision="reject", reason="not today")
    run = step(run)
    assert run.status == RunStatus.DENIED and "rejected by admin" in run.terminal_reason
    # the rejected read never ran: its one row is the rejected proposal
    assert ToolInvocation.objects.get(run=run, step_seq=pending["seq"]).state == InvocationState.REJECTED
    assert ToolInvocation.objects.filter(run=run).count() == 1


@pytest.mark.parametrize(
    ("message", "tool", "queue_user"),
    [(REFUND, "apply_credit", "lead"),
     ("Please suspend customer C-1003's account, fraud suspected", "update_account_status", "accounts")],
)
def test_every_write_to_our_own_tables_rechecks_switches_in_its_transaction(
    start_run, step, pending_request, seeded, operator, message, tool, queue_user
):
    """Engaged after the broker's pre-execution check: the tool's in-transaction re-read
    still refuses, for the credit ledger and for account status changes alike."""
    from agents import runtime as rt

    run = step(start_run(message))
    assert run.status == RunStatus.WAITING_APPROVAL, run.terminal_reason
    approval_decide(actor=seeded["users"][queue_user], request=pending_request(run),
                    decision="approve", reason="ok")
    original = rt.switches_active_for
    flipped = []

    def late_flip(**kwargs):
        found = original(**kwargs)
        if kwargs.get("tool") == tool and not flipped:
            flipped.append(True)
            switch_engage(actor=operator, scope="tool", target=tool, reason="flipped late")
        return found

    rt.switches_active_for = late_flip
    try:
        run = step(run)
    finally:
        rt.switches_active_for = original
    assert flipped and run.status == RunStatus.KILLED
    assert f"{tool} refused: kill switch tool:{tool}" in run.terminal_reason
    assert ToolInvocation.objects.get(tool=tool).attempts == 1  # the tool itself refused
    assert not CreditLedger.objects.exists()
    assert not AccountChange.objects.exists()
    assert not Customer.objects.exclude(status="active").exists()


# --- policies and database guards -------------------------------------------------------


def test_exactly_one_policy_is_active(runtime, operator):
    from agents.policy import DEFAULT_RULES

    v2 = policy_create(actor=operator, rules=DEFAULT_RULES, description="v2", activate=True)
    assert list(Policy.objects.filter(is_active=True).values_list("version", flat=True)) == [v2.version]
    with pytest.raises(IntegrityError), transaction.atomic():
        Policy.objects.filter(version=1).update(is_active=True)
    with pytest.raises(InvalidInput, match="policy rules invalid"):
        policy_create(actor=operator, rules={"tiers": {}, "rules": []})
    created = AuditEvent.objects.filter(action="policy.created")
    assert list(created.values_list("object_id", flat=True)) == [str(v.version) for v in
                                                                  Policy.objects.order_by("version")]
    assert created.get(object_id=str(v2.version)).actor_label == "operator"


@pytest.mark.parametrize(("condition", "message"), [
    ({"fact": "customer_scope", "op": "in", "value": "other_tenant"}, "is not of type 'array'"),
    ({"arg": "amount_cents", "op": "gt", "value": "100000"}, "is not of type 'number'"),
    ({"arg": "amount_cents", "op": "between", "value": 1}, "is not one of"),
])
def test_a_condition_whose_value_cannot_work_with_its_op_is_refused(runtime, operator, condition, message):
    from agents.policy import DEFAULT_RULES

    rules = {**DEFAULT_RULES, "rules": [{"id": "r", "effect": "deny", "when": [condition]}]}
    with pytest.raises(InvalidInput, match=rf"policy rules invalid at rules/0/when/0.*{message}"):
        policy_create(actor=operator, rules=rules)
    assert list(Policy.objects.values_list("version", flat=True)) == [1]  # nothing written


@postgres_only
def test_a_final_run_status_is_final_in_the_database(start_run, step):
    run = step(start_run("What plan is customer C-1002 on?"))
    with pytest.raises(Exception, match=r"run_final_status_is_final|pgtrigger"), transaction.atomic():
        AgentRun.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING)


def test_run_status_check_constraint(start_run):
    run = start_run(REFUND)
    with pytest.raises(IntegrityError), transaction.atomic():
        AgentRun.objects.filter(pk=run.pk).update(status="paused")


def test_credit_idempotency_key_is_unique(runtime, acme):
    customer = Customer.objects.get(tenant=acme, code="C-1001")
    CreditLedger.objects.create(
        tenant=acme, customer=customer, amount_cents=1, reason="x", idempotency_key="k"
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        CreditLedger.objects.create(
            tenant=acme, customer=customer, amount_cents=1, reason="x", idempotency_key="k"
        )


def test_sweeper_reenqueues_runs_whose_worker_died(start_run, monkeypatch):
    from agents import tasks
    from agents.services.runs import run_sweep

    sent = []
    monkeypatch.setattr(tasks, "send_run", lambda run_id: sent.append(run_id))
    run = start_run(REFUND)
    AgentRun.objects.filter(pk=run.pk).update(
        status=RunStatus.RUNNING,
        lease_token="dead",
        lease_expires_at=timezone.now() - timezone.timedelta(seconds=1),
    )
    fresh = start_run("What plan is customer C-1002 on?")
    assert run_sweep() == [str(run.public_id)]
    later = timezone.now() + timezone.timedelta(seconds=120)
    assert set(run_sweep(now=later)) == {str(run.public_id), str(fresh.public_id)}
