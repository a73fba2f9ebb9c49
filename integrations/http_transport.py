"""The ``http`` transport: one HTTP request per call, built from the tool's configuration
(``HTTP_SCHEMA``) and the call's arguments.

- URL template ``https://billing.example.com/v1/invoices/{invoice_id}``: each placeholder is
  a required argument, percent-encoded as one path segment (``/``, ``?``, ``#`` and ``..``
  cannot escape it). Placeholders stand only in the path and query, never in the scheme or
  host: arguments cannot redirect the call (and its credential) to another server.
- ``query``: arguments sent as query parameters. ``body``: ``arguments`` (the JSON body is
  every argument not used in the path or query; the default for POST, PUT and PATCH) or
  ``none`` (the default for GET and DELETE).
- ``headers``: fixed, non-secret headers (a secret-looking name is refused: secrets are
  Credentials). The call's idempotency key goes in ``Idempotency-Key`` (``idempotency_header``,
  "" for none) and the run's trace id in ``X-Trace-Id``.
- ``response_fields``: ``{"name": "dotted.path"}`` picks what the model sees from the JSON
  response (``items.0.id`` indexes a list); without it the whole JSON body is the result.
  The broker bounds it (``max_result_chars``).

A new client per call: no cookies or connections shared between tenants; redirects are not
followed (a redirect could carry the credential elsewhere).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema

from agents.tools.registry import ToolError
from audit.redaction import is_secret_key
from integrations.definitions import Definition, Injection

HTTP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["method", "url"],
    "properties": {
        "method": {"enum": ["GET", "POST", "PUT", "PATCH", "DELETE"]},
        "url": {"type": "string", "pattern": "^https?://[^/?#{}]+(/.*)?$", "maxLength": 1000},
        "query": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "body": {"enum": ["arguments", "none"]},
        "headers": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 500}},
        "response_fields": {"type": "object", "additionalProperties": {"type": "string", "minLength": 1}},
        "idempotency_header": {"type": "string", "maxLength": 100},
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(HTTP_SCHEMA)
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ERROR_SNIPPET = 500  # characters of a downstream error body shown to the model


def placeholders(url: str) -> list[str]:
    return _PLACEHOLDER.findall(url)


def config_problems(config: Any, parameters: dict[str, Any]) -> list[str]:
    """What is wrong with an ``http`` configuration for a tool taking ``parameters``."""
    if not isinstance(config, dict):
        return ["http: a JSON object with at least method and url"]
    problems = [
        f"http/{'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
        for e in _VALIDATOR.iter_errors(config)
    ]
    if problems:
        return problems
    properties = parameters.get("properties", {}) if isinstance(parameters, dict) else {}
    required = set(parameters.get("required", [])) if isinstance(parameters, dict) else set()
    for name in placeholders(config["url"]):
        if not _IDENTIFIER.match(name):
            problems.append(f"http/url: placeholder {{{name}}} must be a plain argument name")
        elif name not in properties or name not in required:
            problems.append(f"http/url: placeholder {{{name}}} must be a required argument of the schema")
    for name in config.get("query", []):
        if name not in properties:
            problems.append(f"http/query: {name!r} is not an argument of the schema")
    for header in config.get("headers", {}):
        if is_secret_key(header):
            problems.append(f"http/headers: {header!r} looks like a secret; store it as a Credential")
    for out, path in config.get("response_fields", {}).items():
        if not out or not all(path.split(".")):
            problems.append(f"http/response_fields: {out!r}: {path!r} is not a dotted path")
    return problems


def _scalar(name: str, value: Any) -> str | int | float:
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, (str, int, float)):
        raise ToolError(f"argument {name!r} goes in the URL and must be a string or a number",
                        failure_class="data", code="invalid_arguments")
    return value


def build(config: dict[str, Any], arguments: dict[str, Any]) -> tuple[str, str, dict[str, Any], Any]:
    """(method, url, query parameters, JSON body or None) for one call."""
    used: set[str] = set()

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in arguments:
            raise ToolError(f"argument {name!r} is required", failure_class="data", code="invalid_arguments")
        used.add(name)
        segment = quote(str(_scalar(name, arguments[name])), safe="")
        # a whole segment of dots would be resolved away ("/invoices/.." is "/")
        return segment.replace(".", "%2E") if set(segment) == {"."} else segment

    url = _PLACEHOLDER.sub(fill, config["url"])
    params = {}
    for name in config.get("query", []):
        if name in arguments:
            params[name] = _scalar(name, arguments[name])
            used.add(name)
    method = config["method"]
    body_mode = config.get("body") or ("arguments" if method in ("POST", "PUT", "PATCH") else "none")
    body = {k: v for k, v in arguments.items() if k not in used} if body_mode == "arguments" else None
    return method, url, params, body


def _pick(value: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def shape(config: dict[str, Any], payload: Any) -> dict[str, Any]:
    """The structured result the model sees."""
    fields = config.get("response_fields")
    if fields:
        return {name: _pick(payload, path) for name, path in fields.items()}
    return payload if isinstance(payload, dict) else {"result": payload}


def _snippet(response: httpx.Response) -> str:
    text = response.text
    return text[:_ERROR_SNIPPET] + ("…" if len(text) > _ERROR_SNIPPET else "")


def request(
    definition: Definition,
    arguments: dict[str, Any],
    *,
    injection: Injection | None,
    idempotency_key: str,
    trace_id: str,
    timeout: float,
) -> dict[str, Any]:
    config = definition.http
    method, url, params, body = build(config, arguments)
    headers = {**config.get("headers", {}), "Accept": "application/json", "X-Trace-Id": trace_id}
    idempotency_header = config.get("idempotency_header", "Idempotency-Key")
    if idempotency_header:
        headers[idempotency_header] = idempotency_key
    if injection is not None:
        if injection.placement == "header":
            headers[injection.name] = injection.value
        else:
            params[injection.name] = injection.value
    name = definition.name
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            response = client.request(method, url, params=params, json=body, headers=headers)
    except httpx.TimeoutException:
        raise ToolError(f"{name}: no answer within {timeout:.1f}s", failure_class="tool", retryable=True,
                        code="timeout") from None
    except httpx.TransportError as exc:
        raise ToolError(f"{name}: {type(exc).__name__}: {exc}", failure_class="network", retryable=True,
                        code="network") from None
    status = response.status_code
    if status in (401, 403):
        raise ToolError(f"{name}: the downstream refused the credential (HTTP {status})",
                        failure_class="logic", code="credential_refused")
    if status in (408, 429) or status >= 500:
        raise ToolError(f"{name}: HTTP {status} from the downstream: {_snippet(response)}",
                        failure_class="tool", retryable=True, code="upstream_error")
    if 300 <= status < 400:
        raise ToolError(f"{name}: HTTP {status} redirect not followed", failure_class="tool",
                        code="redirect_refused")
    if status >= 400:
        raise ToolError(f"{name}: HTTP {status}: {_snippet(response)}", failure_class="data",
                        code=f"http_{status}")
    if not response.content:
        return {"status": status}
    try:
        payload = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"status": status, "text": response.text[: max(_ERROR_SNIPPET, 4000)]}
    return shape(config, payload)
