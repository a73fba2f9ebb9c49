"""A strict OpenAI-compatible chat-completions server on a real socket, for every model-path test.

It validates each request as OpenAI's API does before it answers, and answers HTTP 400 with
OpenAI's error body (``{"error": {"message", "type": "invalid_request_error", "param",
"code"}}``) on a violation:

- the request body with the ``openai`` SDK's own types: pydantic ``TypeAdapter`` over
  ``CompletionCreateParamsNonStreaming``, and each message over its role's param type and
  ``ChatCompletionMessageParam``; keys the types do not name are refused (the API's
  "Unrecognized request argument" / "Additional properties are not allowed");
- what the types cannot say: an assistant message has ``content`` or ``tool_calls``;
  ``tool_calls`` is not empty, its ids are unique, its ``function.arguments`` is a JSON
  object in a string (vLLM parses it to render its templates); ``tools`` are functions with
  a valid name and a JSON Schema of type object; ``tool_choice`` and
  ``parallel_tool_calls`` only come with ``tools``;
- the sequencing rules: every ``tool`` message answers an id of the ``tool_calls`` of the
  assistant message right before it (after that message's other answers), and no call is
  left unanswered.

A request that violates nothing is answered from the script: tell it what to do with the
next valid requests, in order, with ``push(...)``; when the script runs out it answers
``default`` (a plain ``final`` action). A refused request does not use up the script. Every
request is kept in ``requests`` (JSON body and headers) and every violation in
``violations``; the fixtures of tests/llm/conftest.py fail a test that caused a violation it
did not expect (``expect_violations()``).

Behaviours (build them with the helpers below):
  ok_final(msg) / ok_tool(name, args) / ok_content(text)   a normal answer
  tool_calls([...])                                        several tool calls at once
  ok_tool(..., arguments_text="{not json")                 tool arguments that are not JSON
  ollama_tool(name, args)                                  arguments as an object (Ollama)
  cut_off(text)                                            finish_reason "length"
  no_choices()                                             HTTP 200 with "choices": []
  status(429) / status(500) / status(400)                  an HTTP error
  hang(seconds)                                            no answer until the client gave up
  malformed_body()                                         HTTP 200 with a body that is not JSON
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionDeveloperMessageParam,
    ChatCompletionFunctionMessageParam,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionMessageParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionToolMessageParam,
    ChatCompletionUserMessageParam,
    completion_create_params,
)
from openai.types.chat.chat_completion_message_function_tool_call_param import Function as CallFunction
from openai.types.shared_params import FunctionDefinition
from pydantic import TypeAdapter, ValidationError

# --- validation ---------------------------------------------------------------------------

_REQUEST_TYPE = completion_create_params.CompletionCreateParamsNonStreaming
_REQUEST = TypeAdapter(_REQUEST_TYPE)
_MESSAGE = TypeAdapter(ChatCompletionMessageParam)
_ROLES = {
    "system": ChatCompletionSystemMessageParam,
    "developer": ChatCompletionDeveloperMessageParam,
    "user": ChatCompletionUserMessageParam,
    "assistant": ChatCompletionAssistantMessageParam,
    "tool": ChatCompletionToolMessageParam,
    "function": ChatCompletionFunctionMessageParam,
}
_ROLE_ADAPTERS = {role: TypeAdapter(kind) for role, kind in _ROLES.items()}
_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _keys(typed_dict: Any) -> frozenset[str]:
    return typed_dict.__required_keys__ | typed_dict.__optional_keys__


class Violation(Exception):
    """What OpenAI's API would answer 400 for: ``message`` and ``param`` as its error body."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": "invalid_request_error", "param": self.param,
                          "code": None}}


def _materialise(value: Any) -> Any:
    """Walk a validated value: pydantic validates ``Iterable[...]`` fields (the SDK's messages,
    tool_calls, content parts) lazily, so iterate them to make it validate them at all."""
    if isinstance(value, dict):
        return {key: _materialise(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_materialise(item) for item in value]
    if hasattr(value, "__next__"):
        return [_materialise(item) for item in value]
    return value


def _typed(adapter: TypeAdapter, value: Any, where: str) -> None:
    try:
        _materialise(adapter.validate_python(value))
    except ValidationError as exc:
        error = exc.errors()[0]
        path = ".".join(str(part) for part in error["loc"])
        raise Violation(f"Invalid '{where}{'.' + path if path else ''}': {error['msg']}.",
                        f"{where}.{path}" if path else where) from None


def _no_extra(value: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    extra = sorted(set(value) - allowed)
    if extra:
        raise Violation(f"Additional properties are not allowed ({extra[0]!r} was unexpected) - '{where}'.",
                        f"{where}.{extra[0]}")


def _check_tool_calls(message: dict[str, Any], where: str) -> list[str]:
    calls = message["tool_calls"]
    if not calls:
        raise Violation(f"Invalid '{where}.tool_calls': empty array. Expected an array with minimum "
                        "length 1, but got an empty array instead.", f"{where}.tool_calls")
    ids: list[str] = []
    for index, call in enumerate(calls):
        at = f"{where}.tool_calls[{index}]"
        _no_extra(call, _keys(ChatCompletionMessageFunctionToolCallParam), at)
        _no_extra(call["function"], _keys(CallFunction), f"{at}.function")
        if call["type"] != "function":
            raise Violation(f"Invalid '{at}.type': expected 'function'.", f"{at}.type")
        if not _FUNCTION_NAME.match(call["function"]["name"]):
            raise Violation(f"Invalid '{at}.function.name': string does not match pattern "
                            f"'{_FUNCTION_NAME.pattern}'.", f"{at}.function.name")
        try:
            arguments = json.loads(call["function"]["arguments"])
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise Violation(f"Invalid '{at}.function.arguments': not a JSON object.",
                            f"{at}.function.arguments")
        if call["id"] in ids:
            raise Violation(f"Invalid '{at}.id': duplicate tool call id {call['id']!r}.", f"{at}.id")
        ids.append(call["id"])
    return ids


def _unanswered(ids: list[str]) -> str:
    return ("An assistant message with 'tool_calls' must be followed by tool messages responding to each "
            f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(ids)}")


def _check_messages(messages: list[Any]) -> None:
    if not messages:
        raise Violation("Invalid 'messages': empty array. Expected an array with minimum length 1, but got "
                        "an empty array instead.", "messages")
    unanswered: list[str] = []  # ids of the last tool_calls not answered yet
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            role = message.get("role") if isinstance(message, dict) else None
            raise Violation(f"Invalid value: {role!r}. Supported values are: {sorted(_ROLES)}.",
                            f"{where}.role")
        role = message["role"]
        _typed(_ROLE_ADAPTERS[role], message, where)
        _typed(_MESSAGE, message, where)
        _no_extra(message, _keys(_ROLES[role]), where)
        if role == "tool":
            if message["tool_call_id"] not in unanswered:
                raise Violation("Invalid parameter: messages with role 'tool' must be a response to a "
                                "preceeding message with 'tool_calls' (tool_call_id "
                                f"{message['tool_call_id']!r} answers no open call).", f"{where}.role")
            unanswered.remove(message["tool_call_id"])
            continue
        if unanswered:
            raise Violation(_unanswered(unanswered), f"{where}.role")
        if role == "assistant":
            if message.get("tool_calls") is not None:
                unanswered = _check_tool_calls(message, where)
            elif message.get("content") is None:
                raise Violation(f"Invalid '{where}': an assistant message needs 'content' unless it has "
                                "'tool_calls'.", f"{where}.content")
    if unanswered:
        raise Violation(_unanswered(unanswered), "messages")


def _check_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if not tools:
        for key in ("tool_choice", "parallel_tool_calls"):
            if key in body:
                raise Violation(f"Invalid value for '{key}': '{key}' is only allowed when 'tools' are "
                                "specified.", key)
        return
    names = []
    for index, tool in enumerate(tools):
        at = f"tools[{index}]"
        if tool.get("type") != "function":
            raise Violation(f"Invalid '{at}.type': expected 'function'.", f"{at}.type")
        _no_extra(tool, _keys(ChatCompletionFunctionToolParam), at)
        _no_extra(tool["function"], _keys(FunctionDefinition), f"{at}.function")
        function = tool["function"]
        if not _FUNCTION_NAME.match(function["name"]):
            raise Violation(f"Invalid '{at}.function.name': string does not match pattern "
                            f"'{_FUNCTION_NAME.pattern}'.", f"{at}.function.name")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        try:
            Draft202012Validator.check_schema(parameters)
        except SchemaError as exc:
            raise Violation(f"Invalid schema for function '{function['name']}': {exc.message}.",
                            f"{at}.function.parameters") from None
        if parameters.get("type") != "object":
            raise Violation(f"Invalid schema for function '{function['name']}': schema must be a JSON Schema "
                            "of 'type: \"object\"'.", f"{at}.function.parameters")
        names.append(function["name"])
    if len(set(names)) != len(names):
        raise Violation("Invalid 'tools': function names must be unique.", "tools")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and (choice.get("function") or {}).get("name") not in names:
        raise Violation("Invalid 'tool_choice': the named function is not among 'tools'.", "tool_choice")


def validate_request(body: Any) -> None:
    """Raise ``Violation`` for anything OpenAI's chat-completions API would refuse."""
    if not isinstance(body, dict):
        raise Violation("We could not parse the JSON body of your request. (HINT: This likely means you "
                        "aren't using your HTTP library correctly.)")
    unknown = sorted(set(body) - _keys(_REQUEST_TYPE))
    if unknown:
        raise Violation(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    for key in ("model", "messages"):
        if key not in body:
            raise Violation(f"Missing required parameter: '{key}'.", key)
    if body.get("stream"):
        raise Violation("This test server does not stream; send 'stream': false.", "stream")
    if not isinstance(body["messages"], list):
        raise Violation("Invalid type for 'messages': expected an array.", "messages")
    _check_messages(body["messages"])  # message by message first: the clearer error
    _typed(_REQUEST, body, "body")
    _check_tools(body)


# --- answers ------------------------------------------------------------------------------


def _completion(behaviour: dict[str, Any], *, model: str, number: int) -> dict:
    message = {"role": "assistant", "content": None, "refusal": None, **behaviour["message"]}
    for index, call in enumerate(message.get("tool_calls") or []):
        call.setdefault("id", f"call_{number}_{index}")  # the server's ids; the client uses its own
    body: dict[str, Any] = {
        "id": f"chatcmpl-{number}", "object": "chat.completion", "created": 1_700_000_000, "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": behaviour.get("finish_reason") or (
                         "tool_calls" if message.get("tool_calls") else "stop")}],
    }
    if behaviour.get("no_choices"):
        body["choices"] = []
    usage = behaviour.get("usage")
    if usage is not None:
        body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                         "total_tokens": usage[0] + usage[1]}
    return body


def ok_content(text: str | None, *, usage: tuple[int, int] | None = (100, 20),
               finish_reason: str | None = None) -> dict:
    return {"kind": "ok", "message": {"content": text}, "usage": usage, "finish_reason": finish_reason}


def ok_final(message: str = "Done.", **kwargs) -> dict:
    return ok_content(json.dumps({"type": "final", "message": message}), **kwargs)


def tool_calls(calls: list[tuple[str, Any]], *, content: str | None = None,
               usage: tuple[int, int] | None = (100, 20), as_object: bool = False) -> dict:
    """An answer with these tool calls; ``arguments`` a JSON string as OpenAI sends them, or
    the object itself with ``as_object`` (Ollama)."""
    def arguments(args: Any) -> Any:
        if isinstance(args, str) or as_object:
            return args
        return json.dumps(args)

    return {"kind": "ok", "usage": usage, "message": {"content": content, "tool_calls": [
        {"type": "function", "function": {"name": name, "arguments": arguments(args)}}
        for name, args in calls]}}


def ok_tool(name: str, arguments: Any = None, *, arguments_text: str | None = None, **kwargs) -> dict:
    return tool_calls([(name, arguments_text if arguments_text is not None else (arguments or {}))], **kwargs)


def ollama_tool(name: str, arguments: dict[str, Any], **kwargs) -> dict:
    return tool_calls([(name, arguments)], as_object=True, **kwargs)


def cut_off(text: str, **kwargs) -> dict:
    return ok_content(text, finish_reason="length", **kwargs)


def no_choices(**kwargs) -> dict:
    return {**ok_content("", **kwargs), "no_choices": True}


def status(code: int, text: str = "") -> dict:
    text = text or json.dumps({"error": {"message": f"HTTP {code}", "type": "server_error", "param": None,
                                         "code": None}})
    return {"kind": "status", "code": code, "text": text}


def hang(seconds: float = 10.0) -> dict:
    return {"kind": "hang", "seconds": seconds}


def malformed_body() -> dict:
    return {"kind": "malformed"}


class StrictOpenAI:
    def __init__(self) -> None:
        self.script: deque[dict] = deque()
        self.requests: list[dict[str, Any]] = []
        self.violations: list[dict[str, Any]] = []  # {"request": index, "message", "param"}
        self.violations_expected = False
        self.default = ok_final("default answer")
        self._lock = threading.Lock()
        self._release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"_raw": raw.decode(errors="replace")}
                with fake._lock:
                    number = len(fake.requests)
                    fake.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                    try:
                        if self.path != "/v1/chat/completions":
                            raise Violation(f"Invalid URL (POST {self.path})")
                        validate_request(body)
                    except Violation as violation:
                        fake.violations.append({"request": number, "message": violation.message,
                                                "param": violation.param})
                        behaviour = {"kind": "status", "code": 400, "text": json.dumps(violation.body())}
                    else:
                        behaviour = fake.script.popleft() if fake.script else fake.default
                fake._respond(self, behaviour, body, number)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    # -- control -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> StrictOpenAI:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def push(self, *behaviours: dict) -> None:
        with self._lock:
            self.script.extend(behaviours)

    def expect_violations(self) -> None:
        """This test sends invalid requests on purpose: do not fail it for them."""
        self.violations_expected = True

    @property
    def count(self) -> int:
        return len(self.requests)

    # -- answers -------------------------------------------------------------------------

    def _respond(self, handler: BaseHTTPRequestHandler, behaviour: dict, body: dict, number: int) -> None:
        kind = behaviour["kind"]
        if kind == "hang":
            self._release.wait(behaviour["seconds"])
            return  # the client has gone; nothing to answer
        if kind == "status":
            self._send(handler, behaviour["code"], behaviour["text"].encode())
            return
        if kind == "malformed":
            self._send(handler, 200, b"<html>upstream proxy error</html>", "text/html")
            return
        model = body.get("model", "fake") if isinstance(body, dict) else "fake"
        payload = _completion(json.loads(json.dumps(behaviour)), model=model, number=number)
        self._send(handler, 200, json.dumps(payload).encode())

    @staticmethod
    def _send(handler, code: int, data: bytes, content_type: str = "application/json") -> None:
        try:
            handler.send_response(code)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
