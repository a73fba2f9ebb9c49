"""Circuit breaker per route, fallback between routes, routing by step kind, handoff."""

from __future__ import annotations

import pytest

from agents.llm.base import (
    STEP_PLAN,
    STEP_SUMMARY,
    STEP_TOOL,
    AllRoutesDown,
    InvalidModelOutput,
    ModelRequest,
    ModelRequestRejected,
)
from agents.llm.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from agents.llm.openai_compat import RouteUnavailable
from agents.llm.router import RoutedClient
from tests.llm.fake_openai import hang, ok_content, ok_final, status
from tests.llm.test_openai_compat import request


def fail_five_times(fake, client):
    fake.push(*[status(500)] * 5)
    for _ in range(5):
        with pytest.raises(RouteUnavailable):
            client.complete(request())


def test_breaker_opens_after_five_failures_and_calls_stop_reaching_the_route(
        fake_openai, make_route, make_client):
    client = make_client(make_route(fake_openai, max_attempts=1))
    fail_five_times(fake_openai, client)
    assert client.breaker.state() == OPEN

    with pytest.raises(RouteUnavailable, match="circuit breaker open") as caught:
        client.complete(request())
    assert caught.value.outcome == "circuit_open"
    assert fake_openai.count == 5  # the sixth call never left the process


def test_failures_outside_the_window_do_not_open_it(fake_openai, make_route, make_client, clock):
    client = make_client(make_route(fake_openai, max_attempts=1))
    fake_openai.push(*[status(500)] * 5)
    for _ in range(5):
        with pytest.raises(RouteUnavailable):
            client.complete(request())
        clock.advance(20)  # 5 failures spread over 100 s: never 5 within 60 s
    assert client.breaker.state() == CLOSED


def test_breaker_stops_retries_once_open(fake_openai, make_route, make_client):
    client = make_client(make_route(fake_openai, max_attempts=10), failures=3)
    fake_openai.push(*[status(503)] * 10)
    with pytest.raises(RouteUnavailable, match="circuit breaker open"):
        client.complete(request())
    assert fake_openai.count == 3


def test_half_open_probe_success_closes_the_breaker(fake_openai, make_route, make_client, clock):
    client = make_client(make_route(fake_openai, max_attempts=1))
    fail_five_times(fake_openai, client)
    clock.advance(31)
    assert client.breaker.state() == HALF_OPEN

    fake_openai.push(ok_final("back"))
    assert client.complete(request()).action["message"] == "back"
    assert client.breaker.state() == CLOSED
    assert client.complete(request()).action["type"] == "final"


def test_half_open_probe_failure_opens_it_again(fake_openai, make_route, make_client, clock):
    client = make_client(make_route(fake_openai, max_attempts=1))
    fail_five_times(fake_openai, client)
    clock.advance(31)
    fake_openai.push(status(500))
    with pytest.raises(RouteUnavailable, match="HTTP 500"):
        client.complete(request())
    assert client.breaker.state() == OPEN  # one failed probe is enough
    with pytest.raises(RouteUnavailable, match="circuit breaker open"):
        client.complete(request())
    assert fake_openai.count == 6


def test_half_open_lets_one_probe_through_at_a_time(clock):
    breaker = CircuitBreaker("probe-test", failures=1, cooldown=10, clock=clock)
    breaker.reset()
    breaker.record_failure()
    assert not breaker.allow()
    clock.advance(11)
    other_process = CircuitBreaker("probe-test", failures=1, cooldown=10, clock=clock)
    assert breaker.allow() is True
    assert other_process.allow() is False  # the probe slot is taken, in the shared cache
    breaker.record_success()
    assert other_process.state() == CLOSED and other_process.allow()


def test_breaker_state_is_shared_through_the_cache(clock):
    one = CircuitBreaker("shared-test", failures=2, clock=clock)
    one.reset()
    two = CircuitBreaker("shared-test", failures=2, clock=clock)
    one.record_failure()
    two.record_failure()  # counts on top of the first instance's failure
    assert one.state() == OPEN and two.state() == OPEN


# --- routing and fallback ---------------------------------------------------------------


def routed(routes, make_client, **kwargs):
    return RoutedClient(routes, client_factory=lambda route: make_client(route), **kwargs)


def test_fallback_to_the_next_route(fake_openai, second_openai, make_route, make_client):
    primary = make_route(fake_openai, max_attempts=2)
    backup = make_route(second_openai)
    fake_openai.push(status(500), status(502))
    second_openai.push(ok_final("from backup", usage=(10, 5)))
    response = routed({STEP_PLAN: [primary, backup]}, make_client).complete(request())

    assert response.route == backup.name
    assert response.action["message"] == "from backup"
    assert [(item["route"], item["outcome"]) for item in response.fallbacks] == [(primary.name, "failed")]
    assert "HTTP 502" in response.fallbacks[0]["reason"]


def test_fallback_on_output_that_stays_invalid_counts_all_tokens(fake_openai, second_openai,
                                                                  make_route, make_client):
    primary, backup = make_route(fake_openai), make_route(second_openai)
    fake_openai.push(*[ok_content("nonsense", usage=(100, 10))] * 3)
    second_openai.push(ok_final("ok", usage=(50, 5)))
    response = routed({STEP_PLAN: [primary, backup]}, make_client).complete(request())
    assert response.route == backup.name
    assert response.fallbacks[0]["outcome"] == "invalid_output"
    assert (response.prompt_tokens, response.completion_tokens) == (350, 35)
    assert response.cost_usd == pytest.approx(0.35 * 0.5 + 0.035 * 1.5)


def test_output_invalid_on_every_route_is_the_models_failure_not_an_outage(
        fake_openai, second_openai, make_route, make_client):
    primary, backup = make_route(fake_openai, max_attempts=1), make_route(second_openai)
    fake_openai.push(status(500))
    second_openai.default = ok_content("I'd rather chat.", usage=(10, 2))
    with pytest.raises(InvalidModelOutput, match="no model route gave a valid answer") as caught:
        routed({STEP_PLAN: [primary, backup]}, make_client).complete(request())
    assert [r["outcome"] for r in caught.value.reasons] == ["failed", "invalid_output"]
    assert caught.value.prompt_tokens == 30  # the three answers of the backup still count


def test_a_400_ends_the_step_without_trying_the_other_routes(fake_openai, second_openai, make_route,
                                                             make_client):
    primary, backup = make_route(fake_openai), make_route(second_openai)
    refusal = '{"error": {"message": "messages[3]: bad", "type": "invalid_request_error"}}'
    fake_openai.push(status(400, text=refusal))
    client = routed({STEP_PLAN: [primary, backup]}, make_client)
    with pytest.raises(ModelRequestRejected, match=r"HTTP 400: messages\[3\]: bad") as caught:
        client.complete(request())
    assert not isinstance(caught.value, AllRoutesDown)
    assert caught.value.reasons == [
        {"route": primary.name, "outcome": "rejected", "reason": str(caught.value)}]
    assert second_openai.count == 0
    assert client._client(primary).breaker.state() == CLOSED


def test_routes_are_chosen_by_step_kind(fake_openai, make_route, make_client):
    planner = make_route(fake_openai, model="big-planner")
    caller = make_route(fake_openai, model="tool-caller")
    summariser = make_route(fake_openai, model="small-summariser")
    client = routed({STEP_PLAN: [planner], STEP_TOOL: [caller], STEP_SUMMARY: [summariser]}, make_client)
    for kind in (STEP_PLAN, STEP_TOOL, STEP_SUMMARY):
        client.complete(request(step_kind=kind))
    assert [r["body"]["model"] for r in fake_openai.requests] == ["big-planner", "tool-caller",
                                                                   "small-summariser"]


def test_a_kind_without_its_own_routes_uses_the_planning_routes(fake_openai, make_route, make_client):
    planner = make_route(fake_openai, model="big-planner")
    routed({STEP_PLAN: [planner]}, make_client).complete(request(step_kind=STEP_SUMMARY))
    assert fake_openai.requests[0]["body"]["model"] == "big-planner"


def test_all_routes_down_is_a_clear_handoff_reason_not_a_hang(fake_openai, second_openai,
                                                               make_route, make_client):
    hanging = make_route(fake_openai, timeout=0.2, max_attempts=2)
    broken = make_route(second_openai, max_attempts=2)
    fake_openai.push(hang(), hang())
    second_openai.push(status(500), status(429))
    client = routed({STEP_PLAN: [hanging, broken]}, make_client)
    with pytest.raises(AllRoutesDown) as caught:
        client.complete(request())
    failure = caught.value
    assert failure.failure_class == "model"
    assert [r["route"] for r in failure.reasons] == [hanging.name, broken.name]
    assert "timed out" in str(failure) and "HTTP 429" in str(failure)
    assert fake_openai.count == 2 and second_openai.count == 2


def test_open_breakers_are_skipped_without_calls(fake_openai, make_route, make_client):
    route = make_route(fake_openai, max_attempts=1)
    client = routed({STEP_PLAN: [route]}, make_client)
    fake_openai.push(*[status(500)] * 5)
    for _ in range(5):
        with pytest.raises(AllRoutesDown):
            client.complete(request())
    with pytest.raises(AllRoutesDown, match="circuit breaker open") as caught:
        client.complete(request())
    assert caught.value.reasons[0]["outcome"] == "circuit_open"
    assert fake_openai.count == 5


def test_no_route_starts_after_the_step_budget(fake_openai, second_openai, make_route, make_client,
                                               clock):
    slow, spare = make_route(fake_openai, max_attempts=1), make_route(second_openai)
    fake_openai.push(status(500))

    class Ticking:
        def complete(self, req):
            clock.advance(200)  # this route used up the step's whole budget
            return make_client(slow).complete(req)

    client = RoutedClient({STEP_PLAN: [slow, spare]}, total_deadline=180, clock=clock,
                          client_factory=lambda route: Ticking() if route is slow else make_client(route))
    with pytest.raises(AllRoutesDown, match="budget for one model step ran out"):
        client.complete(request())
    assert second_openai.count == 0


def test_an_unexpected_client_error_falls_back_instead_of_crashing(fake_openai, make_route, make_client):
    class Broken:
        def complete(self, req):
            raise KeyError("bug")

    good = make_route(fake_openai)
    client = RoutedClient({STEP_PLAN: [make_route(fake_openai), good]},
                          client_factory=lambda route: make_client(route) if route is good else Broken())
    response = client.complete(request())
    assert response.route == good.name
    assert response.fallbacks[0]["outcome"] == "unexpected_error"


def test_no_routes_configured_is_all_routes_down():
    with pytest.raises(AllRoutesDown, match="no model route"):
        RoutedClient({}).complete(ModelRequest(messages=[]))
