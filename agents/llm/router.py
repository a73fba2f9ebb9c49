"""Model routing: an ordered list of routes per step kind, with fallback.

``RoutedClient.complete`` tries the routes for the request's step kind in order (planning,
tool-call and summarising steps may use different routes). A route that is down, refuses
the call (bad key, unknown model), has an open breaker or keeps answering invalid output
is recorded and the next one is tried. When none answers:

- if a route answered but its output stayed invalid after the repairs, the failure is the
  model's: ``InvalidModelOutput`` (the run fails), with every route's reason;
- otherwise no route could answer at all: ``AllRoutesDown`` with one reason per route (the
  runtime hands the run off to a human with that reason).

A route that answers HTTP 400 to a well-formed request (``ModelRequestRejected``) ends the
step at once, as a model failure with the server's message: the server is up, and the same
conversation sent elsewhere is no outage fixed. Total time is bounded: after
``total_deadline`` seconds no further route is started (one route's own time is bounded by
its ``deadline`` plus one ``timeout``).

Usage spent on routes that failed (repair turns) is added to the answer's, or carried on
the ``AllRoutesDown`` error, so run budgets count it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from django.conf import settings

from agents.llm.base import (
    STEP_PLAN,
    AllRoutesDown,
    InvalidModelOutput,
    ModelClient,
    ModelError,
    ModelRequest,
    ModelRequestRejected,
    ModelResponse,
)
from agents.llm.config import Route, routes_for_agent
from agents.llm.openai_compat import OpenAICompatClient, RouteUnavailable

logger = logging.getLogger(__name__)

DEFAULT_TOTAL_DEADLINE = 180.0


def _outcome(exc: Exception) -> str:
    if isinstance(exc, RouteUnavailable):
        return exc.outcome
    if isinstance(exc, InvalidModelOutput):
        return "invalid_output"
    if isinstance(exc, ModelRequestRejected):
        return "rejected"
    if isinstance(exc, ModelError):
        return "error"
    return "unexpected_error"


class RoutedClient:
    """A ``ModelClient`` over ordered routes per step kind (``plan``, ``tool_call``, ``summary``).

    ``client_factory(route)`` builds the per-route client (default: ``OpenAICompatClient``);
    tests inject one whose breakers use a fake clock.
    """

    def __init__(
        self,
        routes: Mapping[str, Sequence[Route]],
        *,
        client_factory: Callable[[Route], ModelClient] | None = None,
        total_deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
    ):
        self.routes = {kind: list(items) for kind, items in routes.items()}
        self.client_factory = client_factory or (lambda route: OpenAICompatClient(route))
        self.total_deadline = float(
            total_deadline if total_deadline is not None
            else getattr(settings, "MODEL_TOTAL_DEADLINE", DEFAULT_TOTAL_DEADLINE)
        )
        self.clock = clock
        self.name = name
        self._clients: dict[str, ModelClient] = {}

    def routes_for(self, step_kind: str) -> list[Route]:
        return self.routes.get(step_kind) or self.routes.get(STEP_PLAN) or []

    def _client(self, route: Route) -> ModelClient:
        if route.name not in self._clients:
            self._clients[route.name] = self.client_factory(route)
        return self._clients[route.name]

    def complete(self, request: ModelRequest) -> ModelResponse:
        routes = self.routes_for(request.step_kind)
        if not routes:
            raise AllRoutesDown(
                f"no model route is configured for {request.step_kind!r} steps"
                + (f" of agent {self.name!r}" if self.name else "")
                + "; set MODEL_AGENT_ROUTES or MODEL_DEFAULT_ROUTES (docs/models.md)."
            )
        started = self.clock()
        trail: list[dict[str, Any]] = []
        spent = [0, 0, 0.0]  # prompt tokens, completion tokens, cost
        for route in routes:
            elapsed = self.clock() - started
            if elapsed >= self.total_deadline:
                trail.append({"route": route.name, "outcome": "skipped",
                              "reason": f"the {self.total_deadline:g}s budget for one model step ran out"})
                continue
            try:
                response = self._client(route).complete(request)
            except ModelRequestRejected as exc:
                # The server is up and refuses this conversation: the model step failed.
                exc.prompt_tokens += spent[0]
                exc.completion_tokens += spent[1]
                exc.cost_usd = round(exc.cost_usd + spent[2], 8)
                exc.reasons = [*trail, {"route": route.name, "outcome": "rejected", "reason": str(exc)[:500]}]
                raise
            except Exception as exc:  # a route's failure must never crash the run
                if not isinstance(exc, ModelError):
                    logger.exception("route %s: unexpected error", route.name)
                reason = str(exc) if isinstance(exc, ModelError) else f"unexpected {type(exc).__name__}"
                trail.append({"route": route.name, "outcome": _outcome(exc), "reason": reason[:500]})
                spent[0] += getattr(exc, "prompt_tokens", 0)
                spent[1] += getattr(exc, "completion_tokens", 0)
                spent[2] += getattr(exc, "cost_usd", 0.0)
                logger.warning("route %s failed for a %s step: %s", route.name, request.step_kind, reason)
                continue
            response.prompt_tokens += spent[0]
            response.completion_tokens += spent[1]
            response.cost_usd = round(response.cost_usd + spent[2], 8)
            response.fallbacks = trail + list(response.fallbacks)
            return response
        summary = "; ".join(f"{item['route']}: {item['reason']}" for item in trail)
        if any(item["outcome"] == "invalid_output" for item in trail):
            # A model answered and could not be repaired: the model failed, no outage.
            failure: ModelError = InvalidModelOutput(
                f"no model route gave a valid answer for a {request.step_kind!r} step ({summary})"
            )
            failure.reasons = trail
        else:
            failure = AllRoutesDown(
                f"every model route for {request.step_kind!r} steps failed ({summary})", reasons=trail
            )
        failure.prompt_tokens, failure.completion_tokens, failure.cost_usd = spent[0], spent[1], spent[2]
        raise failure


def client_for_agent(agent: str, **kwargs: Any) -> RoutedClient | None:
    """The routed model client for an agent (by name), or None when no route is configured
    for it (the runtime then uses the scripted planner). A misconfiguration raises
    ``ImproperlyConfigured`` naming what is wrong."""
    routes = routes_for_agent(agent)
    if not any(routes.values()):
        return None
    return RoutedClient(routes, name=agent, **kwargs)
