"""The cheap paths of the step loop keep the invariants of the slow ones.

An allowed call inserts its invocation already ``started`` (one committed statement before
the tool runs); a step that already has an invocation (a resumed run, a redelivered
message) falls back to the general path. A model step's spend settlement is written in the
step's own transaction, and on its own when that transaction does not commit.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from agents import broker, runtime
from agents.models import AgentRun, InvocationState, RunStatus, StepKind, TenantSpend, ToolInvocation
from agents.tools import get_tool
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db

QUESTION = "What plan is customer C-1002 on?"


def _planned(start_run) -> tuple[AgentRun, str, dict]:
    """A run claimed by this test with its first model step committed: a lookup pending."""
    run = start_run(QUESTION)
    lease, run = runtime._claim(run_pk=run.pk, worker="pytest")
    assert runtime._step(run, lease) is None
    run = AgentRun.objects.select_related("agent", "tenant").get(pk=run.pk)
    pending = run.state["pending"]
    assert pending["tool"] == "lookup_subscription"
    return run, lease, pending


def _started_elsewhere(run: AgentRun, pending: dict) -> ToolInvocation:
    invocation = broker.invocation_start(
        run=run,
        step_seq=pending["seq"],
        tool=get_tool(pending["tool"]),
        arguments=pending["arguments"],
        lease_token="another-worker",
        decision="allow",
        decision_reason="default for tier read",
        policy_version=1,
    )
    assert invocation is not None and invocation.state == InvocationState.STARTED
    return invocation


def test_allowed_call_records_its_key_outcome_and_holder(start_run):
    run, lease, pending = _planned(start_run)
    assert runtime._step(run, lease) is None
    invocation = ToolInvocation.objects.get(run=run, step_seq=pending["seq"])
    assert invocation.state == InvocationState.SUCCEEDED and invocation.holder == lease
    assert invocation.idempotency_key == broker.idempotency_key_for(
        run_public_id=str(run.public_id), step_seq=pending["seq"], arguments=pending["arguments"]
    )
    assert invocation.result["customer"] == "C-1002" and invocation.attempts == 1
    # a second insert for the same step is refused: the general path takes over
    assert _try_start_again(run, pending) is None


def _try_start_again(run, pending):
    return broker.invocation_start(
        run=run,
        step_seq=pending["seq"],
        tool=get_tool(pending["tool"]),
        arguments=pending["arguments"],
        lease_token="late",
        decision="allow",
        decision_reason="",
        policy_version=1,
    )


def _seen_from_inside(tool_name, run, seq):
    """Run the pending step; return the invocation rows of the step as the tool saw them."""
    tool = get_tool(tool_name)
    original, seen = tool.func, []

    def look_then_run(ctx, arguments):
        seen.extend(ToolInvocation.objects.filter(run=run, step_seq=seq).values_list("state", "holder"))
        return original(ctx, arguments)

    object.__setattr__(tool, "func", look_then_run)  # Tool is frozen; restored below
    return tool, original, seen


def test_call_with_a_side_effect_is_recorded_started_before_it_runs(start_run):
    run, lease, _ = _planned(start_run)
    pending = runtime.pending_action(
        run, {"tool": "draft_reply", "arguments": {"customer": "C-1002", "body": "Hello"}}
    )
    run.state = {**run.state, "pending": pending}
    tool, original, seen = _seen_from_inside("draft_reply", run, pending["seq"])
    try:
        assert runtime._step(run, lease) is None
    finally:
        object.__setattr__(tool, "func", original)
    assert seen == [(InvocationState.STARTED, lease)]
    invocation = ToolInvocation.objects.get(run=run, step_seq=pending["seq"])
    assert invocation.state == InvocationState.SUCCEEDED and invocation.attempts == 1


def test_pure_read_is_recorded_with_its_step_not_before(start_run):
    run, lease, pending = _planned(start_run)
    tool, original, seen = _seen_from_inside(pending["tool"], run, pending["seq"])
    try:
        assert runtime._step(run, lease) is None
    finally:
        object.__setattr__(tool, "func", original)
    assert seen == []  # nothing to protect: a read changes nothing
    invocation = ToolInvocation.objects.get(run=run, step_seq=pending["seq"])
    tool_step = run.steps.get(kind=StepKind.TOOL)
    assert tool_step.invocation_id == invocation.pk and invocation.state == InvocationState.SUCCEEDED
    assert invocation.holder == lease and invocation.attempts == 1 and invocation.started_at is not None


def test_resumed_step_does_not_start_a_call_in_flight_elsewhere(start_run):
    run, lease, pending = _planned(start_run)
    _started_elsewhere(run, pending)
    with pytest.raises(runtime.RetryLater):
        runtime._step(run, lease)
    invocation = ToolInvocation.objects.get(run=run, step_seq=pending["seq"])
    assert invocation.state == InvocationState.STARTED and invocation.holder == "another-worker"
    assert not run.steps.filter(kind=StepKind.TOOL).exists()


def test_resumed_step_replays_a_finished_call_instead_of_acting_again(start_run):
    run, lease, pending = _planned(start_run)
    invocation = _started_elsewhere(run, pending)
    stored = {"customer": "C-1002", "stored": "by the first execution"}
    ToolInvocation.objects.filter(pk=invocation.pk).update(
        state=InvocationState.SUCCEEDED, result=stored, attempts=1
    )
    assert runtime._step(run, lease) is None
    tool_step = run.steps.get(kind=StepKind.TOOL)
    assert tool_step.output["replayed"] is True and tool_step.output["result"] == stored
    assert AuditEvent.objects.filter(action="tool.replayed", trace_id=run.trace_id).exists()
    # not executed again: the stored result stands (a real lookup never returns "stored")
    assert ToolInvocation.objects.get(pk=invocation.pk).result == stored


def test_spend_is_settled_exactly_once_per_model_step(start_run, step):
    run = step(start_run(QUESTION))
    assert run.status == RunStatus.SUCCEEDED
    model_cost = sum(run.steps.filter(kind=StepKind.MODEL).values_list("cost_usd", flat=True))
    assert model_cost > 0
    # every reservation replaced by the actual cost: nothing left reserved, nothing refunded twice
    assert TenantSpend.objects.get(tenant_id=run.tenant_id).spent_usd == model_cost == run.cost_usd


def test_spend_is_settled_when_the_step_commit_loses_its_lease(start_run):
    run = start_run(QUESTION)
    lease, run = runtime._claim(run_pk=run.pk, worker="pytest")
    AgentRun.objects.filter(pk=run.pk).update(lease_token="taken-over")
    with pytest.raises(runtime.LeaseLost):
        runtime._step(run, lease)
    assert not run.steps.exists()
    spent = TenantSpend.objects.get(tenant_id=run.tenant_id).spent_usd
    # the model call's actual cost, not the reservation left behind (nor zero)
    assert Decimal(0) < spent < runtime._reserve_estimate()


def test_hand_written_step_write_stores_what_the_orm_would(start_run):
    run, lease, pending = _planned(start_run)
    before = AgentRun.objects.get(pk=run.pk)
    assert runtime._step(run, lease) is None
    after = AgentRun.objects.get(pk=run.pk)
    assert after.next_seq == before.next_seq + 1 and after.wall_ms > before.wall_ms
    assert after.lease_token == lease and after.lease_expires_at > before.lease_expires_at
    assert "pending" not in after.state and after.state["observations"][0]["ok"] is True
    tool_step = run.steps.get(kind=StepKind.TOOL)
    invocation = ToolInvocation.objects.get(run=run, step_seq=pending["seq"])
    assert tool_step.seq == before.next_seq and tool_step.trace_id == run.trace_id
    assert tool_step.invocation_id == invocation.pk and tool_step.policy_decision == "allow"
    # JSON columns are documents (not strings), redacted and bounded as before
    assert tool_step.input == {"arguments": pending["arguments"], "tier": "read"}
    assert tool_step.output["result"]["customer"] == "C-1002"
    assert tool_step.output["idempotency_key"] == invocation.idempotency_key
    assert tool_step.started_at <= after.updated_at and tool_step.duration_ms > 0
    assert invocation.finished_at is not None and invocation.latency_ms > 0
    assert invocation.created_at is not None and invocation.tenant_id == run.tenant_id


def _lose_lease_mid_call(run, lease, tool_name):
    """Run the pending step while another worker takes the run during the tool call."""
    tool = get_tool(tool_name)
    original = tool.func

    def take_over_then_run(ctx, arguments):
        AgentRun.objects.filter(pk=run.pk).update(lease_token="taken-over")
        return original(ctx, arguments)

    object.__setattr__(tool, "func", take_over_then_run)  # Tool is frozen; restored below
    try:
        with pytest.raises(runtime.LeaseLost):
            runtime._step(run, lease)
    finally:
        object.__setattr__(tool, "func", original)


def test_tool_step_that_loses_its_lease_writes_no_step_but_records_the_outcome(start_run):
    run, lease, _ = _planned(start_run)
    # a call with a side effect: its invocation is durable before it runs
    pending = runtime.pending_action(
        run, {"tool": "draft_reply", "arguments": {"customer": "C-1002", "body": "Hello"}}
    )
    run.state = {**run.state, "pending": pending}
    steps = run.steps.count()
    events = AuditEvent.objects.filter(trace_id=run.trace_id).count()
    _lose_lease_mid_call(run, lease, "draft_reply")
    assert run.steps.count() == steps  # fenced: no step, no step event
    trail = AuditEvent.objects.filter(trace_id=run.trace_id)
    assert trail.exclude(action="reply.drafted").count() == events
    assert trail.filter(action="reply.drafted").count() == 1  # the tool's own record of its effect
    invocation = ToolInvocation.objects.get(run=run, step_seq=pending["seq"])
    assert invocation.state == InvocationState.SUCCEEDED  # the side effect is on record


def test_pure_read_that_loses_its_lease_writes_nothing(start_run):
    run, lease, pending = _planned(start_run)
    assert pending[runtime.UNRECORDED] is True
    steps = run.steps.count()
    events = AuditEvent.objects.filter(trace_id=run.trace_id).count()
    _lose_lease_mid_call(run, lease, pending["tool"])
    assert run.steps.count() == steps
    assert AuditEvent.objects.filter(trace_id=run.trace_id).count() == events
    # a read changed nothing: no row until a step that holds the lease records it
    assert not ToolInvocation.objects.filter(run=run, step_seq=pending["seq"]).exists()


def test_unsupported_expression_falls_back_to_the_orm(start_run):
    from django.db import transaction
    from django.db.models import F

    from agents import hotsql

    run, lease, _ = _planned(start_run)
    with transaction.atomic():
        assert hotsql.step_write(
            run_pk=run.pk, lease=lease, run_fields={"wall_ms": F("wall_ms") * 2}, step=None,
            seq=run.next_seq, trace_id=run.trace_id,
        ) is None
        ok, step_id = hotsql.step_write(
            run_pk=run.pk, lease="wrong", run_fields={"wall_ms": F("wall_ms") + 1.0}, step=None,
            seq=run.next_seq, trace_id=run.trace_id,
        )
    assert ok is False and step_id is None


def test_skipping_get_db_prep_save_only_where_it_is_the_identity():
    """``hotsql._prep`` passes plain values straight through for some fields; for every
    such field and plain value the result is what ``get_db_prep_save`` gives."""
    import datetime as dt
    import uuid

    from django.db import connection

    from agents import hotsql
    from agents.models import Step

    samples = ["text", "", 0, 7, 2**40, True, False, 1.5, Decimal("0.25"), uuid.uuid4(), None,
               dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)]
    checked = 0
    for model in (AgentRun, Step, ToolInvocation, TenantSpend):
        for field in model._meta.concrete_fields:
            if hotsql._identity_types(field) is None:
                continue  # always the ORM's preparation (JSON, ...)
            for value in samples:
                try:
                    expected = field.get_db_prep_save(value, connection)
                except Exception:  # the field refuses the value: so must the fast path
                    with pytest.raises(Exception):
                        hotsql._prep(field, value, connection)
                    continue
                got = hotsql._prep(field, value, connection)
                assert type(got) is type(expected) and got == expected, (field, value)
                checked += 1
    assert checked > 100


def test_hand_written_switch_read_returns_what_the_orm_query_returns():
    import datetime as dt

    from django.db.models import Q
    from django.utils import timezone

    from agents import hotsql
    from agents.models import KillSwitch

    now = timezone.now()
    KillSwitch.objects.create(scope="tool", target="apply_credit", engaged=True, reason="r")
    KillSwitch.objects.create(scope="tool", target="draft_reply", engaged=True, reason="r",
                              expires_at=now + dt.timedelta(minutes=5), changed_at=now)
    KillSwitch.objects.create(scope="intent", target="refund", engaged=True, reason="r",
                              expires_at=now - dt.timedelta(seconds=1))  # expired
    KillSwitch.objects.create(scope="agent", target="support", engaged=False)
    orm = list(KillSwitch.objects.filter(engaged=True)
               .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now)).order_by("pk"))
    fast = sorted(hotsql.switches_engaged(now), key=lambda s: s.pk)
    assert [s.target for s in fast] == ["apply_credit", "draft_reply"]
    for a, b in zip(orm, fast, strict=True):
        for field in KillSwitch._meta.concrete_fields:
            assert getattr(a, field.attname) == getattr(b, field.attname), field.name


@pytest.mark.django_db(transaction=True)
def test_autocommitted_steps_append_their_events_in_order_to_a_valid_chain(start_run, step):
    """Outside a transaction (production), a step statement appends its events itself at its
    end (audit_chain_append_many) instead of staging them: same chain, same order."""
    from django.db import connection

    from audit.verify import verify_chain

    postgres = connection.vendor == "postgresql"

    def staged() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM audit_stage")
            return cursor.fetchone()[0]

    staged_before = staged() if postgres else 0
    run = step(start_run(QUESTION))
    assert run.status == RunStatus.SUCCEEDED
    actions = list(AuditEvent.objects.filter(trace_id=run.trace_id).order_by("seq")
                   .values_list("action", flat=True))
    assert actions == ["run.created", "run.started", "model.called", "tool.executed",
                       "model.called", "tool.executed", "model.called", "run.succeeded"]
    if postgres:  # only run_start's and the claim's events (ordinary transactions) staged
        assert staged() - staged_before <= 2
    assert verify_chain().ok


@pytest.mark.django_db(transaction=True)
def test_a_durable_step_waits_for_the_flush_after_releasing_the_chain(start_run):
    """Outside a transaction, a durable step (here the model steps) commits its statement
    asynchronously -- the audit chain's lock is not held through the fsync -- and then
    waits for the flush in a tiny synchronous transaction (the commit barrier); a pure
    read's step, whose loss recovery covers, does not wait at all."""
    import tempfile

    from django.db import connection
    from psycopg import pq

    if connection.vendor != "postgresql":
        pytest.skip("the commit barrier is PostgreSQL's")
    run = start_run(QUESTION)
    lease, run = runtime._claim(run_pk=run.pk, worker="pytest")
    pgconn = connection.connection.pgconn
    sent = {}
    for name in ("model", "read"):
        run = AgentRun.objects.select_related("agent", "tenant").get(pk=run.pk)  # as the loop does
        with tempfile.TemporaryFile("w+") as trace:
            pgconn.trace(trace.fileno())
            pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
            try:
                assert runtime._step(run, lease) is None
            finally:
                pgconn.untrace()
            trace.seek(0)
            sent[name] = [line for line in trace.read().splitlines() if line.startswith("F\t")]
    statement = next(m for m in sent["model"] if "audit_chain_append_many" in m)
    assert "set_config('synchronous_commit', 'off', true)" in statement
    after = "\n".join(sent["model"][sent["model"].index(statement):])
    assert "pg_logical_emit_message" in after  # then the barrier, its own transaction
    read = "\n".join(sent["read"])
    assert "audit_chain_append_many" in read and "pg_logical_emit_message" not in read
    assert AuditEvent.objects.filter(trace_id=run.trace_id, action="tool.executed").count() == 1


def test_hot_statements_are_prepared_on_postgresql(start_run):
    """The step statement runs prepared after a few steps (DATABASE_PREPARE_THRESHOLD):
    the server stops parsing and planning it on every step."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("server-side prepared statements are a PostgreSQL feature")
    threshold = connection.connection.prepare_threshold
    assert threshold == 5  # settings' default; Django's own would be None (never)
    run = start_run(QUESTION)
    lease, run = runtime._claim(run_pk=run.pk, worker="pytest")
    for n in range(threshold + 2):
        run.state = {"pending": runtime.pending_action(
            run, {"tool": "lookup_subscription", "arguments": {"customer": "C-1002"}}
        )}
        assert runtime._step(run, lease) is None, n
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT statement FROM pg_prepared_statements WHERE statement LIKE 'WITH r AS (UPDATE%%'"
        )
        prepared = [row[0] for row in cursor.fetchall()]
    assert prepared and all("$1" in text for text in prepared)
