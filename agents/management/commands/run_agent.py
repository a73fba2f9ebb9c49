"""``python manage.py run_agent --tenant acme "message"``: start a run from the command line.

By default the run is stepped in this process (no worker needed) and its trace printed;
``--enqueue`` hands it to the Celery workers instead and ``--wait`` polls until it parks
or ends.
"""

from __future__ import annotations

import getpass
import json
import time

from django.core.management.base import BaseCommand, CommandError

from agents.models import TERMINAL_RUN_STATUSES, AgentRun, RunStatus
from agents.selectors import run_summary, run_trace
from audit.services import Actor
from console.errors import DomainError


class Command(BaseCommand):
    help = "Start an agent run for a tenant and print its outcome and trace."

    def add_arguments(self, parser):
        parser.add_argument("message", help="The request, e.g. 'What plan is C-1002 on?'")
        parser.add_argument("--tenant", required=True, help="Tenant slug, e.g. acme")
        parser.add_argument("--agent", default="support")
        parser.add_argument("--intent", default=None)
        parser.add_argument("--enqueue", action="store_true", help="Run on the Celery workers")
        parser.add_argument(
            "--wait", type=float, default=0, help="With --enqueue: seconds to wait for the run to park or end"
        )
        parser.add_argument("--json", action="store_true", help="Print the run and trace as JSON")

    def handle(self, *args, **options):
        from agents.runtime import run_execute
        from agents.services.runs import run_start

        actor = Actor.system(f"cli:{getpass.getuser()}")
        try:
            run, _ = run_start(
                actor=actor,
                tenant=options["tenant"],
                agent=options["agent"],
                message=options["message"],
                intent=options["intent"],
                enqueue=options["enqueue"],
            )
        except DomainError as exc:
            raise CommandError(exc.message) from None
        if not options["enqueue"]:
            run_execute(run_id=str(run.public_id), worker="cli")
        elif options["wait"]:
            deadline = time.monotonic() + options["wait"]
            while time.monotonic() < deadline:
                status = AgentRun.objects.filter(pk=run.pk).values_list("status", flat=True).get()
                if status in TERMINAL_RUN_STATUSES or status == RunStatus.WAITING_APPROVAL:
                    break
                time.sleep(0.2)
        run = AgentRun.objects.select_related("agent", "tenant").get(pk=run.pk)
        summary, trace = run_summary(run), run_trace(run, include_io=False)
        if options["json"]:
            self.stdout.write(json.dumps({"run": summary, "trace": trace}, indent=2, default=str))
            return
        self.stdout.write(f"run {summary['id']}  status={summary['status']}  trace={summary['trace_id']}")
        for step in trace["steps"]:
            policy = f" policy={step['policy']['decision']}" if step["policy"] else ""
            self.stdout.write(
                f"  {step['seq']:>2} {step['kind']:<8} {step['name']:<22} "
                f"{'ok ' if step['ok'] else 'ERR'} {step['duration_ms']:>8.2f} ms{policy}"
            )
        if summary["pending_approval"]:
            pending = summary["pending_approval"]
            self.stdout.write(
                f"waiting for approval {pending['id']} in queue {pending['queue']}: "
                f"{pending['tool']} {json.dumps(pending['arguments'])}"
            )
        if summary["terminal_reason"]:
            self.stdout.write(f"reason: {summary['terminal_reason']}")
        if summary["result"] and summary["result"].get("message"):
            self.stdout.write(f"answer: {summary['result']['message']}")
        usage = summary["usage"]
        self.stdout.write(f"usage: {usage['steps']} steps, {usage['tokens']} tokens, ${usage['cost_usd']}")
