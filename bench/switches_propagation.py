"""Kill-switch propagation, on PostgreSQL + Redis.

1. Flip -> every worker refusing. ``--checkers`` processes each run the pre-tool check of
   a read tool (``agents.switches.tool_gate``, the cached path validated by the Redis
   version key) in a tight loop and report the wall-clock time at which they first see the
   switch. Latency of a round = the slowest checker's first refusal minus the moment
   ``switch_engage`` returned (its transaction committed). Target p99 < 50 ms.
2. Flip -> every in-flight run parked or stopped. ``--runs`` runs are started (queued or
   running on a real Celery worker); an agent pause is engaged and we time until no run is
   ``running`` any more (queued ones are left untouched, running ones park at their next
   step); then a global stop, timed until every run has ended. Target p99 < 1 s.

    .venv/bin/python -m bench switches -- --rounds 50 --checkers 4 --runs 50
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

from bench._runtime_common import (
    ROOT,
    bench_env,
    create_db,
    drop_db,
    machine,
    pct,
    setup_django,
    start_worker,
    wait_worker,
)

CHILD = r"""
import os, sys, time
import django
django.setup()
from agents import switches
state = None
print("ready", flush=True)
while True:
    refused = switches.tool_gate(tool="lookup_subscription", writes=False) is not None
    if refused != state:
        state = refused
        print(("on" if refused else "off"), repr(time.time()), flush=True)
    if os.getppid() == 1:
        break
"""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.switches_propagation")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--checkers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--run-rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--db", default="acp_bench_switches")
    args = parser.parse_args(argv)

    create_db(args.db)
    env = bench_env(args.db, redis=True)
    procs: list[subprocess.Popen] = []
    try:
        setup_django(env)
        print(f"machine: {machine()}")
        _flip_to_refusal(args, env, procs)
        _flip_to_parked(args, env, procs)
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 15)
                p.wait(timeout=30)
        from django.db import connections

        connections.close_all()
        drop_db(args.db)


class Checker:
    def __init__(self, env):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.events: list[tuple[str, float]] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("ready"):
                self.ready.set()
                continue
            parts = line.split()
            if len(parts) == 2 and parts[0] in ("on", "off"):
                self.events.append((parts[0], float(parts[1])))

    def first(self, state: str, start: int, timeout: float = 10) -> float:
        """The first ``state`` event at or after event index ``start``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for s, t in self.events[start:]:
                if s == state:
                    return t
            time.sleep(0.001)
        raise SystemExit(f"a checker never saw the switch {state}")


def _flip_to_refusal(args, env, procs) -> None:
    from agents.services.switches import switch_engage, switch_release
    from audit.services import Actor

    actor = Actor.system("bench")
    checkers = [Checker(env) for _ in range(args.checkers)]
    procs += [c.proc for c in checkers]
    for c in checkers:
        c.ready.wait(60)
        c.first("off", 0)
    latencies = []
    for _ in range(args.rounds):
        marks = [len(c.events) for c in checkers]
        switch_engage(actor=actor, scope="global", reason="bench")
        committed = time.time()  # switch_engage returned: its transaction has committed
        seen = [c.first("on", m) for c, m in zip(checkers, marks, strict=True)]
        # A checker may see the flip between the commit and the return (negative): count 0.
        latencies.append(max(0.0, (max(seen) - committed) * 1000))
        marks = [len(c.events) for c in checkers]
        switch_release(actor=actor, scope="global", reason="bench")
        for c, m in zip(checkers, marks, strict=True):
            c.first("off", m)
        time.sleep(0.02)
    print(
        f"flip committed -> all {args.checkers} checker processes refusing (cached check, Redis "
        f"version key), {args.rounds} rounds: p50 {pct(latencies, 50):.2f} ms, "
        f"p99 {pct(latencies, 99):.2f} ms, max {max(latencies):.2f} ms"
    )


def _flip_to_parked(args, env, procs) -> None:
    from django.contrib.auth.models import User

    from agents.models import ACTIVE_RUN_STATUSES, AgentRun, RunStatus
    from agents.services.runs import run_start
    from agents.services.switches import switch_engage, switch_release
    from audit.services import Actor

    worker = start_worker(env, hostname="bench-switches@localhost", concurrency=args.concurrency)
    procs.append(worker)
    wait_worker(worker, "bench-switches@localhost")
    actor = Actor.system("bench")
    svc = User.objects.get(username="svc-acme")
    pause_ms, stop_ms, drain_ms, running_at_flip = [], [], [], []
    for _ in range(args.run_rounds):
        ids = [
            run_start(actor=svc, tenant="acme", message=f"What plan is customer C-{1001 + n % 20} on?")[0].pk
            for n in range(args.runs)
        ]
        runs = AgentRun.objects.filter(pk__in=ids)
        while not runs.filter(status=RunStatus.RUNNING).exists():
            time.sleep(0.002)
        running_at_flip.append(runs.filter(status=RunStatus.RUNNING).count())
        switch_engage(actor=actor, scope="agent", target="support", reason="bench")
        began = time.perf_counter()
        while runs.filter(status=RunStatus.RUNNING).exists():
            time.sleep(0.002)
        pause_ms.append((time.perf_counter() - began) * 1000)
        switch_release(actor=actor, scope="agent", target="support", reason="bench")
        while not runs.filter(status=RunStatus.RUNNING).exists():
            if not runs.filter(status__in=ACTIVE_RUN_STATUSES).exists():
                break
            time.sleep(0.002)
        running_at_flip.append(runs.filter(status=RunStatus.RUNNING).count())
        switch_engage(actor=actor, scope="global", reason="bench")
        began = time.perf_counter()
        while runs.filter(status=RunStatus.RUNNING).exists():
            time.sleep(0.002)
        stop_ms.append((time.perf_counter() - began) * 1000)
        while runs.filter(status__in=[RunStatus.RUNNING, RunStatus.QUEUED]).exists():
            time.sleep(0.005)
        drain_ms.append((time.perf_counter() - began) * 1000)
        switch_release(actor=actor, scope="global", reason="bench")
    print(
        f"{args.runs} runs in flight, 1 worker x {args.concurrency} processes, {args.run_rounds} rounds "
        f"(running at the flip: {min(running_at_flip)}-{max(running_at_flip)})"
    )
    print(
        f"  pause engaged -> no run running (queued untouched, running parked): "
        f"p50 {pct(pause_ms, 50):.1f} ms, p99 {pct(pause_ms, 99):.1f} ms, max {max(pause_ms):.1f} ms"
    )
    print(
        f"  global stop engaged -> no run running (in-flight ones killed, handed off): "
        f"p50 {pct(stop_ms, 50):.1f} ms, p99 {pct(stop_ms, 99):.1f} ms, max {max(stop_ms):.1f} ms"
    )
    print(
        f"  global stop engaged -> all {args.runs} ended (queued ones killed as a worker takes them): "
        f"p50 {pct(drain_ms, 50):.1f} ms, p99 {pct(drain_ms, 99):.1f} ms, max {max(drain_ms):.1f} ms"
    )
