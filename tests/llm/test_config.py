"""Routes from settings and the environment; agents' route lists per step kind."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from agents.llm.config import agent_route_names, load_routes, routes_for_agent
from agents.llm.router import RoutedClient, client_for_agent


@pytest.fixture(autouse=True)
def _no_configured_routes(settings, monkeypatch):
    settings.MODEL_ROUTES = {}
    settings.MODEL_AGENT_ROUTES = {}
    settings.MODEL_DEFAULT_ROUTES = []
    import os
    for key in list(os.environ):
        if key.startswith("MODEL_ROUTE_"):
            monkeypatch.delenv(key)


def test_routes_from_per_route_environment_variables(tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-a-file-0123456789abcdef\n")
    monkeypatch.setenv("MODEL_ROUTE_LOCAL_VLLM_BASE_URL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("MODEL_ROUTE_LOCAL_VLLM_MODEL", "Qwen/Qwen2.5-7B-Instruct")
    monkeypatch.setenv("MODEL_ROUTE_LOCAL_VLLM_TIMEOUT", "20")
    monkeypatch.setenv("MODEL_ROUTE_HOSTED_BASE_URL", "https://api.example.com/v1/")
    monkeypatch.setenv("MODEL_ROUTE_HOSTED_MODEL", "gpt-4o-mini")
    monkeypatch.setenv("MODEL_ROUTE_HOSTED_API_KEY_FILE", str(key_file))
    monkeypatch.setenv("MODEL_ROUTE_HOSTED_PRICE_IN", "0.15")
    monkeypatch.setenv("MODEL_ROUTE_HOSTED_PRICE_OUT", "0.6")

    routes = load_routes()
    assert set(routes) == {"local_vllm", "hosted"}
    assert routes["local_vllm"].timeout == 20.0 and routes["local_vllm"].api_key == ""
    assert routes["hosted"].url == "https://api.example.com/v1/chat/completions"
    assert routes["hosted"].api_key == "sk-from-a-file-0123456789abcdef"
    assert "sk-from-a-file" not in repr(routes["hosted"])
    assert routes["hosted"].describe()["api_key"] == "[set]"
    assert routes["hosted"].cost(1000, 1000) == pytest.approx(0.75)


def test_environment_overrides_settings_field_by_field(settings, monkeypatch):
    settings.MODEL_ROUTES = '{"ollama": {"base_url": "http://127.0.0.1:11434/v1", "model": "llama3.1"}}'
    monkeypatch.setenv("MODEL_ROUTE_OLLAMA_MODEL", "qwen2.5:7b")
    assert load_routes()["ollama"].model == "qwen2.5:7b"


@pytest.mark.parametrize(("spec", "message"), [
    ({"base_url": "127.0.0.1:8000", "model": "m"}, r"is not an http\(s\) URL"),
    ({"base_url": "http://h/v1"}, "model is missing"),
    ({"base_url": "http://h/v1", "model": "m", "timeout": "soon"}, "is not a number"),
    ({"base_url": "http://h/v1", "model": "m", "timeout": 0}, "greater than 0"),
    ({"base_url": "http://h/v1", "model": "m", "tempo": 1}, "unknown field"),
    ({"base_url": "http://h/v1", "model": "m", "api_key_file": "/nonexistent/key"}, "cannot be read"),
    ({"base_url": "http://h/v1", "model": "m", "tool_calling": "xml"}, r"tool_calling='xml' is not one of"),
])
def test_a_bad_route_fails_loudly_saying_what_is_wrong(settings, spec, message):
    settings.MODEL_ROUTES = {"bad": spec}
    with pytest.raises(ImproperlyConfigured, match=message):
        load_routes()


def test_a_route_declares_how_it_calls_tools(settings, monkeypatch):
    settings.MODEL_ROUTES = {"hosted": {"base_url": "https://api.example.com/v1", "model": "gpt-4o-mini"},
                             "old": {"base_url": "http://h/v1", "model": "m", "tool_calling": "json"}}
    monkeypatch.setenv("MODEL_ROUTE_PLAIN_BASE_URL", "http://127.0.0.1:8080/v1")
    monkeypatch.setenv("MODEL_ROUTE_PLAIN_MODEL", "llama")
    monkeypatch.setenv("MODEL_ROUTE_PLAIN_TOOL_CALLING", "JSON")
    routes = load_routes()
    assert routes["hosted"].tool_calling == "native"  # the default
    assert routes["old"].tool_calling == "json" and routes["plain"].tool_calling == "json"
    assert routes["plain"].describe()["tool_calling"] == "json"


def test_bad_json_fails_loudly(settings):
    settings.MODEL_ROUTES = "{not json"
    with pytest.raises(ImproperlyConfigured, match="MODEL_ROUTES is not valid JSON"):
        load_routes()


def test_agent_routes_per_step_kind(settings):
    settings.MODEL_ROUTES = {name: {"base_url": "http://127.0.0.1:1/v1", "model": name}
                             for name in ("big", "small", "backup")}
    settings.MODEL_AGENT_ROUTES = {
        "support": {"plan": ["big", "backup"], "summary": ["small"], "default": ["big"]},
        "*": "small,backup",
    }
    assert agent_route_names("support") == {"plan": ["big", "backup"], "tool_call": ["big"],
                                            "summary": ["small"]}
    assert agent_route_names("other")["tool_call"] == ["small", "backup"]
    routes = routes_for_agent("support")
    assert [r.name for r in routes["plan"]] == ["big", "backup"]
    assert isinstance(client_for_agent("support"), RoutedClient)


def test_default_routes_apply_to_every_agent(settings):
    settings.MODEL_ROUTES = {"only": {"base_url": "http://127.0.0.1:1/v1", "model": "m"}}
    settings.MODEL_DEFAULT_ROUTES = ["only"]
    assert agent_route_names("anyone") == {"plan": ["only"], "tool_call": ["only"], "summary": ["only"]}


def test_an_agent_naming_an_unconfigured_route_fails_loudly(settings):
    settings.MODEL_AGENT_ROUTES = {"support": ["ghost"]}
    with pytest.raises(ImproperlyConfigured, match=r"route\(s\) \['ghost'\]"):
        routes_for_agent("support")


def test_no_routes_means_no_model_client():
    assert client_for_agent("support") is None


def test_a_bad_route_is_reported_by_the_system_check(settings):
    from agents.llm.checks import check_model_routes

    assert check_model_routes() == []
    settings.MODEL_AGENT_ROUTES = {"support": ["ghost"]}
    errors = check_model_routes()
    assert [e.id for e in errors] == ["models.E001"] and "ghost" in errors[0].msg


def test_an_agent_configured_in_settings_talks_to_its_route(settings, fake_openai):
    from agents.llm.base import ModelRequest
    from tests.llm.fake_openai import ok_final

    settings.MODEL_ROUTES = {"fake": {"base_url": fake_openai.url, "model": "served-model", "timeout": 2}}
    settings.MODEL_AGENT_ROUTES = {"support": {"plan": ["fake"]}}
    fake_openai.push(ok_final("configured"))
    client = client_for_agent("support")
    client.client_factory(client.routes["plan"][0]).breaker.reset()
    response = client.complete(ModelRequest(messages=[{"role": "user", "content": "hi"}]))
    assert response.action["message"] == "configured" and response.route == "fake"
    assert fake_openai.requests[0]["body"]["model"] == "served-model"
    assert "Authorization" not in fake_openai.requests[0]["headers"]
