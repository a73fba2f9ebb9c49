"""A demo billing MCP server for the tests, built with the SDK's MCPServer (FastMCP's
successor in mcp 2.x): ``get_invoice`` (a read), ``refund_charge`` (a write that dedupes by
the call's idempotency key) and ``echo_auth`` (a careless tool that returns the credential
it was sent, so the tests see the broker mask it).

It wants the credential the broker injects: the ``Authorization: Bearer`` header (or the
``api_key`` query parameter) over streamable HTTP, the ``BILLING_API_KEY`` environment
variable over stdio, checked against ``--expect-sha256`` (it never holds the secret
itself). Every call is appended to the ``--state`` JSON file: tool, arguments, the
idempotency key from ``_meta``, whether the credential was right, and whether the refund
executed or was replayed -- what the downstream saw, for the tests to read.

    python billing_mcp_server.py http PORT --state FILE --expect-sha256 HEX
    python billing_mcp_server.py stdio --state FILE --expect-sha256 HEX
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import threading
from pathlib import Path

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

app = MCPServer("demo-billing")
_lock = threading.Lock()
ARGS: argparse.Namespace


def _digest(value: str | None) -> str:
    return hashlib.sha256((value or "").encode()).hexdigest()


def _presented(ctx: Context) -> str | None:
    request = ctx.request_context.request
    if request is None:  # stdio
        return os.environ.get("BILLING_API_KEY")
    header = request.headers.get("authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer ") :]
    return request.query_params.get("api_key")


def _record(ctx: Context, tool: str, arguments: dict, **extra) -> dict:
    meta = ctx.request_context.meta or {}
    entry = {
        "tool": tool,
        "arguments": arguments,
        "idempotency_key": meta.get("acp/idempotency_key"),
        "trace_id": meta.get("acp/trace_id"),
        "authorized": _digest(_presented(ctx)) == ARGS.expect_sha256,
        **extra,
    }
    with _lock:
        path = Path(ARGS.state)
        calls = json.loads(path.read_text()) if path.exists() and path.stat().st_size else []
        calls.append(entry)
        path.write_text(json.dumps(calls))
    return entry


def _refunds() -> dict[str, dict]:
    path = Path(ARGS.state)
    calls = json.loads(path.read_text()) if path.exists() and path.stat().st_size else []
    return {c["idempotency_key"]: c["result"] for c in calls if c.get("executed")}


@app.tool()
def get_invoice(invoice_id: str, ctx: Context) -> dict:
    """Read one invoice: its customer, amount and charges."""
    entry = _record(ctx, "get_invoice", {"invoice_id": invoice_id})
    if not entry["authorized"]:
        raise ToolError("unauthorized: a valid billing API key is required")
    if invoice_id == "in_missing":
        raise ToolError(f"no invoice {invoice_id}")
    return {
        "invoice_id": invoice_id,
        "customer": "C-1001",
        "amount_cents": 4000,
        "status": "paid",
        "charges": [{"id": "ch_1", "amount_cents": 4000}, {"id": "ch_1b", "amount_cents": 4000}],
    }


@app.tool()
def refund_charge(charge_id: str, amount_cents: int, reason: str, ctx: Context) -> dict:
    """Refund a charge, once per idempotency key."""
    meta = ctx.request_context.meta or {}
    key = meta.get("acp/idempotency_key")
    if _digest(_presented(ctx)) != ARGS.expect_sha256:
        _record(ctx, "refund_charge", {"charge_id": charge_id}, executed=False)
        raise ToolError("unauthorized: a valid billing API key is required")
    with _lock:
        done = _refunds().get(key) if key else None
    if done is not None:
        _record(ctx, "refund_charge", {"charge_id": charge_id}, executed=False, replayed=True)
        return {**done, "replayed": True}
    result = {
        "refund_id": f"re_{charge_id}",
        "charge_id": charge_id,
        "amount_cents": amount_cents,
        "status": "succeeded",
    }
    _record(
        ctx,
        "refund_charge",
        {"charge_id": charge_id, "amount_cents": amount_cents, "reason": reason},
        executed=True,
        result=result,
    )
    return result


@app.tool()
def echo_auth(ctx: Context) -> dict:
    """Return the credential this call was sent with (a careless downstream)."""
    _record(ctx, "echo_auth", {})
    return {"you_sent": _presented(ctx)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=["http", "stdio"])
    parser.add_argument("port", nargs="?", type=int, default=0)
    parser.add_argument("--state", required=True)
    parser.add_argument("--expect-sha256", required=True)
    ARGS = parser.parse_args()
    if ARGS.transport == "http":
        app.run("streamable-http", host="127.0.0.1", port=ARGS.port)
    else:
        app.run("stdio")
