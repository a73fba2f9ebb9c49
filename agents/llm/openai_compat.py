"""A client for one OpenAI-compatible ``/v1/chat/completions`` route (vLLM, Ollama, hosted).

One ``complete()`` call:
  1. the circuit breaker of the route is consulted (open: ``RouteUnavailable`` at once);
  2. POST the messages (``agents.prompting`` built them; a ``tool_calling=json`` route gets
     ``json_mode_messages`` of them) with ``tools`` (JSON-Schema function definitions),
     ``tool_choice: "auto"`` and ``parallel_tool_calls: false``, and a timeout. 429, 5xx,
     timeouts, connection errors and unparseable bodies are retried with exponential
     backoff (tenacity), bounded by ``max_attempts`` and the route's ``deadline``; each of
     them counts as a breaker failure. An answer with an empty ``choices`` is retried too,
     but the server is up: no breaker failure. 400, 413 and 422 mean the server refuses
     this request: ``ModelRequestRejected`` at once, with the server's message (a model
     failure: no retry, no fallback, no breaker failure). Other 4xx (bad key, unknown
     model) are not retried either and do not trip the breaker; the router moves on;
  3. the answer becomes one action (a tool call, or a JSON ``final`` / ``handoff`` object in
     the content) validated against ``ACTION_SCHEMA`` and the tool's JSON Schema; an unknown
     tool is a validation error. At most ``max_repairs`` (2) repair turns send the errors
     back to the model; still invalid raises ``InvalidModelOutput``. Servers' quirks:
     ``arguments`` as an object (Ollama) is taken as it is; ``content: null`` beside
     ``tool_calls`` is no rationale; of several tool calls in one answer (a server that
     ignores ``parallel_tool_calls``) the first is taken and ``ModelResponse.notes`` says
     so (each call still meets policy on its own, the model sees the result and may call
     the next one); ``finish_reason: "length"`` (or ``content_filter``) is an invalid,
     cut-off answer, repaired like any other;
  4. tokens and cost come from the response's ``usage`` (estimated from text if absent),
     summed over repairs.

The API key goes only into the Authorization header: it is never logged, stored or put in
an error message.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import httpx
from django.conf import settings
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from agents.llm.base import (
    ACTION_SCHEMA,
    STEP_SUMMARY,
    InvalidModelOutput,
    ModelError,
    ModelRequest,
    ModelRequestRejected,
    ModelResponse,
    ToolSpec,
)
from agents.llm.breaker import CircuitBreaker
from agents.llm.config import TOOL_CALLING_JSON, Route
from agents.prompting import json_mode_messages, prompt_hash, tool_definitions
from audit.redaction import redact_text

logger = logging.getLogger(__name__)

MAX_REPAIRS = 2
_MAX_ERRORS = 8
_ACTION_VALIDATOR = Draft202012Validator(ACTION_SCHEMA)
_BRANCHES = {branch["properties"]["type"]["const"]: branch for branch in ACTION_SCHEMA["oneOf"]}
_FENCE_RE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)
# HTTP statuses that mean "this request will not be taken", said by a server that is up.
REJECTED_STATUSES = (400, 413, 422)
_CUT_OFF = {
    "length": "the answer was cut off at the token limit (finish_reason 'length'); answer again, shorter",
    "content_filter": "the server's content filter withheld the answer (finish_reason 'content_filter')",
}


class RouteUnavailable(ModelError):
    """This route could not answer (down, overloaded, circuit open, refused the request).
    Another route may: ``retryable`` is True."""

    def __init__(self, message: str, *, outcome: str = "unavailable"):
        super().__init__(message, retryable=True)
        self.outcome = outcome


class _Transient(Exception):
    """A failure worth retrying on the same route (429, 5xx, timeout, broken answer)."""


class _NoAnswer(_Transient):
    """HTTP 200 with an empty ``choices``: the server is up but said nothing; ask again."""


def breaker_for(route_name: str, **overrides: Any) -> CircuitBreaker:
    conf = dict(getattr(settings, "MODEL_BREAKER", {}) or {})
    conf.update(overrides)
    return CircuitBreaker(route_name, **conf)


# --- output validation ------------------------------------------------------------------


def _format_error(prefix: str, error: Any) -> str:
    path = "/".join(str(part) for part in error.absolute_path)
    where = f"{prefix}/{path}" if path else prefix
    return f"{where}: {error.message}"[:300]


def validate_action(action: Any, tools: Mapping[str, ToolSpec]) -> list[str]:
    """Every reason ``action`` is not an acceptable answer (empty list: it is)."""
    if not isinstance(action, dict):
        return [f"the answer must be a JSON object, got {type(action).__name__}"]
    kind = action.get("type")
    branch = _BRANCHES.get(kind) if isinstance(kind, str) else None
    if branch is None:
        return [f"'type' must be one of {sorted(_BRANCHES)}, got {kind!r}"]
    errors = [_format_error("action", e) for e in Draft202012Validator(branch).iter_errors(action)]
    if not errors:
        errors = [_format_error("action", e) for e in _ACTION_VALIDATOR.iter_errors(action)]
    if kind == "tool_call" and isinstance(action.get("tool"), str):
        spec = tools.get(action["tool"])
        if spec is None:
            offered = sorted(tools) or "none on this step"
            errors.append(f"unknown tool {action['tool']!r}; the tools you may call are: {offered}")
        elif isinstance(action.get("arguments"), dict):
            try:
                validator = Draft202012Validator(spec.parameters)
                errors += [_format_error("arguments", e) for e in validator.iter_errors(action["arguments"])]
            except SchemaError as exc:  # our registry's bug, not the model's
                raise ModelError(f"tool {spec.name!r} has an invalid JSON Schema: {exc.message}") from None
    return errors[:_MAX_ERRORS]


def _parse_json_object(text: str) -> tuple[Any, str | None]:
    fenced = _FENCE_RE.match(text)
    if fenced:
        text = fenced.group(1)
    if not text.strip():
        return None, "the answer is empty"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"the answer is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"


class Answer(NamedTuple):
    """One chat-completion choice read as an action."""

    action: Any
    errors: list[str]
    raw: str  # what the model said, for the trace and the repair turn
    notes: list[str]


def _tool_call_action(tool_calls: Any, content: str) -> Answer:
    errors: list[str] = []
    notes: list[str] = []
    if not isinstance(tool_calls, list) or not all(isinstance(call, dict) for call in tool_calls):
        return Answer(None, ["'tool_calls' must be a list of objects"], json.dumps(tool_calls)[:4000], [])
    if len(tool_calls) > 1:
        names = ", ".join(str((call.get("function") or {}).get("name")) for call in tool_calls)
        notes.append(f"the answer had {len(tool_calls)} tool calls ({names}); only the first was taken")
    function = tool_calls[0].get("function")
    if not isinstance(function, dict):
        function = {}
        errors.append("the tool call has no 'function' object")
    name, arguments = function.get("name"), function.get("arguments")
    raw = json.dumps({"tool_call": {"name": name, "arguments": arguments}}, ensure_ascii=False)
    if isinstance(arguments, str):  # the protocol: a JSON string
        arguments, problem = _parse_json_object(arguments) if arguments.strip() else ({}, None)
        if problem:
            errors.append(f"the arguments of tool {name!r} are not valid JSON: {problem}")
            arguments = {}
    elif arguments is None:
        arguments = {}
    elif not isinstance(arguments, dict):  # an object is Ollama's way; anything else is wrong
        errors.append(f"the arguments of tool {name!r} must be a JSON object, got {type(arguments).__name__}")
        arguments = {}
    action: dict[str, Any] = {"type": "tool_call", "tool": name, "arguments": arguments}
    if content.strip():
        action["rationale"] = content.strip()[:2000]
    return Answer(action, errors, raw, notes)


def parse_answer(
    message: Mapping[str, Any], tools: Mapping[str, ToolSpec], *, finish_reason: Any = None
) -> Answer:
    """One chat-completion ``message`` (and its choice's ``finish_reason``) as an action, with
    every reason it is not acceptable (none: it is)."""
    content = message.get("content") or ""  # null beside tool_calls
    if not isinstance(content, str):
        content = json.dumps(content)
    cut_off = [_CUT_OFF[finish_reason]] if finish_reason in _CUT_OFF else []
    if message.get("tool_calls"):
        answer = _tool_call_action(message["tool_calls"], content)
        if answer.action is not None:
            answer.errors.extend(validate_action(answer.action, tools))
        return answer._replace(errors=cut_off + answer.errors)
    parsed, problem = _parse_json_object(content)
    if problem:
        return Answer(None, [*cut_off, problem], content, [])
    return Answer(parsed, cut_off + validate_action(parsed, tools), content, [])


def repair_messages(raw: str, errors: list[str], *, tools_offered: bool) -> list[dict[str, Any]]:
    how = ("call exactly one of the offered tools with arguments matching its schema, or reply "
           if tools_offered else "reply ")
    return [
        {"role": "assistant", "content": raw[:4000]},
        {"role": "user", "content": (
            "Your previous answer was rejected by validation:\n"
            + "\n".join(f"- {error}" for error in errors)
            + f"\nAnswer again with exactly one action: {how}with only a JSON object "
            '{"type": "final", "message": "..."} or {"type": "handoff", "reason": "..."}.'
        )},
    ]


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


# --- the client -------------------------------------------------------------------------


class OpenAICompatClient:
    """``ModelClient`` for one route. ``sleep`` and ``breaker`` are injectable for tests."""

    def __init__(
        self,
        route: Route,
        *,
        breaker: CircuitBreaker | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_repairs: int = MAX_REPAIRS,
    ):
        self.route = route
        self.breaker = breaker or breaker_for(route.name)
        self.sleep = sleep
        self.max_repairs = min(max_repairs, MAX_REPAIRS)

    def __repr__(self) -> str:
        return f"OpenAICompatClient({self.route.name!r}, {self.route.url!r}, {self.route.model!r})"

    def _payload(self, messages: list[dict[str, Any]], request: ModelRequest) -> dict[str, Any]:
        tools = request.tools if request.step_kind != STEP_SUMMARY else []
        if self.route.tool_calling == TOOL_CALLING_JSON:
            # No native tool calls on this server: the same conversation, calls as JSON text.
            messages, tools = json_mode_messages(messages, tools), []
        payload: dict[str, Any] = {"model": self.route.model, "messages": messages, "stream": False}
        if self.route.temperature is not None:
            payload["temperature"] = self.route.temperature
        if self.route.max_tokens:
            payload["max_tokens"] = self.route.max_tokens
        if tools:
            payload["tools"] = tool_definitions(tools)
            payload["tool_choice"] = "auto"
            # One action per step: policy decides on each call before the next is proposed.
            payload["parallel_tool_calls"] = False
        return payload

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.route.api_key:
            headers["Authorization"] = f"Bearer {self.route.api_key}"
        return headers

    def _detail(self, response: httpx.Response) -> str:
        """The server's own words about a refused request (OpenAI's ``error.message`` when the
        body has one), redacted: never the key."""
        text = response.text
        try:
            error = response.json().get("error")
            if isinstance(error, dict) and error.get("message"):
                text = str(error["message"])
            elif isinstance(error, str):
                text = error
        except (ValueError, AttributeError):
            pass
        return redact_text(text[:500].replace(self.route.api_key or "\x00", "[REDACTED]"))

    def _attempt(self, http: httpx.Client, payload: dict[str, Any]) -> dict[str, Any]:
        route = self.route
        if not self.breaker.allow():
            raise RouteUnavailable(
                f"route {route.name!r}: circuit breaker open (retry in {self.breaker.retry_in():.0f}s)",
                outcome="circuit_open",
            )
        try:
            response = http.post(route.url, json=payload, headers=self._headers())
        except httpx.TimeoutException:
            self.breaker.record_failure()
            raise _Transient(f"timed out after {route.timeout:g}s") from None
        except httpx.TransportError as exc:
            self.breaker.record_failure()
            raise _Transient(f"connection failed ({type(exc).__name__})") from None
        status = response.status_code
        if status == 429 or status >= 500:
            self.breaker.record_failure()
            raise _Transient(f"HTTP {status}")
        if status in REJECTED_STATUSES:
            # The server is up and refuses this request: a model failure, not an outage.
            self.breaker.record_success()
            detail = self._detail(response)
            raise ModelRequestRejected(
                f"route {route.name!r} refused the request with HTTP {status}: {detail}",
                route=route.name, status=status, detail=detail,
            )
        if status >= 400:
            # The server is up but refuses this route's call (bad key, unknown model).
            self.breaker.record_success()
            detail = redact_text(response.text[:300].replace(route.api_key or "\x00", "[REDACTED]"))
            raise RouteUnavailable(f"route {route.name!r}: HTTP {status} ({detail})", outcome="refused")
        try:
            body = response.json()
            choices = body["choices"]
            if not isinstance(choices, list) or (choices and not isinstance(choices[0].get("message"), dict)):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            self.breaker.record_failure()
            raise _Transient("the response is not a chat completion (malformed body)") from None
        self.breaker.record_success()
        if not choices:
            raise _NoAnswer("the server answered with no choices")
        return body

    def _post(self, http: httpx.Client, payload: dict[str, Any]) -> tuple[dict[str, Any], int]:
        route = self.route
        retrying = Retrying(
            stop=stop_after_attempt(route.max_attempts) | stop_after_delay(route.deadline),
            wait=wait_exponential(multiplier=route.backoff, max=route.backoff_max),
            retry=retry_if_exception_type(_Transient),
            sleep=self.sleep,
            reraise=True,
        )
        attempts = 0
        try:
            for attempt in retrying:
                with attempt:
                    attempts += 1
                    body = self._attempt(http, payload)
            return body, attempts
        except _Transient as exc:
            raise RouteUnavailable(f"route {route.name!r}: {exc} (after {attempts} attempt(s))",
                                   outcome="no_answer" if isinstance(exc, _NoAnswer) else "failed") from None
        except RetryError as exc:  # pragma: no cover - reraise=True re-raises the cause
            raise RouteUnavailable(f"route {route.name!r}: {exc}", outcome="failed") from None

    def complete(self, request: ModelRequest) -> ModelResponse:
        route = self.route
        tools = {tool.name: tool for tool in request.tools} if request.step_kind != STEP_SUMMARY else {}
        messages = list(request.messages)
        started = time.monotonic()
        prompt_tokens = completion_tokens = attempts = 0
        errors: list[str] = []
        sent_hash = ""
        timeout = httpx.Timeout(route.timeout)
        with httpx.Client(timeout=timeout, follow_redirects=False) as http:
            for repair in range(self.max_repairs + 1):
                payload = self._payload(messages, request)
                if repair == 0:  # the hash of what the step sent, repairs aside
                    sent_hash = prompt_hash(payload["messages"], tools=list(tools), model=route.model)
                try:
                    body, tries = self._post(http, payload)
                except ModelError as exc:
                    exc.prompt_tokens, exc.completion_tokens = prompt_tokens, completion_tokens
                    exc.cost_usd = route.cost(prompt_tokens, completion_tokens)
                    raise
                attempts += tries
                choice = body["choices"][0]
                message = choice["message"]
                usage = body.get("usage") or {}
                prompt_tokens += int(usage.get("prompt_tokens") or _estimate_tokens(json.dumps(messages)))
                completion_tokens += int(usage.get("completion_tokens")
                                         or _estimate_tokens(json.dumps(message)))
                answer = parse_answer(message, tools, finish_reason=choice.get("finish_reason"))
                errors = answer.errors
                if not errors:
                    return ModelResponse(
                        action=answer.action,
                        model=str(body.get("model") or route.model),
                        route=route.name,
                        raw=answer.raw,
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                        cost_usd=route.cost(prompt_tokens, completion_tokens),
                        latency_ms=round((time.monotonic() - started) * 1000, 1),
                        repairs=repair,
                        attempts=attempts,
                        prompt_hash=sent_hash,
                        notes=answer.notes,
                    )
                logger.info("route %s: invalid model output (repair %d/%d): %s", route.name, repair,
                            self.max_repairs, "; ".join(errors))
                messages = messages + repair_messages(answer.raw, errors, tools_offered=bool(tools))
        failure = InvalidModelOutput(
            f"route {route.name!r}: the model's answer was still invalid after {self.max_repairs} "
            f"repair attempt(s): {'; '.join(errors)}"
        )
        failure.prompt_tokens, failure.completion_tokens = prompt_tokens, completion_tokens
        failure.cost_usd = route.cost(prompt_tokens, completion_tokens)
        raise failure
