"""Approval requests and handoffs name their subject instead of holding foreign keys to the
runtime (approvals/migrations/0004_subjects). A database migrated before keeps its rows:
the run, the call and the trace are copied into the subject fields, the constraints and
indexes the queue needs hold on them, and migrating back fills the keys again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from agents.approval_subject import KIND, requests_of, run_subject
from agents.models import AgentRun
from approvals.models import ApprovalDecision, ApprovalRequest, ApprovalStatus, Handoff

pytestmark = pytest.mark.django_db(transaction=True)
IS_POSTGRES = "postgresql" in settings.DATABASES["default"]["ENGINE"]

BEFORE = ("approvals", "0003_queue_sla_claims_handoffs")
DUE = datetime(2026, 3, 3, tzinfo=UTC)


def migrate(targets) -> MigrationExecutor:
    MigrationExecutor(connection).migrate(targets)
    return MigrationExecutor(connection)  # a fresh loader sees what is applied now


def leaves() -> list[tuple[str, str]]:
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


# Not Django's introspection: on SQLite it trips over these tables' CHECK (status IN (...)).


def indexes(table: str) -> dict[str, str]:
    """Index name -> its definition, unquoted (unique constraints are indexes too)."""
    sql = (
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s"
        if connection.vendor == "postgresql"
        else "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [table])
        return {name: (definition or "").replace('"', "") for name, definition in cursor.fetchall()}


def columns(table: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)} WHERE 1 = 0")
        return {column[0] for column in cursor.description}


def seed(apps) -> dict:
    """Two runs written through the models as they were before: one parked on a pending
    request for its call (with one approval of two), one that ended handed off after an
    expired request."""
    tenant = apps.get_model("console", "Tenant").objects.create(slug="subj", name="Subjects")
    user = apps.get_model("auth", "User").objects.create(username="subj-lead")
    agent = apps.get_model("agents", "Agent").objects.create(slug="subj", version=1, name="Subj")
    queue = apps.get_model("approvals", "ReviewQueue").objects.create(slug="subj-queue", name="Subj queue")
    run_model = apps.get_model("agents", "AgentRun")
    call_model = apps.get_model("agents", "ToolInvocation")
    request_model = apps.get_model("approvals", "ApprovalRequest")
    ids: dict = {"tenant": tenant.pk}
    for name, trace, status in (("parked", "a" * 32, "pending"), ("expired", "b" * 32, "expired")):
        run = run_model.objects.create(
            tenant=tenant,
            agent=agent,
            intent="billing_refund",
            requester_label="test",
            trace_id=trace,
            max_steps=5,
            max_tokens=100,
            max_wall_seconds=10,
            max_cost_usd=1,
            status="waiting_approval" if status == "pending" else "handed_off",
            terminal_reason="" if status == "pending" else "Approval request expired; failing closed.",
        )
        call = call_model.objects.create(
            run=run,
            tenant=tenant,
            step_seq=3,
            tool="apply_credit",
            tier="write_high",
            arguments={"customer": "C-1001", "amount_cents": 15000},
            arg_hash="0" * 64,
            idempotency_key=f"subj-{name}",
            state="awaiting_approval" if status == "pending" else "refused",
        )
        request = request_model.objects.create(
            tenant=tenant,
            queue=queue,
            run=run,
            invocation=call,
            status=status,
            approvals_required=2,
            tool="apply_credit",
            arguments=call.arguments,
            amount_cents=15000,
            currency="USD",
            risk_tier="write_high",
            trace_id=trace,
            requester_label="test",
            due_at=DUE,
        )
        ids[name] = {
            "run": run.pk,
            "public_id": str(run.public_id),
            "call": str(call.pk),
            "request": request.pk,
            "trace": trace,
        }
    apps.get_model("approvals", "ApprovalDecision").objects.create(
        request_id=ids["parked"]["request"], reviewer=user, decision="approve", proposal_hash="f" * 64
    )
    apps.get_model("approvals", "Handoff").objects.create(
        run_id=ids["expired"]["run"],
        tenant=tenant,
        source="expiry",
        reason="Approval request expired",
        summary="a person must decide",
    )
    return ids


@pytest.fixture
def before():
    """The database with approvals as it was before the subjects (every other app at its
    leaf); migrated to the leaves again afterwards."""
    after = leaves()
    state = [node for node in after if node[0] != "approvals"] + [BEFORE]
    executor = migrate([BEFORE])
    assert ("approvals", "0004_subjects") not in executor.loader.applied_migrations
    yield executor.loader.project_state(state).apps
    migrate(leaves())
    assert set(MigrationExecutor(connection).loader.applied_migrations) >= set(after)


def test_requests_and_handoffs_written_before_name_their_run_after(before):
    ids = seed(before)
    migrate(leaves())

    parked = AgentRun.objects.get(pk=ids["parked"]["run"])
    request = requests_of(parked).get()
    assert (request.subject_kind, request.subject_id, request.action_id) == (
        KIND,
        ids["parked"]["public_id"],
        ids["parked"]["call"],
    )
    assert request.pk == ids["parked"]["request"] and request.status == ApprovalStatus.PENDING
    assert request.trace_id == ids["parked"]["trace"] and request.approvals_required == 2
    assert ApprovalDecision.objects.get(request=request).proposal_hash == "f" * 64
    expired = AgentRun.objects.get(pk=ids["expired"]["run"])
    assert requests_of(expired).get().status == ApprovalStatus.EXPIRED
    handoff = Handoff.objects.of_subject(run_subject(expired)).get()
    assert (handoff.trace_id, handoff.source, handoff.summary) == (
        ids["expired"]["trace"],
        "expiry",
        "a person must decide",
    )
    assert handoff.subject_label == f"run {ids['expired']['public_id']}"
    # no key to the runtime's tables is left; the queue's constraint and index hold on the subject
    assert not {"run_id", "invocation_id"} & columns("approvals_approvalrequest")
    assert "run_id" not in columns("approvals_handoff")
    request_indexes = indexes("approvals_approvalrequest")
    assert "(subject_kind, subject_id, status)" in request_indexes["approval_subject_status"]
    assert "(subject_kind, subject_id, action_id)" in request_indexes["uniq_pending_request_per_action"]
    assert "approval_run_status" not in request_indexes
    with pytest.raises(IntegrityError), transaction.atomic():  # one pending request per call
        ApprovalRequest.objects.create(
            tenant_id=ids["tenant"],
            queue=request.queue,
            subject_kind=KIND,
            subject_id=request.subject_id,
            action_id=request.action_id,
            tool="apply_credit",
            risk_tier="write_high",
            due_at=DUE + timedelta(hours=1),
        )
    with pytest.raises(IntegrityError), transaction.atomic():  # one handoff per run
        Handoff.objects.create(
            subject_kind=KIND,
            subject_id=handoff.subject_id,
            tenant_id=ids["tenant"],
            source="runtime",
            reason="again",
        )


def test_migrating_back_fills_the_keys_again(before):
    ids = seed(before)
    migrate(leaves())

    executor = migrate([BEFORE])
    apps = executor.loader.project_state(
        [node for node in leaves() if node[0] != "approvals"] + [BEFORE]
    ).apps
    request_model = apps.get_model("approvals", "ApprovalRequest")
    for name in ("parked", "expired"):
        request = request_model.objects.get(pk=ids[name]["request"])
        assert (request.run_id, str(request.invocation_id)) == (ids[name]["run"], ids[name]["call"])
    assert apps.get_model("approvals", "Handoff").objects.get().run_id == ids["expired"]["run"]
    assert "subject_id" not in columns("approvals_approvalrequest")


@pytest.mark.postgres
@pytest.mark.skipif(not IS_POSTGRES, reason="PostgreSQL only")
def test_on_postgresql_a_final_status_stays_final_across_the_migration(before):
    ids = seed(before)
    migrate(leaves())

    with pytest.raises(DatabaseError), transaction.atomic():
        ApprovalRequest.objects.filter(pk=ids["expired"]["request"]).update(status="pending")
    assert ApprovalRequest.objects.get(pk=ids["expired"]["request"]).status == ApprovalStatus.EXPIRED
