"""Conversation summaries through the summarising route, with a deterministic fallback."""

from __future__ import annotations

import uuid

from agents.knowledge.selectors import conversation_window
from agents.knowledge.services import conversation_append, model_summariser
from agents.llm.base import STEP_SUMMARY
from agents.llm.router import RoutedClient
from tests.llm.fake_openai import ok_final, status

LONG = "The customer C-1001 disputes the March charge. " + "context " * 60


def test_the_summarising_route_writes_the_summary(fake_openai, make_route, make_client, acme):
    summariser_route = make_route(fake_openai, model="small-summariser", max_attempts=1)
    client = RoutedClient({STEP_SUMMARY: [summariser_route], "plan": []},
                          client_factory=lambda route: make_client(route))
    spent = []
    fake_openai.push(ok_final("C-1001 disputes a duplicate March charge; refund pending."))
    conversation = str(uuid.uuid4())
    for index in range(4):
        conversation_append(tenant=acme, conversation_id=conversation, role="user", content=LONG,
                            token_budget=300, summariser=model_summariser(client, on_response=spent.append))
    window = conversation_window(tenant=acme, conversation_id=conversation)
    assert window[0] == {"role": "summary",
                         "content": "C-1001 disputes a duplicate March charge; refund pending."}
    sent = fake_openai.requests[0]["body"]
    assert sent["model"] == "small-summariser" and "tools" not in sent
    assert all("kind=user_message" in m["content"] for m in sent["messages"][1:])
    assert spent and spent[0].total_tokens == 120


def test_a_failing_summarising_route_falls_back_to_the_deterministic_summary(
        fake_openai, make_route, make_client, acme):
    client = RoutedClient({STEP_SUMMARY: [make_route(fake_openai, max_attempts=1)]},
                          client_factory=lambda route: make_client(route))
    fake_openai.default = status(500)  # every summarising call fails
    conversation = str(uuid.uuid4())
    for _ in range(4):
        conversation_append(tenant=acme, conversation_id=conversation, role="user", content=LONG,
                            token_budget=300, summariser=model_summariser(client))
    window = conversation_window(tenant=acme, conversation_id=conversation)
    assert window[0]["role"] == "summary" and window[0]["content"].startswith("Summary of")
    assert fake_openai.count >= 1
