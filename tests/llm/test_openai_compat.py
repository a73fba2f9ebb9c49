"""The OpenAI-compatible client against a fake server on a real socket."""

from __future__ import annotations

import logging

import pytest

from agents.llm.base import STEP_SUMMARY, InvalidModelOutput, ModelRequest, ModelRequestRejected, ToolSpec
from agents.llm.breaker import CLOSED
from agents.llm.openai_compat import RouteUnavailable
from agents.prompting import build_messages
from tests.llm.fake_openai import (
    cut_off,
    hang,
    malformed_body,
    no_choices,
    ok_content,
    ok_final,
    ok_tool,
    ollama_tool,
    status,
    tool_calls,
)

LOOKUP = ToolSpec(
    name="lookup_subscription",
    description="Look up a customer's subscription.",
    parameters={
        "type": "object",
        "properties": {"customer_code": {"type": "string", "pattern": "^[A-Z]-\\d{4}$"}},
        "required": ["customer_code"],
        "additionalProperties": False,
    },
)


def request(**kwargs) -> ModelRequest:
    kwargs.setdefault("messages", [{"role": "system", "content": "rules"},
                                   {"role": "user", "content": "refund C-1001"}])
    kwargs.setdefault("tools", [LOOKUP])
    return ModelRequest(**kwargs)


def test_tool_call_is_parsed_into_one_validated_action(fake_openai, make_route, make_client):
    fake_openai.push(ok_tool("lookup_subscription", {"customer_code": "C-1001"}, content="check first"))
    route = make_route(fake_openai)
    response = make_client(route).complete(request())

    assert response.action == {"type": "tool_call", "tool": "lookup_subscription",
                               "arguments": {"customer_code": "C-1001"}, "rationale": "check first"}
    assert response.route == route.name
    assert (response.repairs, response.attempts) == (0, 1)
    assert len(response.prompt_hash) == 64
    sent = fake_openai.requests[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["model"] == "test-model"
    assert sent["body"]["tools"] == [{"type": "function", "function": {
        "name": "lookup_subscription", "description": LOOKUP.description, "parameters": LOOKUP.parameters}}]
    assert sent["body"]["tool_choice"] == "auto" and sent["body"]["parallel_tool_calls"] is False
    assert sent["headers"]["Authorization"] == f"Bearer {route.api_key}"


def test_usage_is_counted_in_tokens_and_cost(fake_openai, make_route, make_client):
    fake_openai.push(ok_final("hi", usage=(1200, 300)))
    response = make_client(make_route(fake_openai, price_in=0.5, price_out=1.5)).complete(request())
    assert (response.prompt_tokens, response.completion_tokens, response.total_tokens) == (1200, 300, 1500)
    assert response.cost_usd == pytest.approx(1.2 * 0.5 + 0.3 * 1.5)


def test_missing_usage_is_estimated_not_zero(fake_openai, make_route, make_client):
    fake_openai.push(ok_final("hi", usage=None))
    response = make_client(make_route(fake_openai)).complete(request())
    assert response.prompt_tokens > 0 and response.completion_tokens > 0


def test_final_answer_in_fenced_json_content(fake_openai, make_route, make_client):
    fake_openai.push(ok_content('```json\n{"type": "final", "message": "Refund proposed."}\n```'))
    response = make_client(make_route(fake_openai)).complete(request())
    assert response.action == {"type": "final", "message": "Refund proposed."}


def test_summary_steps_send_no_tools(fake_openai, make_route, make_client):
    fake_openai.push(ok_final("summary"))
    make_client(make_route(fake_openai)).complete(request(step_kind=STEP_SUMMARY))
    sent = fake_openai.requests[0]["body"]
    assert "tools" not in sent and "tool_choice" not in sent and "parallel_tool_calls" not in sent


# --- retries ----------------------------------------------------------------------------


def test_retries_429_and_500_with_exponential_backoff(fake_openai, make_route, make_client, sleeps):
    fake_openai.push(status(429), status(500), ok_final("third time"))
    response = make_client(make_route(fake_openai, max_attempts=3)).complete(request())
    assert response.action["message"] == "third time"
    assert response.attempts == 3
    assert fake_openai.count == 3
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0] > 0


def test_timeout_is_retried_then_the_route_gives_up(fake_openai, make_route, make_client):
    fake_openai.push(hang(), hang())
    client = make_client(make_route(fake_openai, timeout=0.2, max_attempts=2))
    with pytest.raises(RouteUnavailable, match="timed out") as caught:
        client.complete(request())
    assert caught.value.retryable
    assert fake_openai.count == 2


def test_a_body_that_is_not_json_is_retried(fake_openai, make_route, make_client):
    fake_openai.push(malformed_body(), ok_final("fine"))
    response = make_client(make_route(fake_openai)).complete(request())
    assert response.action["message"] == "fine" and response.attempts == 2


@pytest.mark.parametrize("code", [401, 403, 404])
def test_other_4xx_are_not_retried(fake_openai, make_route, make_client, code):
    fake_openai.push(status(code))
    with pytest.raises(RouteUnavailable, match=f"HTTP {code}") as caught:
        make_client(make_route(fake_openai)).complete(request())
    assert caught.value.outcome == "refused"
    assert fake_openai.count == 1


def test_api_key_never_appears_in_errors_or_logs(fake_openai, make_route, make_client, caplog):
    route = make_route(fake_openai, max_attempts=1)
    fake_openai.push(status(401, text=f"bad key {route.api_key}"), status(500))
    caplog.set_level(logging.DEBUG)
    client = make_client(route)
    for _ in range(2):
        with pytest.raises(RouteUnavailable) as caught:
            client.complete(request())
        assert route.api_key not in str(caught.value)
    assert route.api_key not in repr(route) and route.api_key not in repr(client)
    assert route.api_key not in caplog.text


# --- validation and repair --------------------------------------------------------------


def test_malformed_json_is_repaired_with_the_errors_sent_back(fake_openai, make_route, make_client):
    fake_openai.push(ok_content("Sure! I will refund it."), ok_final("Refund proposed."))
    response = make_client(make_route(fake_openai)).complete(request())
    assert response.action == {"type": "final", "message": "Refund proposed."}
    assert response.repairs == 1
    assert (response.prompt_tokens, response.completion_tokens) == (200, 40)  # both calls counted
    repair = fake_openai.requests[1]["body"]["messages"]
    assert repair[-2] == {"role": "assistant", "content": "Sure! I will refund it."}
    assert "not valid JSON" in repair[-1]["content"]


def test_arguments_failing_the_schema_are_repaired(fake_openai, make_route, make_client):
    fake_openai.push(ok_tool("lookup_subscription", {"customer_code": "1001", "extra": 1}),
                     ok_tool("lookup_subscription", {"customer_code": "C-1001"}))
    response = make_client(make_route(fake_openai)).complete(request())
    assert response.action["arguments"] == {"customer_code": "C-1001"}
    feedback = fake_openai.requests[1]["body"]["messages"][-1]["content"]
    assert "arguments/customer_code" in feedback
    assert "Additional properties are not allowed" in feedback


def test_arguments_that_are_not_json_are_repaired(fake_openai, make_route, make_client):
    fake_openai.push(ok_tool("lookup_subscription", arguments_text='{"customer_code": '),
                     ok_tool("lookup_subscription", {"customer_code": "C-1001"}))
    response = make_client(make_route(fake_openai)).complete(request())
    assert response.repairs == 1
    assert "are not valid JSON" in fake_openai.requests[1]["body"]["messages"][-1]["content"]


def test_unknown_tool_is_a_validation_error_and_repairs_stop_after_two(fake_openai, make_route,
                                                                       make_client):
    fake_openai.push(*[ok_tool("delete_everything", {"confirm": True})] * 3, ok_final("never asked"))
    with pytest.raises(InvalidModelOutput, match="after 2 repair") as caught:
        make_client(make_route(fake_openai)).complete(request())
    assert fake_openai.count == 3  # the first answer and two repairs, no more
    assert "unknown tool 'delete_everything'" in fake_openai.requests[1]["body"]["messages"][-1]["content"]
    assert "lookup_subscription" in fake_openai.requests[1]["body"]["messages"][-1]["content"]
    assert caught.value.prompt_tokens == 300  # spent tokens still count


# --- servers' quirks --------------------------------------------------------------------


def test_several_tool_calls_in_one_answer_take_the_first_and_say_so(fake_openai, make_route, make_client):
    # A server that ignores parallel_tool_calls=false: the first call is the action (it meets
    # policy on its own; the model sees its result and may call the next one), no repair turn.
    fake_openai.push(tool_calls([("lookup_subscription", {"customer_code": "C-1001"}),
                                 ("lookup_subscription", {"customer_code": "C-1002"})]))
    response = make_client(make_route(fake_openai)).complete(request())
    assert response.action["arguments"] == {"customer_code": "C-1001"}
    assert response.repairs == 0 and fake_openai.count == 1
    assert response.notes == ["the answer had 2 tool calls (lookup_subscription, lookup_subscription); "
                              "only the first was taken"]


def test_ollama_arguments_as_an_object_are_taken_as_they_are(fake_openai, make_route, make_client):
    fake_openai.push(ollama_tool("lookup_subscription", {"customer_code": "C-1001"}))
    response = make_client(make_route(fake_openai)).complete(request())
    assert response.action == {"type": "tool_call", "tool": "lookup_subscription",
                               "arguments": {"customer_code": "C-1001"}}
    assert response.repairs == 0


def test_arguments_neither_a_string_nor_an_object_are_repaired(fake_openai, make_route, make_client):
    fake_openai.push(tool_calls([("lookup_subscription", ["C-1001"])], as_object=True),
                     ok_tool("lookup_subscription", {"customer_code": "C-1001"}))
    response = make_client(make_route(fake_openai)).complete(request())
    assert response.repairs == 1
    assert "must be a JSON object, got list" in fake_openai.requests[1]["body"]["messages"][-1]["content"]


def test_null_content_beside_tool_calls_is_no_rationale(fake_openai, make_route, make_client):
    fake_openai.push(ok_tool("lookup_subscription", {"customer_code": "C-1001"}, content=None))
    response = make_client(make_route(fake_openai)).complete(request())
    assert "rationale" not in response.action and response.repairs == 0


def test_an_answer_cut_off_at_the_token_limit_is_repaired(fake_openai, make_route, make_client):
    fake_openai.push(cut_off('{"type": "final", "message": "Your refund of'),
                     ok_final("Refund proposed."))
    response = make_client(make_route(fake_openai, max_tokens=64)).complete(request())
    assert response.action == {"type": "final", "message": "Refund proposed."}
    assert response.repairs == 1
    assert fake_openai.requests[0]["body"]["max_tokens"] == 64
    assert "cut off at the token limit" in fake_openai.requests[1]["body"]["messages"][-1]["content"]


def test_a_cut_off_answer_is_not_taken_even_when_it_parses(fake_openai, make_route, make_client):
    fake_openai.push(cut_off('{"type": "final", "message": "Your refund"}'), ok_final("Complete."))
    response = make_client(make_route(fake_openai)).complete(request())
    assert response.action["message"] == "Complete."


def test_an_empty_choices_is_asked_again_without_tripping_the_breaker(fake_openai, make_route, make_client):
    fake_openai.push(no_choices(), ok_final("second time"))
    client = make_client(make_route(fake_openai), failures=1)
    response = client.complete(request())
    assert response.action["message"] == "second time" and response.attempts == 2
    assert client.breaker.state() == CLOSED


def test_a_route_that_keeps_answering_no_choices_gives_up_saying_so(fake_openai, make_route, make_client):
    fake_openai.default = no_choices()
    client = make_client(make_route(fake_openai, max_attempts=2), failures=1)
    with pytest.raises(RouteUnavailable, match="no choices") as caught:
        client.complete(request())
    assert caught.value.outcome == "no_answer"
    assert client.breaker.state() == CLOSED and fake_openai.count == 2


# --- a 400 is the model's failure, not an outage -----------------------------------------


@pytest.mark.parametrize("code", [400, 413, 422])
def test_a_refused_request_is_a_model_failure_with_the_servers_message(fake_openai, make_route, make_client,
                                                                       code):
    route = make_route(fake_openai)
    body = ('{"error": {"message": "This model\'s maximum context length is 8192 tokens.", '
            '"type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}')
    fake_openai.push(*[status(code, text=body)] * 10)
    client = make_client(route, failures=3)
    for _ in range(5):
        with pytest.raises(ModelRequestRejected) as caught:
            client.complete(request())
        assert not caught.value.retryable
        assert caught.value.detail == "This model's maximum context length is 8192 tokens."
        assert f"route {route.name!r} refused the request with HTTP {code}: This model's" in str(caught.value)
    assert fake_openai.count == 5  # never retried
    assert client.breaker.state() == CLOSED  # the server is up: no breaker failure


# --- the protocol, as sent --------------------------------------------------------------


OBSERVED = [{"seq": 2, "tool": "lookup_subscription", "arguments": {"customer_code": "C-1001"}, "ok": True,
             "decision": "allow", "result": {"plan": "team"}}]


def test_the_conversation_is_sent_as_the_builder_made_it(fake_openai, make_route, make_client):
    messages = build_messages(instructions="x", user_message="refund C-1001", observations=OBSERVED)
    fake_openai.push(ok_final("ok"))
    make_client(make_route(fake_openai)).complete(request(messages=messages))
    assert fake_openai.requests[0]["body"]["messages"] == messages


def test_a_json_mode_route_sends_calls_as_content_and_no_tools(fake_openai, make_route, make_client):
    messages = build_messages(instructions="x", user_message="refund C-1001", observations=OBSERVED)
    fake_openai.push(ok_content('{"type": "tool_call", "tool": "lookup_subscription", '
                                '"arguments": {"customer_code": "C-1002"}}'))
    response = make_client(make_route(fake_openai, tool_calling="json")).complete(request(messages=messages))
    assert response.action["arguments"] == {"customer_code": "C-1002"}
    sent = fake_openai.requests[0]["body"]
    assert "tools" not in sent and "tool_choice" not in sent and "parallel_tool_calls" not in sent
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert "lookup_subscription: Look up a customer's subscription." in sent["messages"][0]["content"]
    assert sent["messages"][3]["content"].startswith("Result of your tool call call00002:\n<<<DATA id=")


def test_wrong_action_type_is_rejected(fake_openai, make_route, make_client):
    fake_openai.push(ok_content('{"type": "execute_sql", "sql": "drop table"}'),
                     ok_content('{"type": "handoff"}'), ok_content('{"type": "handoff", "reason": "unsure"}'))
    response = make_client(make_route(fake_openai)).complete(request())
    assert response.action == {"type": "handoff", "reason": "unsure"}
    assert response.repairs == 2
    assert "'type' must be one of" in fake_openai.requests[1]["body"]["messages"][-1]["content"]
    assert "'reason' is a required property" in fake_openai.requests[2]["body"]["messages"][-1]["content"]
