"""The runtime's MCP client: the maintained SDK (``mcp``), over streamable HTTP or stdio.

One session per call (connect, ``tools/call``, close), run with ``anyio.run`` inside the
worker's synchronous step: nothing is shared between calls, tenants or runs. The call's
idempotency key and trace id travel in the request's ``_meta`` (``acp/idempotency_key``,
``acp/trace_id``), over HTTP also as the ``Idempotency-Key`` and ``X-Trace-Id`` headers.
The tenant's credential goes where its row says: a header or a query parameter of the
streamable HTTP endpoint, or an environment variable of the stdio server's process (which
gets only that and the SDK's minimal default environment, never the worker's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import httpx2
import mcp_types
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from agents.tools.registry import ToolError
from integrations.definitions import Injection, ServerSpec
from integrations.models import ServerTransport

META_IDEMPOTENCY_KEY = "acp/idempotency_key"
META_TRACE_ID = "acp/trace_id"
_ERROR_CHARS = 1000


@dataclass(frozen=True)
class RemoteTool:
    """One entry of a server's ``tools/list``."""

    name: str
    description: str
    input_schema: dict[str, Any]
    annotations: dict[str, Any]


def _with_query(url: str, name: str, value: str) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), (name, value)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _client(server: ServerSpec, *, injection: Injection | None, headers: dict[str, str], timeout: float,
            statuses: list[int]):
    """(the SDK client, the httpx2 client to close or None) for one session with ``server``.
    ``statuses`` collects the HTTP error statuses the server answered with: the SDK turns
    them into a generic JSON-RPC error, and a 401 must still read as a refused credential."""
    if server.transport == ServerTransport.STDIO:
        env = {injection.name: injection.value} if injection is not None else None
        params = StdioServerParameters(command=server.command[0], args=list(server.command[1:]), env=env)
        return Client(params, read_timeout_seconds=timeout, cache=None), None
    url = server.url
    if injection is not None:
        if injection.placement == "header":
            headers = {**headers, injection.name: injection.value}
        else:
            url = _with_query(url, injection.name, injection.value)
    async def seen(response: httpx2.Response) -> None:
        if response.status_code >= 400:
            statuses.append(response.status_code)

    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(timeout), follow_redirects=False,
                              event_hooks={"response": [seen]})
    transport = streamable_http_client(url, http_client=http)
    return Client(transport, read_timeout_seconds=timeout, cache=None), http


async def _session(server, injection, headers, timeout, work, statuses):
    client, http = _client(server, injection=injection, headers=headers, timeout=timeout, statuses=statuses)
    try:
        with anyio.fail_after(timeout):
            async with client:
                return await work(client)
    finally:
        if http is not None:
            await http.aclose()


def _leaf(exc: BaseException) -> BaseException:
    """The first real exception inside task-group exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _classify(exc: BaseException, *, what: str, timeout: float, statuses: list[int]) -> ToolError:
    exc = _leaf(exc)
    if isinstance(exc, ToolError):
        return exc
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status is None and statuses:
        status = statuses[-1]
    if status in (401, 403):
        return ToolError(f"{what}: the server refused the credential (HTTP {status})", failure_class="logic",
                         code="credential_refused")
    if isinstance(status, int) and (status >= 500 or status in (408, 429)):
        return ToolError(f"{what}: HTTP {status}", failure_class="tool", retryable=True,
                         code="upstream_error")
    if isinstance(exc, TimeoutError):
        return ToolError(f"{what}: no answer within {timeout:.1f}s", failure_class="tool", retryable=True,
                         code="timeout")
    if isinstance(exc, MCPError):
        if exc.code == mcp_types.INVALID_PARAMS:
            return ToolError(f"{what}: {exc.message}", failure_class="data", code="invalid_arguments")
        if exc.code == mcp_types.CONNECTION_CLOSED:
            return ToolError(f"{what}: connection closed: {exc.message}", failure_class="network",
                             retryable=True, code="network")
        if exc.code == mcp_types.REQUEST_TIMEOUT:
            return ToolError(f"{what}: {exc.message}", failure_class="tool", retryable=True, code="timeout")
        return ToolError(f"{what}: MCP error {exc.code}: {exc.message}", failure_class="tool",
                         code="mcp_error")
    if isinstance(exc, (httpx2.TransportError, OSError)):
        return ToolError(f"{what}: {type(exc).__name__}: {exc}", failure_class="network", retryable=True,
                         code="network")
    return ToolError(f"{what}: {type(exc).__name__}: {exc}", failure_class="tool", code="mcp_error")


def _run(server: ServerSpec, work, *, injection, headers, timeout: float, what: str):
    statuses: list[int] = []
    try:
        return anyio.run(_session, server, injection, headers, timeout, work, statuses)
    except ToolError:
        raise
    except Exception as exc:
        raise _classify(exc, what=what, timeout=timeout, statuses=statuses) from None


def _text(blocks: list[Any]) -> str:
    return "\n".join(getattr(b, "text", "") for b in blocks if getattr(b, "type", "") == "text")


def result_dict(result: mcp_types.CallToolResult) -> dict[str, Any]:
    """A ``tools/call`` result as the structured result the model sees: the structured
    content when the server gives one, else a text block holding a JSON object, else the
    content blocks (text kept, other kinds named)."""
    if result.structured_content is not None:
        content = result.structured_content
        return content if isinstance(content, dict) else {"result": content}
    blocks = list(result.content or [])
    if len(blocks) == 1 and getattr(blocks[0], "type", "") == "text":
        try:
            value = json.loads(blocks[0].text)
        except ValueError:
            return {"text": blocks[0].text}
        return value if isinstance(value, dict) else {"result": value}
    return {"content": [{"type": b.type, "text": b.text} if b.type == "text" else {"type": b.type}
                        for b in blocks]}


def call_tool(
    server: ServerSpec | None,
    remote_name: str,
    arguments: dict[str, Any],
    *,
    injection: Injection | None,
    idempotency_key: str,
    trace_id: str,
    timeout: float,
) -> dict[str, Any]:
    """Call ``remote_name`` on ``server`` once; a classified ToolError on any failure."""
    if server is None:
        raise ToolError("MCP tool without a server", failure_class="logic", code="bug")
    what = f"{server.slug}/{remote_name}"
    meta = {META_IDEMPOTENCY_KEY: idempotency_key, META_TRACE_ID: trace_id}

    async def work(client: Client) -> mcp_types.CallToolResult:
        return await client.call_tool(remote_name, arguments, meta=meta)

    headers = {"Idempotency-Key": idempotency_key, "X-Trace-Id": trace_id}
    result = _run(server, work, injection=injection, headers=headers, timeout=timeout, what=what)
    if result.is_error:
        text = _text(list(result.content or []))[:_ERROR_CHARS] or "the tool reported an error"
        raise ToolError(f"{what}: {text}", failure_class="data", code="tool_error")
    return result_dict(result)


def list_tools(server: ServerSpec, *, injection: Injection | None, timeout: float) -> list[RemoteTool]:
    """Every tool ``server`` lists (all pages)."""

    async def work(client: Client) -> list[RemoteTool]:
        tools: list[RemoteTool] = []
        cursor = None
        for _ in range(100):  # a paginator that never ends cannot hang an import
            page = await client.list_tools(cursor=cursor)
            for tool in page.tools:
                annotations = tool.annotations.model_dump(exclude_none=True) if tool.annotations else {}
                tools.append(RemoteTool(name=tool.name, description=tool.description or "",
                                        input_schema=dict(tool.input_schema or {}), annotations=annotations))
            cursor = page.next_cursor
            if not cursor:
                break
        return tools

    return _run(server, work, injection=injection, headers={}, timeout=timeout,
                what=f"{server.slug}/tools/list")
