"""Each scope's effect with real Celery worker processes, and the strict guarantee for
credits with runs in flight on two workers. Runs on PostgreSQL+Redis and on the embedded
default (SQLite + filesystem broker + file cache)."""

from __future__ import annotations

import pytest
from django.db import transaction

from agents.approval_subject import requests_of
from agents.models import AgentRun, InvocationState, KillSwitch, RunStatus, ToolInvocation
from agents.services.runs import run_start
from agents.services.switches import switch_engage, switch_release
from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from audit.models import AuditEvent
from support.models import CreditLedger
from tests.conftest import refunds_of_distinct_duplicates
from tests.switches.conftest import QUESTION, REFUND, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _start(svc, message, **kw):
    run, _ = run_start(actor=svc, tenant="acme", message=message, **kw)
    return run


def _status(run) -> str:
    return AgentRun.objects.filter(pk=run.pk).values_list("status", flat=True).get()


def test_scopes_with_a_real_worker(runtime, start_worker, svc_acme, operator, lead):
    worker = start_worker()
    w = [worker]

    # tool: the credit is refused before execution; a lookup keeps working
    refund = _start(svc_acme, REFUND)
    wait_for(lambda: _status(refund) == RunStatus.WAITING_APPROVAL, workers=w, what="park")
    switch_engage(actor=operator, scope="tool", target="apply_credit", reason="INC-9 ledger")
    approval_decide(
        actor=lead, request=requests_of(refund).get(), decision="approve", reason="ok"
    )
    question = _start(svc_acme, QUESTION)
    wait_for(lambda: _status(refund) == RunStatus.KILLED, workers=w, what="credit refused")
    wait_for(lambda: _status(question) == RunStatus.SUCCEEDED, workers=w, what="lookup")
    assert not CreditLedger.objects.exists()
    assert ToolInvocation.objects.get(run=refund, tool="apply_credit").state == InvocationState.REFUSED
    switch_release(actor=operator, scope="tool", target="apply_credit", reason="fixed")

    # intent: new runs of it go straight to the handoff queue
    switch_engage(actor=operator, scope="intent", target="billing_refund", reason="billing to humans")
    routed = _start(svc_acme, REFUND)
    wait_for(lambda: _status(routed) == RunStatus.HANDED_OFF, workers=w, what="routed")
    routed.refresh_from_db()
    assert "billing to humans" in routed.terminal_reason and not routed.steps.filter(kind="model").exists()
    switch_release(actor=operator, scope="intent", target="billing_refund", reason="over")

    # force approval: a read that policy allows now waits for a reviewer
    switch_engage(actor=operator, scope="approval", target="read", reason="audit week")
    forced = _start(svc_acme, QUESTION)
    wait_for(lambda: _status(forced) == RunStatus.WAITING_APPROVAL, workers=w, what="forced approval")
    switch_release(actor=operator, scope="approval", target="read", reason="over")

    # pause: a new run stays queued, untouched; release resumes it
    switch_engage(actor=operator, scope="agent", target="support", reason="bad prompt")
    paused = _start(svc_acme, QUESTION)
    wait_for(lambda: "agent support is paused" in worker.output(), workers=w, what="paused skip")
    assert _status(paused) == RunStatus.QUEUED and not paused.steps.exists()
    switch_release(actor=operator, scope="agent", target="support", reason="rolled back")
    wait_for(lambda: _status(paused) == RunStatus.SUCCEEDED, workers=w, what="resume after pause")

    # global: nothing new starts
    switch_engage(actor=operator, scope="global", reason="stop everything")
    stopped = _start(svc_acme, QUESTION)
    wait_for(lambda: _status(stopped) == RunStatus.KILLED, workers=w, what="global stop")
    assert not stopped.steps.filter(kind="tool").exists()
    switch_release(actor=operator, scope="global", reason="all clear")
    actions = list(AuditEvent.objects.filter(action__startswith="switch.").values_list("action", flat=True))
    assert actions.count("switch.engaged") == 5 and actions.count("switch.released") == 5


def test_no_credit_is_written_after_the_flip_commits_with_runs_in_flight_on_two_workers(
    runtime, start_worker, svc_acme, operator, lead
):
    workers = [start_worker(concurrency=2), start_worker(concurrency=2)]
    n = 16
    # one credit per charge: sixteen credits need sixteen duplicate charges
    messages = refunds_of_distinct_duplicates(runtime["tenants"]["acme"], n)
    runs = [_start(svc_acme, message) for message in messages]
    wait_for(
        lambda: AgentRun.objects.filter(status=RunStatus.WAITING_APPROVAL).count() == n,
        workers=workers,
        timeout=120,
        what="all parked",
    )
    with transaction.atomic():  # every resume is enqueued at once, on commit
        for request in ApprovalRequest.objects.filter(status="pending"):
            approval_decide(actor=lead, request=request, decision="approve", reason="dup")
    wait_for(lambda: CreditLedger.objects.exists(), every=0.005, workers=workers, what="first credit")
    switch = switch_engage(actor=operator, scope="tool", target="apply_credit", reason="stop credits now")
    flipped_at = KillSwitch.objects.get(pk=switch.pk).changed_at
    wait_for(
        lambda: (
            not AgentRun.objects.filter(
                pk__in=[r.pk for r in runs], status__in=["running", "queued"]
            ).exists()
        ),
        workers=workers,
        timeout=120,
        what="all runs ended",
    )
    credits = list(CreditLedger.objects.all())
    # Strict: every credit was written before the flip took the switch lock and committed.
    assert credits and all(c.created_at < flipped_at for c in credits)
    statuses = list(AgentRun.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", flat=True))
    assert set(statuses) <= {RunStatus.SUCCEEDED, RunStatus.KILLED}
    assert statuses.count(RunStatus.SUCCEEDED) == len(credits)
    # Refused by the broker's last check (refused) or by the ledger transaction's strict
    # re-read (failed with switch_engaged): either way, before any ledger write.
    stopped = ToolInvocation.objects.filter(tool="apply_credit").exclude(state=InvocationState.SUCCEEDED)
    assert stopped.count() == statuses.count(RunStatus.KILLED) >= 1
    assert all(
        i.state == InvocationState.REFUSED or (i.error or {}).get("code") == "switch_engaged" for i in stopped
    )
    # both worker processes took part
    hosts = set(AuditEvent.objects.filter(action="run.started").values_list("payload__worker", flat=True))
    assert {w.hostname for w in workers} <= hosts
