from __future__ import annotations

import uuid

import pytest

from agents.llm.breaker import CircuitBreaker
from agents.llm.config import Route
from agents.llm.openai_compat import OpenAICompatClient
from tests.llm.fake_openai import StrictOpenAI


class FakeClock:
    """A clock the tests move by hand (the breaker's cool-down, the router's deadline)."""

    def __init__(self, start: float = 1_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _strict_server():
    """A strict chat-completions server (tests/llm/fake_openai.py) for the test; a request
    it refused fails the test unless the test said it sends invalid ones."""
    server = StrictOpenAI().start()
    yield server
    server.stop()
    if not server.violations_expected:
        assert server.violations == [], f"requests OpenAI's API would refuse: {server.violations}"


@pytest.fixture
def fake_openai():
    yield from _strict_server()


@pytest.fixture
def second_openai():
    yield from _strict_server()


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def sleeps():
    """An injected sleep that records the backoff waits instead of sleeping."""
    return []


@pytest.fixture
def make_route():
    def make(server, **overrides) -> Route:
        values = {
            # A unique name per test: breaker state lives in the shared cache.
            "name": f"r{uuid.uuid4().hex[:10]}",
            "base_url": server.url,
            "model": "test-model",
            "api_key": "sk-test-secret-key-0123456789abcdef",
            "timeout": 0.5,
            "price_in": 0.5,
            "price_out": 1.5,
            "max_attempts": 3,
            "backoff": 0.25,
            "backoff_max": 4.0,
        }
        values.update(overrides)
        return Route(**values)

    return make


@pytest.fixture
def make_client(clock, sleeps):
    def make(route: Route, **breaker_kwargs) -> OpenAICompatClient:
        breaker = CircuitBreaker(route.name, clock=clock, **{
            "failures": 5, "window": 60, "cooldown": 30, **breaker_kwargs})
        breaker.reset()
        return OpenAICompatClient(route, breaker=breaker, sleep=sleeps.append)

    return make
