"""End to end with real Celery worker processes (few, and as fast as the scenario allows)."""

from __future__ import annotations

import json
import time

import pytest

from agents.approval_subject import requests_of
from agents.models import AgentRun, InvocationState, RunStatus, ToolInvocation
from approvals.services import approval_decide
from audit.models import AuditEvent
from support.models import CreditLedger
from tests.agents.conftest import REFUND

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def wait_for(predicate, *, timeout: float = 45, every: float = 0.1, workers=(), what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    logs = "\n".join(w.output()[-4000:] for w in workers)
    raise AssertionError(f"timed out waiting for {what or predicate}\n{logs}")


def status_of(run_id) -> str:
    return AgentRun.objects.filter(public_id=run_id).values_list("status", flat=True).get()


def test_scenario_over_the_api_with_a_real_worker(runtime, start_worker, token_client, svc_acme, lead):
    worker = start_worker()
    client = token_client(svc_acme)

    def post(message):
        response = client.post(
            "/api/v1/runs",
            content_type="application/json",
            data=json.dumps({"agent": "support", "tenant": "acme", "input": {"message": message}}),
        )
        assert response.status_code == 201, response.content
        return response.json()["id"]

    question = post("What plan is customer C-1002 on?")
    refund = post(REFUND)
    wait_for(lambda: status_of(question) == RunStatus.SUCCEEDED, workers=[worker], what="question")
    wait_for(lambda: status_of(refund) == RunStatus.WAITING_APPROVAL, workers=[worker], what="park")
    assert not CreditLedger.objects.exists()

    pending = client.get(f"/api/v1/runs/{refund}").json()["pending_approval"]
    assert pending["tool"] == "apply_credit" and pending["arguments"]["amount_cents"] == 4000
    response = token_client(lead).post(
        f"/api/v1/approvals/{pending['id']}/decisions",
        content_type="application/json",
        data=json.dumps({"decision": "approve", "reason": "duplicate"}),
    )
    assert response.status_code == 200, response.content
    wait_for(lambda: status_of(refund) == RunStatus.SUCCEEDED, workers=[worker], what="resume")
    assert CreditLedger.objects.get().amount_cents == 4000
    trace = client.get(f"/api/v1/runs/{refund}/trace").json()
    kinds = [(s["kind"], s["name"]) for s in trace["steps"]]
    assert ("approval", "apply_credit") in kinds and kinds[-1][0] == "model"
    actions = set(AuditEvent.objects.filter(trace_id=trace["trace_id"]).values_list("action", flat=True))
    assert {
        "run.created",
        "run.parked",
        "approval.requested",
        "approval.decided",
        "run.resumed",
        "credit.applied",
        "run.succeeded",
    } <= actions


def test_same_message_delivered_twice_concurrently_gives_one_credit(
    runtime, start_worker, start_run, step, lead, tmp_path
):
    """Two more copies of the resume message arrive while the first is inside apply_credit
    (held there, after its ledger write): they find the run leased and leave it alone."""
    from agents.tasks import run_step_task

    run = step(start_run(REFUND))
    request = requests_of(run).get()
    (tmp_path / "hold").write_text("hold")
    worker = start_worker(concurrency=2, extra_env={"ACP_TEST_HOLD_DIR": str(tmp_path)})
    approval_decide(actor=lead, request=request, decision="approve", reason="ok")  # enqueues on commit
    wait_for(lambda: (tmp_path / "apply_credit.reached").exists(), workers=[worker], what="mid-credit")
    for _ in range(2):  # the very same message twice more, while the first is mid-tool
        run_step_task.apply_async(args=[str(run.public_id)], task_id=f"dup-{run.public_id}")
    wait_for(lambda: worker.output().count("is held by another worker") >= 2, workers=[worker],
             what="both copies turned away during the call")
    assert (tmp_path / "hold").exists() and CreditLedger.objects.count() == 1
    (tmp_path / "hold").unlink()
    wait_for(lambda: status_of(run.public_id) == RunStatus.SUCCEEDED, workers=[worker], what="credit")
    wait_for(lambda: worker.output().count("succeeded in") >= 3, workers=[worker], what="3 deliveries")
    assert CreditLedger.objects.count() == 1
    invocation = ToolInvocation.objects.get(run=run, tool="apply_credit")
    assert invocation.state == InvocationState.SUCCEEDED and invocation.attempts == 1
    assert AuditEvent.objects.filter(action="credit.applied").count() == 1


def test_worker_killed_mid_apply_credit_resumes_with_exactly_one_credit(
    runtime, start_worker, start_run, step, lead, tmp_path
):
    from agents.services.runs import run_sweep

    run = step(start_run(REFUND))
    request = requests_of(run).get()
    (tmp_path / "hold").write_text("hold")
    short_lease = {"AGENT_RUN_LEASE_SECONDS": "2"}
    doomed = start_worker(concurrency=1, extra_env={**short_lease, "ACP_TEST_HOLD_DIR": str(tmp_path)})
    approval_decide(actor=lead, request=request, decision="approve", reason="ok")
    wait_for(lambda: (tmp_path / "apply_credit.reached").exists(), workers=[doomed], what="mid-tool")
    doomed.kill()  # SIGKILL: the ledger row is committed, the invocation still says "started"
    assert CreditLedger.objects.count() == 1
    assert ToolInvocation.objects.get(run=run, tool="apply_credit").state == InvocationState.STARTED
    assert status_of(run.public_id) == RunStatus.RUNNING

    survivor = start_worker(concurrency=1, extra_env=short_lease)

    def resumed():
        run_sweep()  # what Celery beat runs periodically
        return status_of(run.public_id) == RunStatus.SUCCEEDED

    wait_for(resumed, timeout=60, every=1.0, workers=[survivor], what="resume after SIGKILL")
    assert CreditLedger.objects.count() == 1
    invocation = ToolInvocation.objects.get(run=run, tool="apply_credit")
    assert invocation.state == InvocationState.SUCCEEDED and invocation.result["replayed"] is True
    assert AuditEvent.objects.filter(action="credit.applied").count() == 1
    assert AgentRun.objects.get(pk=run.pk).attempts >= 3  # first run, killed worker, survivor


def test_a_worker_keeps_its_database_connection_from_task_to_task(runtime, start_worker, start_run):
    """Celery's Django fix-up would reconnect for every task; settings and console/celery.py
    keep the connection, as a web process keeps it from request to request."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("counts PostgreSQL sessions")
    worker = start_worker(concurrency=1)
    warm = start_run("What plan is customer C-1002 on?", enqueue=True)
    wait_for(lambda: status_of(warm.public_id) == RunStatus.SUCCEEDED, workers=[worker], what="warm-up")

    def sessions() -> int:  # sessions ever opened on this database
        with connection.cursor() as cursor:
            cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
            return cursor.fetchone()[0]

    before = sessions()
    runs = [start_run(f"What plan is customer C-100{n} on?", enqueue=True) for n in (1, 2, 3, 4, 5, 6)]
    for run in runs:
        wait_for(lambda: status_of(run.public_id) == RunStatus.SUCCEEDED, workers=[worker], what="run")
    assert worker.output().count("succeeded in") >= 7  # seven tasks in one worker process
    time.sleep(1.2)  # a backend reports its counters at most once a second
    # one at most: the warm-up's own connection may report its start only now
    assert sessions() - before <= 1

    # a kept connection the server dropped between tasks (a restart, a failover) is noticed
    # by the health check before the next task uses it, not by a failed run
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert cursor.fetchone()[0] >= 1
    after_drop = start_run("What plan is customer C-1003 on?", enqueue=True)
    wait_for(lambda: status_of(after_drop.public_id) == RunStatus.SUCCEEDED, workers=[worker], what="rerun")
