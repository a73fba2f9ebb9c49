"""The runtime driven by an OpenAI-compatible model over a real socket: the strict server of
tests/llm/fake_openai.py, which refuses what OpenAI's API refuses (a test fails on any request
it refused, unless it says it expects one)."""

from __future__ import annotations

import itertools
import json
import re
import uuid

import httpx
import pytest

from agents import runtime as rt
from agents.approval_subject import run_subject
from agents.llm.openai_compat import breaker_for
from agents.models import Agent, RunStatus, Step
from agents.runtime import run_execute
from agents.services.runs import run_start
from approvals.models import Handoff
from audit.models import AuditEvent
from support.models import CreditLedger, ReplyDraft
from tests.llm.fake_openai import ok_content, ok_final, ok_tool, ollama_tool, status, tool_calls

pytestmark = pytest.mark.django_db


@pytest.fixture
def support_agent(seeded, acme):
    from agents.seed import seed_runtime
    from support.seed import seed_support_data

    seed_support_data(tenants={"acme": acme})
    seed_runtime()


def _route(server, name, **extra):
    return {"base_url": server.url, "model": f"model-{name}", "api_key": "sk-test-0123456789abcdef",
            "timeout": 0.5, "max_attempts": 1, "price_in": 0.5, "price_out": 1.5, **extra}


@pytest.fixture
def routes(settings, fake_openai, second_openai):
    primary, backup = f"p{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"
    settings.MODEL_ROUTES = {primary: _route(fake_openai, primary), backup: _route(second_openai, backup)}
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


def test_a_model_that_keeps_calling_an_unknown_tool_never_runs_it_and_the_run_fails(
        support_agent, routes, operator):
    from agents.models import ToolInvocation

    primary, backup = routes
    primary.default = ok_tool("delete_all_customers", {})
    backup.default = ok_tool("delete_all_customers", {})
    run, _ = _run(operator, "What plan is customer C-1001 on?")
    # Output that stays invalid after the repairs is the model's failure (docs/runtime.md's
    # failure table): failed, with a reason that says so; no handoff as if the routes were down.
    assert run.status == RunStatus.FAILED, run.terminal_reason
    assert run.failure_class == "model"
    assert "no model route gave a valid answer" in run.terminal_reason
    assert "unknown tool 'delete_all_customers'" in run.terminal_reason
    assert not Handoff.objects.of_subject(run_subject(run)).exists()
    assert not ToolInvocation.objects.filter(run=run, tool="delete_all_customers").exists()
    # Each route got the original call plus two repair turns carrying the validation error.
    assert primary.count == 3 and backup.count == 3
    repair_turn = str(primary.requests[-1]["body"]["messages"])
    assert "unknown tool" in repair_turn
    failed_step = Step.objects.get(run=run, kind="model")
    assert [r["outcome"] for r in failed_step.output["action"]["routes"]] == ["invalid_output"] * 2


# --- the protocol, end to end ------------------------------------------------------------

BLOCK = re.compile(r"\A<<<DATA id=([0-9a-f]{12}) kind=tool_result source=(\w+) ok=(true|false)>>>\n"
                   r"(.*)\n<<<END DATA id=\1>>>\Z", re.S)


def _tool_results(messages):
    """(tool_call_id, tool, ok, body) of every tool message, checked against the call it answers."""
    results, calls = [], {}
    for message in messages:
        for call in message.get("tool_calls") or []:
            calls[call["id"]] = call["function"]["name"]
        if message["role"] == "tool":
            block = BLOCK.match(message["content"])
            assert block, message["content"]
            assert calls[message["tool_call_id"]] == block.group(2)
            results.append((message["tool_call_id"], block.group(2), block.group(3) == "true",
                            json.loads(block.group(4))))
    return results


def test_three_tool_calls_and_a_final_answer_succeed_through_the_strict_server(
        support_agent, routes, operator):
    primary, backup = routes
    primary.push(
        ok_tool("lookup_subscription", {"customer": "C-1003"}, content="First the plan."),
        ok_tool("search_tickets", {"customer": "C-1003"}),
        ok_tool("draft_reply", {"customer": "C-1003", "ticket": "C-1003-T2",
                                "body": "You are on the enterprise plan; we are looking at February."}),
        ok_final("C-1003 is on the enterprise plan and has two tickets; a reply is drafted."),
    )
    run, _ = _run(operator, "What plan is C-1003 on, and any open tickets?")

    assert run.status == RunStatus.SUCCEEDED, run.terminal_reason
    assert run.result["message"].startswith("C-1003 is on the enterprise plan")
    assert ReplyDraft.objects.filter(run=run, ticket_number="C-1003-T2").count() == 1
    assert primary.count == 4 and backup.count == 0 and primary.violations == []
    sent = [request["body"] for request in primary.requests]
    agent = Agent.objects.get(pk=run.agent_id)
    for body in sent:
        assert [t["function"]["name"] for t in body["tools"]] == agent.allowed_tools
        assert body["tool_choice"] == "auto" and body["parallel_tool_calls"] is False
    last = sent[-1]["messages"]
    assert [m["role"] for m in last] == ["system", "user"] + ["assistant", "tool"] * 3
    assert "Text between a line <<<DATA" in last[0]["content"] and "tenant acme" in last[0]["content"]
    assert "kind=user_message" in last[1]["content"]
    # Each call carries the id of the step that proposed it, answered by its result.
    observations = run.state["observations"]
    assert [m["tool_calls"][0]["id"] for m in last if m.get("tool_calls")] == [
        f"call{obs['seq']:05d}" for obs in observations]
    assert [json.loads(m["tool_calls"][0]["function"]["arguments"]) for m in last if m.get("tool_calls")] == [
        obs["arguments"] for obs in observations]
    results = _tool_results(last)
    assert [(tool, ok) for _, tool, ok, _ in results] == [
        ("lookup_subscription", True), ("search_tickets", True), ("draft_reply", True)]
    assert results[0][3]["result"]["subscriptions"][0]["plan"] == "enterprise"
    assert {t["number"] for t in results[1][3]["result"]["tickets"]} == {"C-1003-T1", "C-1003-T2"}
    # A replayed conversation is byte-stable: each request starts with the one before it.
    for before, after in itertools.pairwise(sent):
        assert json.dumps(after["messages"][:len(before["messages"])]) == json.dumps(before["messages"])
    # The trace keeps the calls as they were sent.
    model_steps = Step.objects.filter(run=run, kind="model").order_by("seq")
    assert model_steps.last().input["messages"][2]["tool_calls"][0]["id"] == last[2]["tool_calls"][0]["id"]


def test_quirky_answers_still_make_a_valid_conversation(support_agent, routes, operator):
    primary, _ = routes
    primary.push(
        ollama_tool("lookup_subscription", {"customer": "C-1001"}),  # arguments as an object
        tool_calls([("search_tickets", {"customer": "C-1001"}),
                    ("lookup_subscription", {"customer": "C-1002"})]),
        ok_content(None, usage=(10, 1)),  # nothing at all: repaired
        ok_final("Done."),
    )
    run, _ = _run(operator, "What plan is customer C-1001 on?")
    assert run.status == RunStatus.SUCCEEDED, run.terminal_reason
    assert [obs["tool"] for obs in run.state["observations"]] == ["lookup_subscription", "search_tickets"]
    noted = Step.objects.filter(run=run, kind="model").order_by("seq")[1]
    assert noted.output["notes"] == [
        "the answer had 2 tool calls (search_tickets, lookup_subscription); only the first was taken"]
    last = primary.requests[-1]["body"]["messages"]
    assert [m["role"] for m in last[-2:]] == ["assistant", "user"]  # the repair turn
    assert len([m for m in last if m.get("tool_calls")]) == 2  # one call per answer, as replayed
    assert primary.violations == []


def test_a_refused_call_comes_back_as_a_tool_result_carrying_the_error(support_agent, routes, operator):
    primary, _ = routes
    primary.push(ok_tool("lookup_subscription", {"customer": "C-1999"}),  # no such customer
                 ok_final("I could not find that customer."))
    run, _ = _run(operator, "What plan is customer C-1999 on?")
    assert run.status == RunStatus.SUCCEEDED, run.terminal_reason
    [(_, tool, ok, body)] = _tool_results(primary.requests[1]["body"]["messages"])
    assert (tool, ok) == ("lookup_subscription", False)
    assert body["ok"] is False and body["error"]["code"] == "not_found"
    assert "C-1999 not found" in body["error"]["message"]


def test_a_denied_call_is_answered_in_the_closing_turn(support_agent, routes, operator, globex):
    from support.seed import seed_support_data

    seed_support_data(tenants={"globex": globex})
    primary, _ = routes
    primary.push(ok_tool("lookup_subscription", {"customer": "G-2001"}),  # another tenant's customer
                 ok_final("I cannot look at that account."))
    run, _ = _run(operator, "What plan is customer G-2001 on?")
    assert run.status == RunStatus.DENIED, run.terminal_reason
    assert primary.count == 2  # the model was asked again after the denial
    [(call_id, tool, ok, body)] = _tool_results(primary.requests[1]["body"]["messages"])
    assert (tool, ok) == ("lookup_subscription", False)
    assert call_id == f"call{run.state['observations'][0]['seq']:05d}"
    assert body["decision"] == "deny" and body["error"]["code"] == "denied"
    assert "another tenant" in body["error"]["message"]


def test_a_json_mode_route_runs_the_same_scenario(settings, support_agent, fake_openai, operator):
    name = f"j{uuid.uuid4().hex[:8]}"
    settings.MODEL_ROUTES = {name: _route(fake_openai, name, tool_calling="json")}
    settings.MODEL_AGENT_ROUTES = {"support": [name]}
    fake_openai.push(
        ok_content(json.dumps({"type": "tool_call", "tool": "lookup_subscription",
                               "arguments": {"customer": "C-1001"}})),
        ok_final("C-1001 is on the team plan."),
    )
    run, _ = _run(operator, "What plan is customer C-1001 on?")
    assert run.status == RunStatus.SUCCEEDED, run.terminal_reason
    second = fake_openai.requests[1]["body"]
    assert "tools" not in second and "parallel_tool_calls" not in second
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    assert "lookup_subscription: " in second["messages"][0]["content"]
    assert json.loads(second["messages"][2]["content"])["tool"] == "lookup_subscription"
    seq = run.state["observations"][0]["seq"]
    assert second["messages"][3]["content"].startswith(f"Result of your tool call call{seq:05d}:\n<<<DATA")


# --- the old shape, and 400s --------------------------------------------------------------


def old_messages(run):
    """The runtime's message builder before issue 25, as it was."""
    messages = [
        {"role": "system", "content": "You are a customer-support agent for tenant acme."},
        {"role": "user", "content": f"<untrusted>{run.input.get('message', '')}</untrusted>"},
    ]
    for obs in run.state.get("observations", []):
        messages.append({"role": "assistant", "content": json.dumps(
            {"type": "tool_call", "tool": obs["tool"], "arguments": obs.get("arguments", {})})})
        body = obs.get("result") if obs.get("ok") else {"error": obs.get("error")}
        messages.append({"role": "tool", "name": obs["tool"],
                         "content": f"<untrusted>{json.dumps(body, default=str)}</untrusted>"})
    return messages


def test_the_old_message_shape_is_refused_and_the_run_fails_with_the_servers_message(
        support_agent, routes, operator, monkeypatch):
    primary, backup = routes
    primary.expect_violations()
    monkeypatch.setattr(rt, "_messages", old_messages)
    primary.push(ok_tool("lookup_subscription", {"customer": "C-1001"}), ok_final("never reached"))
    run, _ = _run(operator, "What plan is customer C-1001 on?")

    assert primary.count == 2  # the first step had no tool turn yet; the second is refused
    assert primary.violations == [{"request": 1, "param": "messages[3].tool_call_id",
                                   "message": "Invalid 'messages[3].tool_call_id': Field required."}]
    assert run.status == RunStatus.FAILED and run.failure_class == "model"
    assert "HTTP 400" in run.terminal_reason and "messages[3].tool_call_id" in run.terminal_reason
    assert backup.count == 0  # no fallback: not an outage
    assert not Handoff.objects.of_subject(run_subject(run)).exists()
    # The answer is OpenAI's error body.
    refused = httpx.post(f"{primary.url}/chat/completions", timeout=5, json={
        "model": "m", "messages": old_messages(run)})
    assert refused.status_code == 400
    assert refused.json() == {"error": {"message": "Invalid 'messages[3].tool_call_id': Field required.",
                                        "type": "invalid_request_error", "param": "messages[3].tool_call_id",
                                        "code": None}}
    # The same conversation built by the runtime's builder is taken.
    monkeypatch.undo()
    assert httpx.post(f"{primary.url}/chat/completions", timeout=5, json={
        "model": "m", "messages": rt._messages(run)}).status_code == 200


def test_a_server_refusing_the_request_fails_the_run_and_does_not_trip_the_breaker(
        support_agent, routes, operator, settings):
    primary, backup = routes
    primary.default = status(400, text=json.dumps({"error": {
        "message": "This model's maximum context length is 8192 tokens.", "type": "invalid_request_error",
        "param": "messages", "code": "context_length_exceeded"}}))
    for attempt in range(6):
        run, outcome = _run(operator, "What plan is customer C-1001 on?")
        assert outcome == RunStatus.FAILED and run.failure_class == "model"
        assert "This model's maximum context length is 8192 tokens." in run.terminal_reason
        assert "every model route" not in run.terminal_reason
    assert backup.count == 0
    assert breaker_for(next(iter(settings.MODEL_ROUTES))).state() == "closed"
