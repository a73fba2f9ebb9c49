"""Approval queue at scale, on PostgreSQL.

    python -m bench approvals_queue                      # 100,000 pending over 50 queues
    python -m bench approvals_queue -- --pending 20000 --requests 50 --resumes 20

1. Queue page and API: 100,000 pending requests across 50 queues; a reviewer holding 3
   of them (guardian object permissions, member of both tenants). Server time (Django
   test client in-process: URL routing, auth, access, queries, template/JSON) of
   ``GET /approvals/`` and ``GET /api/v1/approvals``, p50/p95 over ``--requests`` calls
   after a warm-up.
2. Decision commit -> run resumed: real parked credit runs, a real Celery worker process
   on Redis; for each run ``approval_decide`` is timed from the commit (an on_commit
   callback registered before the service's own) to the worker's ``run.started`` event
   for that run. One decision at a time (no queueing effects).
Uses its own database (``--db``, default ``acp_bench_approvals``), dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from bench._runtime_common import (
    bench_env,
    create_db,
    drop_db,
    machine,
    pct,
    setup_django,
    start_worker,
    summary,
    wait_worker,
)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.approvals_queue")
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--queues", type=int, default=50)
    parser.add_argument("--held", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--resumes", type=int, default=40)
    parser.add_argument("--db", default="acp_bench_approvals")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)

    create_db(args.db)
    env = bench_env(args.db, redis=True)
    env["EMAIL_BACKEND"] = "django.core.mail.backends.locmem.EmailBackend"
    try:
        setup_django(env)
        print(machine())
        _scale(args)
        if args.resumes:
            _resume(args, env)
        return 0
    finally:
        if not args.keep:
            from django.db import connections

            connections.close_all()
            drop_db(args.db)


def _scale(args) -> None:
    from datetime import timedelta

    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.utils import timezone
    from guardian.shortcuts import assign_perm

    from agents.approval_subject import KIND
    from agents.models import AgentRun, ToolInvocation
    from agents.services.runs import run_start
    from approvals.models import ApprovalRequest, ReviewQueue
    from audit.services import Actor
    from console.models import Tenant, TenantMembership
    from console.services import token_issue

    t0 = time.perf_counter()
    queues = [
        ReviewQueue.objects.create(
            slug=f"bench-{i:02d}", name=f"Bench queue {i:02d}", capacity=1_000_000, sla_minutes=240
        )
        for i in range(args.queues)
    ]
    svc = User.objects.get(username="svc-acme")
    run, _ = run_start(actor=svc, tenant="acme", message="bench", enqueue=False)
    tenants = list(Tenant.objects.all())
    now = timezone.now()
    batch = 5000
    for start in range(0, args.pending, batch):
        n = min(batch, args.pending - start)
        invocations = ToolInvocation.objects.bulk_create(
            ToolInvocation(
                run=run,
                tenant_id=run.tenant_id,
                step_seq=start + i + 1,
                tool="apply_credit",
                tier="write_high",
                arguments={"customer": "C-1001", "amount_cents": 100 + i},
                arg_hash=f"{start + i:064d}",
                idempotency_key=f"bench-{start + i}",
                state="awaiting_approval",
            )
            for i in range(n)
        )
        ApprovalRequest.objects.bulk_create(
            ApprovalRequest(
                tenant=tenants[(start + i) % len(tenants)],
                queue=queues[(start + i) % len(queues)],
                subject_kind=KIND,
                subject_id=str(run.public_id),
                action_id=str(inv.pk),
                tool="apply_credit",
                arguments=inv.arguments,
                amount_cents=inv.arguments["amount_cents"],
                currency="USD",
                risk_tier="write_high",
                summary="bench credit",
                evidence=[],
                requester_label="svc-acme",
                due_at=now + timedelta(minutes=(start + i) % 600),
                near_due_at=now + timedelta(minutes=(start + i) % 480),
            )
            for i, inv in enumerate(invocations)
        )
    AgentRun.objects.filter(pk=run.pk).update(status="waiting_approval")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    took = time.perf_counter() - t0
    print(f"seeded {args.pending} pending requests over {args.queues} queues in {took:.1f}s")

    reviewer = User.objects.create_user("bench-reviewer")
    for tenant in tenants:
        TenantMembership.objects.create(user=reviewer, tenant=tenant)
    for queue in queues[: args.held]:
        assign_perm("approvals.view_reviewqueue", reviewer, queue)
        assign_perm("approvals.decide_reviewqueue", reviewer, queue)
    page = Client(HTTP_HOST="127.0.0.1")
    page.force_login(reviewer)
    _, token = token_issue(actor=Actor.system("bench"), user=reviewer, name="bench")
    api = Client(HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_HOST="127.0.0.1")
    for label, client, url, htmx in (
        ("GET /approvals/ (full page)", page, "/approvals/", False),
        ("GET /approvals/?part=live (htmx refresh)", page, "/approvals/?part=live", True),
        ("GET /api/v1/approvals (50 items)", api, "/api/v1/approvals", False),
    ):
        extra = {"HTTP_HX_REQUEST": "true"} if htmx else {}
        times = []
        for i in range(args.requests + 10):
            began = time.perf_counter()
            response = client.get(url, **extra)
            elapsed = (time.perf_counter() - began) * 1000
            assert response.status_code == 200, response.content[:300]
            if i >= 10:
                times.append(elapsed)
        print(f"{label}: {summary(times)}")


def _resume(args, env) -> None:
    from django.contrib.auth.models import User
    from django.db import transaction

    from agents.approval_subject import requests_of
    from agents.runtime import run_execute
    from agents.services.runs import run_start
    from approvals.services import approval_decide
    from audit.models import AuditEvent
    from support.models import Subscription

    name = f"bench-approvals-{os.getpid()}"
    log = open(os.path.join(env["VAR_DIR"], f"{name}.log"), "wb")
    worker = start_worker(env, hostname=f"{name}@localhost", concurrency=2, log=log)
    try:
        wait_worker(worker, f"{name}@localhost")
        svc = User.objects.get(username="svc-acme")
        lead = User.objects.get(username="lead")
        message = "Customer C-1001 was billed twice in March, please refund the $40 duplicate"
        subscription = Subscription.objects.filter(tenant__slug="acme", customer__code="C-1001").first()
        latencies = []
        for i in range(args.resumes + 3):
            # a charge is credited once, ever: each run gets a March duplicate of its own
            extra = {"ref": f"bench_dup_{i}", "date": "2026-03-15", "amount_cents": 4000}
            subscription.charges = [*subscription.charges, extra]
            subscription.save(update_fields=["charges"])
            run, _ = run_start(actor=svc, tenant="acme", message=message, enqueue=False)
            run_execute(run_id=str(run.public_id), worker="bench")
            request = requests_of(run).select_related("queue").get(status="pending")
            committed: list[float] = []
            with transaction.atomic():
                transaction.on_commit(lambda marks=committed: marks.append(time.time()))
                approval_decide(actor=lead, request=request, decision="approve", reason="bench")
            deadline = time.monotonic() + 30
            events = AuditEvent.objects.filter(action="run.started", object_id=str(run.public_id))
            started = None
            while started is None:
                # the worker's claim after the decision: the second run.started of this run
                stamps = list(events.order_by("seq").values_list("occurred_at", flat=True))
                if len(stamps) >= 2:
                    started = stamps[-1]
                elif time.monotonic() > deadline:
                    raise RuntimeError("run did not resume")
                else:
                    time.sleep(0.005)
            while time.monotonic() < deadline:  # let it finish before the next one
                run.refresh_from_db()
                if run.status not in ("queued", "running"):
                    break
                time.sleep(0.01)
            latencies.append((started.timestamp() - committed[0]) * 1000)
        latencies = latencies[3:]
        print(
            f"decision commit -> run resumed (worker run.started): {summary(latencies)}; "
            f"p95 {pct(latencies, 95):.1f} ms"
        )
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(timeout=30)
        log.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
