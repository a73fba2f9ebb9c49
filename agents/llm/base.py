"""The one small interface the runtime uses to talk to models.

Two implementations ship: the deterministic scripted support planner (the embedded
default; ``agents.planner``) and a client for any OpenAI-compatible chat-completions
endpoint (``agents.llm.openai_compat``). Model output is a proposal: policy decides.

A model's answer is one *action*, a JSON object validated against ``ACTION_SCHEMA``:
  {"type": "tool_call", "tool": "<name>", "arguments": {...}, "rationale": "..."}
  {"type": "final", "message": "...", "summary": "..."}
  {"type": "handoff", "reason": "...", "summary": "..."}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

ACTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type"],
    "oneOf": [
        {
            "properties": {
                "type": {"const": "tool_call"},
                "tool": {"type": "string", "minLength": 1, "maxLength": 64},
                "arguments": {"type": "object"},
                "rationale": {"type": "string", "maxLength": 2000},
            },
            "required": ["type", "tool", "arguments"],
        },
        {
            "properties": {
                "type": {"const": "final"},
                "message": {"type": "string", "maxLength": 8000},
                "summary": {"type": "string", "maxLength": 2000},
            },
            "required": ["type", "message"],
        },
        {
            "properties": {
                "type": {"const": "handoff"},
                "reason": {"type": "string", "maxLength": 2000},
                "summary": {"type": "string", "maxLength": 4000},
            },
            "required": ["type", "reason"],
        },
    ],
}

# Step kinds a route can be chosen by (planning, tool-call and summarising models may differ).
STEP_PLAN = "plan"
STEP_TOOL = "tool_call"
STEP_SUMMARY = "summary"


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments


@dataclass
class ModelRequest:
    # Chat-completions messages as agents.prompting.build_messages builds them: native tool
    # calls (a route with tool_calling=json converts them), untrusted text in data blocks.
    messages: list[dict[str, Any]]
    tools: list[ToolSpec] = field(default_factory=list)
    step_kind: str = STEP_PLAN
    trace_id: str = ""
    # Structured context for planners that do not read prose (the scripted planner).
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelResponse:
    action: dict[str, Any]  # validated against ACTION_SCHEMA
    model: str
    route: str = ""
    raw: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    repairs: int = 0
    attempts: int = 1
    prompt_hash: str = ""
    # Routes tried before this answer, in order: [{"route", "outcome", "reason"}] (trace).
    fallbacks: list[dict[str, Any]] = field(default_factory=list)
    # What the client did to the answer that the step should show (e.g. "the answer had 2
    # tool calls; only the first was taken").
    notes: list[str] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ModelError(Exception):
    """A model failure the runtime classifies as ``model``. ``retryable`` says whether a
    later attempt may succeed (the runtime hands off when not)."""

    failure_class = "model"

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable
        # Usage spent before the failure (repairs, failed routes), so budgets still count it.
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost_usd = 0.0
        # Per route tried, when a router raised it: [{"route", "outcome", "reason"}].
        self.reasons: list[dict[str, Any]] = []


class InvalidModelOutput(ModelError):
    """The output stayed invalid after the bounded repair loop."""


class ModelRequestRejected(ModelError):
    """A route answered HTTP 400 (or 413, 422) to a well-formed request: the server is up
    and says what it will not take (a conversation its template refuses, a context too
    long). A model failure, not an outage: no retry, no fallback, no breaker failure; the
    run fails with the server's message (``detail``)."""

    def __init__(self, message: str, *, route: str = "", status: int = 400, detail: str = ""):
        super().__init__(message, retryable=False)
        self.route = route
        self.status = status
        self.detail = detail


class AllRoutesDown(ModelError):
    """Every route in the agent's list failed or has an open circuit breaker.

    ``reasons`` lists ``{"route", "outcome", "reason"}`` per route tried, for the trace and
    the handoff note."""

    def __init__(self, message: str, *, retryable: bool = False,
                 reasons: list[dict[str, Any]] | None = None):
        super().__init__(message, retryable=retryable)
        self.reasons = list(reasons or [])


class ModelClient(Protocol):
    def complete(self, request: ModelRequest) -> ModelResponse: ...
