"""Scripted support runs per second, end to end through Celery (PostgreSQL + Redis).

    python -m bench runtime_throughput                       # 300 runs, 1 worker x 2 processes
    python -m bench runtime_throughput -- --runs 500 --concurrency 2 --scenario refund

Starts a real ``celery worker`` (``--concurrency`` prefork processes), enqueues ``--runs``
runs through ``run_start`` (the API's service: run row, audit event, enqueue on commit)
and measures from the first enqueue until every run has parked or ended.
Scenarios: ``question`` (lookup + search + answer: 3 model steps, 2 tool steps) and
``refund`` (lookup, search, draft, credit proposal parked for approval: 4 model steps,
4 tool steps). Own database (``--db``), dropped at the end; own Celery queue name.
"""

from __future__ import annotations

import argparse
import os
import time

from bench._runtime_common import (
    bench_env,
    cpu_by_process,
    cpu_delta,
    create_db,
    drop_db,
    machine,
    setup_django,
    start_worker,
    wait_worker,
)

MESSAGES = {
    "question": "What plan is customer C-{n} on?",
    "refund": "Customer C-{n} was billed twice in March, please refund the $40 duplicate",
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.runtime_throughput")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--scenario", choices=sorted(MESSAGES), default="question")
    parser.add_argument("--db", default="acp_bench_runtime_tp")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)

    create_db(args.db)
    env = bench_env(args.db, redis=True)
    worker = None
    try:
        setup_django(env)
        worker = start_worker(env, hostname="bench@localhost", concurrency=args.concurrency)
        wait_worker(worker, "bench@localhost")
        return _run(args, worker.pid)
    finally:
        if worker is not None:
            os.killpg(worker.pid, 15)
            worker.wait(timeout=30)
        from django.db import connections

        connections.close_all()
        if not args.keep:
            drop_db(args.db)


def _run(args, worker_pgid: int) -> int:
    from django.contrib.auth.models import User
    from django.db.models import Count

    from agents.models import AgentRun, RunStatus
    from agents.services.runs import run_start

    actor = User.objects.get(username="svc-acme")
    done = [
        RunStatus.SUCCEEDED,
        RunStatus.WAITING_APPROVAL,
        RunStatus.FAILED,
        RunStatus.DENIED,
        RunStatus.HANDED_OFF,
        RunStatus.BUDGET_EXHAUSTED,
        RunStatus.KILLED,
        RunStatus.CANCELLED,
    ]
    # warm the worker processes up (imports, connections)
    for n in range(4):
        run_start(actor=actor, tenant="acme", message=MESSAGES[args.scenario].format(n=1001 + n % 20))
    while AgentRun.objects.exclude(status__in=done).exists():
        time.sleep(0.1)
    baseline = AgentRun.objects.count()

    cpu_before = cpu_by_process(worker_pgid)
    began = time.perf_counter()
    for n in range(args.runs):
        run_start(actor=actor, tenant="acme", message=MESSAGES[args.scenario].format(n=1001 + n % 20))
    enqueued = time.perf_counter() - began
    while AgentRun.objects.filter(status__in=done).count() < baseline + args.runs:
        time.sleep(0.05)
    elapsed = time.perf_counter() - began
    cpu = cpu_delta(cpu_before, cpu_by_process(worker_pgid))
    statuses = dict(AgentRun.objects.values_list("status").annotate(n=Count("id")))
    print(f"machine: {machine()}")
    print(
        f"scenario: {args.scenario}; {args.runs} runs; 1 worker x {args.concurrency} processes (prefork), "
        f"Redis broker, PostgreSQL"
    )
    print(f"enqueue (run_start x {args.runs}): {enqueued:.2f} s ({args.runs / enqueued:.1f}/s)")
    print(f"all parked or ended after {elapsed:.2f} s: {args.runs / elapsed:.1f} runs/s")
    print(f"statuses: {statuses}")
    if cpu:
        total = sum(cpu.values())
        print(
            f"CPU per run: {total * 1000 / args.runs:.1f} ms "
            f"({total / elapsed / (os.cpu_count() or 1):.0%} of {os.cpu_count()} CPUs busy)"
        )
        for group, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
            print(f"  {group}: {seconds * 1000 / args.runs:.1f} ms")
    return 0
