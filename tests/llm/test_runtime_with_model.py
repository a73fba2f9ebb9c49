"""The runtime driven by an OpenAI-compatible model over a real socket (the fake server)."""

from __future__ import annotations

import pytest

from agents.models import CreditLedger, RunStatus, Step
from agents.runtime import run_execute
from agents.services import run_start
from audit.models import AuditEvent
from tests.llm.fake_openai import ok_final, ok_tool, status

pytestmark = pytest.mark.django_db


@pytest.fixture
def support_agent(seeded, acme):
    from agents.seed import seed_runtime, seed_support_data

    seed_support_data(tenants={"acme": acme})
    seed_runtime()


@pytest.fixture
def routes(settings, fake_openai, second_openai):
    def route(server, name):
        return {"base_url": server.url, "model": f"model-{name}", "api_key": "sk-test-0123456789abcdef",
                "timeout": 0.5, "max_attempts": 1, "price_in": 0.5, "price_out": 1.5}

    import uuid

    primary, backup = f"p{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"
    settings.MODEL_ROUTES = {primary: route(fake_openai, primary), backup: route(second_openai, backup)}
    settings.MODEL_AGENT_ROUTES = {"support": [primary, backup]}
    return fake_openai, second_openai


def _run(operator, message):
    run, _ = run_start(actor=operator, tenant="acme", message=message, enqueue=False)
    outcome = run_execute(run_id=str(run.public_id), worker="pytest")
    run.refresh_from_db()
    return run, outcome


def test_a_model_over_http_drives_a_read_only_run_to_success(support_agent, routes, operator):
    primary, _ = routes
    primary.push(ok_tool("lookup_subscription", {"customer": "C-1001"}),
                 ok_final("C-1001 is on the team plan."))
    run, _ = _run(operator, "What plan is customer C-1001 on?")
    assert run.status == RunStatus.SUCCEEDED, run.terminal_reason
    assert run.result["message"] == "C-1001 is on the team plan."
    assert run.tokens_used > 0 and run.cost_usd > 0
    kinds = list(Step.objects.filter(run=run).order_by("seq").values_list("kind", flat=True))
    assert kinds == ["model", "tool", "model"]
    assert run.invocations.get().state == "succeeded"
    assert primary.count == 2
    # The API key never reaches the trace or the audit log.
    assert "sk-test-0123456789abcdef" not in str(list(Step.objects.filter(run=run).values()))
    assert not AuditEvent.objects.filter(payload__icontains="sk-test-0123456789abcdef").exists()


def test_primary_down_falls_back_to_the_second_route(support_agent, routes, operator):
    primary, backup = routes
    primary.default = status(500)
    backup.push(ok_final("Answered by the backup route."))
    run, _ = _run(operator, "What plan is customer C-1001 on?")
    assert run.status == RunStatus.SUCCEEDED, run.terminal_reason
    assert run.result["message"] == "Answered by the backup route."
    assert primary.count >= 1 and backup.count == 1


def test_every_route_down_hands_the_run_to_a_human_with_the_reasons(support_agent, routes, operator):
    primary, backup = routes
    primary.default = status(500)
    backup.default = status(503)
    run, outcome = _run(operator, "Customer C-1001 was billed twice in March, refund the $40 duplicate")
    assert outcome == RunStatus.HANDED_OFF
    assert run.status == RunStatus.HANDED_OFF
    assert run.failure_class == "model"
    assert "every model route" in run.terminal_reason
    assert run.result.get("handoff_summary")
    assert not CreditLedger.objects.exists()
    assert AuditEvent.objects.filter(action="run.handed_off", object_id=str(run.public_id)).exists() or \
        AuditEvent.objects.filter(action="run.handed_off", trace_id=run.trace_id).exists()


def test_a_model_that_keeps_calling_an_unknown_tool_never_runs_it_and_hands_off(
        support_agent, routes, operator):
    from agents.models import ToolInvocation

    primary, backup = routes
    primary.default = ok_tool("delete_all_customers", {})
    backup.default = ok_tool("delete_all_customers", {})
    run, _ = _run(operator, "What plan is customer C-1001 on?")
    assert run.status == RunStatus.HANDED_OFF
    assert run.failure_class == "model"
    assert not ToolInvocation.objects.filter(run=run, tool="delete_all_customers").exists()
    # Each route got the original call plus two repair turns carrying the validation error.
    assert primary.count == 3 and backup.count == 3
    repair_turn = str(primary.requests[-1]["body"]["messages"])
    assert "unknown tool" in repair_turn
