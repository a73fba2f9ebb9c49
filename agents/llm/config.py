"""Model routes: where each model call may go, from settings and the environment.

A *route* is one OpenAI-compatible endpoint plus a model name, an API key, a timeout and
prices. An agent has an ordered list of routes per step kind (plan / tool_call / summary);
the router tries them in order. See docs/models.md for the variables and examples.

Sources, later ones winning field by field:
  1. ``settings.MODEL_ROUTES``: a dict or a JSON string ``{"name": {"base_url", "model",
     "api_key_file" | "api_key_env" | "api_key", "timeout", "price_in", "price_out", ...}}``
  2. per-route environment variables ``MODEL_ROUTE_<NAME>_<FIELD>`` (``BASE_URL``,
     ``MODEL``, ``API_KEY``, ``API_KEY_FILE``, ``TIMEOUT``, ``PRICE_IN``, ``PRICE_OUT``,
     ``MAX_ATTEMPTS``, ``DEADLINE``, ``MAX_TOKENS``, ``TOOL_CALLING``); ``<NAME>`` is lower-cased.

``tool_calling`` is ``native`` (the default: ``tools`` and ``tool_calls`` as OpenAI's API
has them) or ``json`` for a server without native tool calls (the calls travel as JSON in
the message content; ``agents.prompting.json_mode_messages``).

API keys are kept out of ``repr`` and never logged; read them from a file where you can.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from agents.llm.base import STEP_PLAN, STEP_SUMMARY, STEP_TOOL

STEP_KINDS = (STEP_PLAN, STEP_TOOL, STEP_SUMMARY)

_ENV_RE = re.compile(
    r"^MODEL_ROUTE_(?P<name>[A-Z0-9_]+?)_(?P<field>BASE_URL|MODEL|API_KEY_FILE|API_KEY|TIMEOUT|"
    r"PRICE_IN|PRICE_OUT|MAX_ATTEMPTS|DEADLINE|MAX_TOKENS|TOOL_CALLING)$"
)
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
TOOL_CALLING_NATIVE, TOOL_CALLING_JSON = "native", "json"
TOOL_CALLING_MODES = (TOOL_CALLING_NATIVE, TOOL_CALLING_JSON)


@dataclass(frozen=True)
class Route:
    """One model endpoint. Prices are USD per 1,000 tokens."""

    name: str
    base_url: str
    model: str
    api_key: str = field(default="", repr=False, compare=False)
    timeout: float = 30.0  # seconds, every HTTP call (connect, read, write, pool)
    price_in: float = 0.0
    price_out: float = 0.0
    max_attempts: int = 3  # tries per call on this route, the first included
    backoff: float = 0.5  # first wait before a retry, doubling up to backoff_max
    backoff_max: float = 8.0
    deadline: float = 90.0  # seconds for one call on this route, retries included
    max_tokens: int | None = None
    temperature: float | None = 0.0
    tool_calling: str = TOOL_CALLING_NATIVE  # or "json": no native tool calls on this server

    @property
    def url(self) -> str:
        base = self.base_url.rstrip("/")
        return base if base.endswith("/chat/completions") else f"{base}/chat/completions"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return round(prompt_tokens / 1000 * self.price_in + completion_tokens / 1000 * self.price_out, 8)

    def describe(self) -> dict[str, Any]:
        """What may be shown or logged about the route: never the key."""
        return {"name": self.name, "url": self.url, "model": self.model,
                "api_key": "[set]" if self.api_key else "", "timeout": self.timeout,
                "tool_calling": self.tool_calling}


_NUMBERS = {"timeout": float, "price_in": float, "price_out": float, "max_attempts": int,
            "backoff": float, "backoff_max": float, "deadline": float, "max_tokens": int,
            "temperature": float}
_ALLOWED = {f.name for f in fields(Route)} | {"api_key_file", "api_key_env"}


def parse_json(name: str, raw: Any) -> Any:
    """A JSON setting (``MODEL_ROUTES``, ``MODEL_AGENT_ROUTES``): a string is parsed, a value
    already parsed is returned as is, empty is ``{}``; bad JSON is ``ImproperlyConfigured``."""
    if raw in (None, ""):
        return {}
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ImproperlyConfigured(f"{name} is not valid JSON ({exc}); see docs/models.md.") from None
    return raw


def _build_route(name: str, spec: Mapping[str, Any]) -> Route:
    where = f"model route {name!r}"
    if not _NAME_RE.match(name):
        raise ImproperlyConfigured(f"{where}: a route name is 1-64 of a-z, 0-9, '_' or '-'.")
    unknown = set(spec) - _ALLOWED
    if unknown:
        raise ImproperlyConfigured(
            f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_ALLOWED)}.")
    values: dict[str, Any] = {"name": name}
    for key, caster in _NUMBERS.items():
        if spec.get(key) in (None, ""):
            continue
        try:
            value = caster(spec[key])
        except (TypeError, ValueError):
            raise ImproperlyConfigured(f"{where}: {key}={spec[key]!r} is not a number.") from None
        if (isinstance(value, float) and not math.isfinite(value)) or value < 0:
            raise ImproperlyConfigured(f"{where}: {key} must be a finite number >= 0.")
        values[key] = value
    for key in ("timeout", "deadline", "max_attempts"):
        if key in values and values[key] <= 0:
            raise ImproperlyConfigured(f"{where}: {key} must be greater than 0.")
    base_url = str(spec.get("base_url") or "").strip()
    parsed = urlparse(base_url)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise ImproperlyConfigured(
            f"{where}: base_url={base_url!r} is not an http(s) URL; expected e.g. "
            "http://127.0.0.1:8000/v1 (vLLM) or http://127.0.0.1:11434/v1 (Ollama)."
        )
    tool_calling = str(spec.get("tool_calling") or TOOL_CALLING_NATIVE).strip().lower()
    if tool_calling not in TOOL_CALLING_MODES:
        raise ImproperlyConfigured(
            f"{where}: tool_calling={spec['tool_calling']!r} is not one of {list(TOOL_CALLING_MODES)} "
            "(json: for a server without native tool calls)."
        )
    values["tool_calling"] = tool_calling
    model = str(spec.get("model") or "").strip()
    if not model:
        raise ImproperlyConfigured(f"{where}: model is missing (the model name the server serves).")
    api_key = str(spec.get("api_key") or "")
    if spec.get("api_key_env"):
        api_key = os.environ.get(str(spec["api_key_env"]), "")
    if spec.get("api_key_file"):
        try:
            api_key = Path(str(spec["api_key_file"])).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(
                f"{where}: api_key_file={spec['api_key_file']!r} cannot be read: {exc.strerror}."
            ) from None
    return Route(base_url=base_url, model=model, api_key=api_key, **values)


def load_routes(*, environ: Mapping[str, str] | None = None) -> dict[str, Route]:
    """Every configured route by name. Raises ImproperlyConfigured on a bad value."""
    environ = os.environ if environ is None else environ
    specs: dict[str, dict[str, Any]] = {}
    configured = parse_json("MODEL_ROUTES", getattr(settings, "MODEL_ROUTES", {}))
    if not isinstance(configured, Mapping):
        raise ImproperlyConfigured("MODEL_ROUTES must be a JSON object {\"name\": {...}}.")
    for name, spec in configured.items():
        if not isinstance(spec, Mapping):
            raise ImproperlyConfigured(f"MODEL_ROUTES[{name!r}] must be an object.")
        specs[str(name).lower()] = dict(spec)
    for key, value in environ.items():
        match = _ENV_RE.match(key)
        if match:
            specs.setdefault(match["name"].lower(), {})[match["field"].lower()] = value
    return {name: _build_route(name, spec) for name, spec in specs.items()}


def _route_names(where: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ImproperlyConfigured(f"{where} must be a list of route names.")
    return [item.lower() for item in value]


def agent_route_names(agent: str) -> dict[str, list[str]]:
    """Route names per step kind for an agent (by its name); empty lists when none."""
    table = parse_json("MODEL_AGENT_ROUTES", getattr(settings, "MODEL_AGENT_ROUTES", {}))
    if not isinstance(table, Mapping):
        raise ImproperlyConfigured("MODEL_AGENT_ROUTES must be a JSON object {\"agent\": ...}.")
    entry: Any = table.get(agent, table.get("*"))
    if entry is None:
        entry = list(getattr(settings, "MODEL_DEFAULT_ROUTES", []) or [])
    where = f"MODEL_AGENT_ROUTES[{agent!r}]"
    if isinstance(entry, Mapping):
        unknown = set(entry) - {*STEP_KINDS, "default"}
        if unknown:
            raise ImproperlyConfigured(
                f"{where}: unknown step kind(s) {sorted(unknown)}; use {[*STEP_KINDS, 'default']}."
            )
        default = _route_names(where, entry.get("default", entry.get(STEP_PLAN, [])))
        return {kind: _route_names(f"{where}[{kind}]", entry[kind]) if kind in entry else default
                for kind in STEP_KINDS}
    names = _route_names(where, entry)
    return {kind: list(names) for kind in STEP_KINDS}


def routes_for_agent(agent: str, *, routes: Mapping[str, Route] | None = None) -> dict[str, list[Route]]:
    """Routes (objects) per step kind for an agent. An unknown route name fails loudly."""
    routes = load_routes() if routes is None else routes
    out: dict[str, list[Route]] = {}
    for kind, names in agent_route_names(agent).items():
        missing = [name for name in names if name not in routes]
        if missing:
            raise ImproperlyConfigured(
                f"Agent {agent!r} uses model route(s) {missing} for {kind!r} steps, which are not "
                f"configured; configured routes: {sorted(routes)}. Set MODEL_ROUTE_<NAME>_BASE_URL "
                "and _MODEL (see docs/models.md)."
            )
        out[kind] = [routes[name] for name in names]
    return out


def with_overrides(route: Route, **changes: Any) -> Route:
    return replace(route, **changes)
