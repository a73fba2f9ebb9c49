"""Governed vs ungoverned tool call, in one process on PostgreSQL.

    python -m bench runtime_overhead                  # defaults: 300 calls, 30 warm-up
    python -m bench runtime_overhead -- --calls 1000 --sleep-ms 5
    python -m bench runtime_overhead -- --tier write_low  # a tool with side effects

The same 5 ms tool (``time.sleep``) called
- bare: the function itself;
- governed: one tool step of the real step loop (``agents.runtime._step`` with the
  action pending): kill-switch and budget checks, JSON Schema validation, tenant facts,
  the policy decision from the active policy row, the broker (invocation row inserted
  ``started`` with its idempotency key and committed before the tool runs, switch
  re-check, signed credential, SIGALRM timeout, tenacity), and the lease-fenced commit
  of the step, the invocation result,
  the run's state and the audit event (hash chain).
Reports p50/p95/mean of each, the overhead (governed - bare), the time before and after
the tool inside the governed call, and the ratio. ``--sleep-ms 0`` measures the governed
path warm: on a small VM a 5 ms idle sleep leaves caches and the idle vCPU cold for what
follows (docs/benchmarks.md, fifth pass).
Uses its own database (``--db``, default ``acp_bench_runtime``), dropped at the end.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench._runtime_common import bench_env, create_db, drop_db, machine, pct, setup_django, summary


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.runtime_overhead")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--sleep-ms", type=float, default=5.0)
    parser.add_argument("--tier", choices=("read", "write_low"), default="read",
                        help="read: a pure read (its invocation row commits without waiting "
                        "for the WAL flush); write_low: a tool with side effects (allowed by the "
                        "default policy; the row is durable before the tool runs)")
    parser.add_argument("--redis", action="store_true",
                        help="the switch version store on Redis (BENCH_REDIS_URL), as on a "
                        "deployed worker; default: the version file of the embedded setup")
    parser.add_argument("--db", default="acp_bench_runtime")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)

    create_db(args.db)
    try:
        setup_django(bench_env(args.db, redis=args.redis))
        return _run(args)
    finally:
        if not args.keep:
            from django.db import connections

            connections.close_all()
            drop_db(args.db)


def _run(args) -> int:
    from django.contrib.auth.models import User

    from agents import runtime
    from agents.models import Agent, AgentRun
    from agents.services.runs import run_start
    from agents.tools.registry import REGISTRY, register

    sleep_s = args.sleep_ms / 1000
    marks = [0.0, 0.0]  # the tool's own start and end, for the phases

    @register(
        name="bench_sleep",
        tier=args.tier,
        side_effects=args.tier != "read",
        timeout_seconds=5,
        description="sleeps",
        parameters={"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
    )
    def bench_sleep(ctx, arguments):
        ctx.claims("bench_sleep")
        marks[0] = time.perf_counter()
        time.sleep(sleep_s)
        marks[1] = time.perf_counter()
        return {"n": arguments["n"]}

    Agent.objects.filter(slug="support").update(is_active=False)
    Agent.objects.create(
        slug="support",
        version=99,
        name="bench",
        model_route=["scripted"],
        allowed_tools=["bench_sleep"],
        intents=["general_question"],
        max_steps=100,
        max_tokens=10**8,
        max_wall_seconds=10**6,
    )
    run, _ = run_start(
        actor=User.objects.get(username="svc-acme"),
        tenant="acme",
        message="bench",
        intent="general_question",
        enqueue=False,
    )
    lease = runtime.run_claim(run_pk=run.pk, worker="bench")
    run = AgentRun.objects.select_related("agent", "tenant").get(pk=run.pk)

    bare, governed, before_tool, after_tool = [], [], [], []
    total = args.warmup + args.calls
    for i in range(total):
        began = time.perf_counter()
        time.sleep(sleep_s)
        _ = {"n": i}
        bare_ms = (time.perf_counter() - began) * 1000

        # the action as the model step leaves it pending (runtime._thought)
        run.state = {"pending": runtime.pending_action(run, {"tool": "bench_sleep", "arguments": {"n": i}})}
        began = time.perf_counter()
        outcome = runtime._step(run, lease)
        ended = time.perf_counter()
        governed_ms = (ended - began) * 1000
        assert outcome is None, outcome
        if i >= args.warmup:
            bare.append(bare_ms)
            governed.append(governed_ms)
            before_tool.append((marks[0] - began) * 1000)
            after_tool.append((ended - marks[1]) * 1000)
    REGISTRY.pop("bench_sleep", None)

    overhead = [g - b for g, b in zip(governed, bare, strict=True)]
    print(f"machine: {machine()}")
    print(f"tool: time.sleep({args.sleep_ms:g} ms), tier {args.tier}; {args.calls} calls after "
          f"{args.warmup} warm-up; switch version on {'Redis' if args.redis else 'the version file'}")
    print(f"bare:     {summary(bare)}")
    print(f"governed: {summary(governed)}")
    print(
        f"overhead: p50 {pct(governed, 50) - pct(bare, 50):.3f} ms "
        f"(per-call p50 {pct(overhead, 50):.3f} ms, p95 {pct(overhead, 95):.3f} ms)"
    )
    print(
        f"phases (p50): {pct(before_tool, 50):.3f} ms before the tool (switches, validation, "
        f"policy, credential), {pct(after_tool, 50):.3f} ms after it (result, step statement)"
    )
    print(
        f"ratio (p50 governed / p50 bare): {pct(governed, 50) / pct(bare, 50):.3f}x; "
        f"mean ratio {statistics.fmean(governed) / statistics.fmean(bare):.3f}x"
    )
    return 0
