"""Real downstreams for the integrations tests, on loopback:

- ``billing_mcp``: the demo billing MCP server (``billing_mcp_server.py``, the SDK's
  MCPServer) in a subprocess over streamable HTTP, one per test session; ``.calls()`` is
  what it saw during the current test. ``billing_stdio_command`` starts the same server
  over stdio (the worker spawns it per call).
- ``billing_api``: a small stdlib HTTP API in a thread (invoices, refunds deduped by
  ``Idempotency-Key``, a failing endpoint), recording every request it got.
- ``fake_model``: a model client that proposes the tool calls a test gives it, then ends.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from agents.credentials import credential_issue
from agents.llm.base import ModelResponse
from agents.tools.registry import ToolContext

HERE = Path(__file__).resolve().parent
SERVER = HERE / "billing_mcp_server.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def context_for(tenant, tool: str, *, key: str = "idk_test", timeout: float = 5.0) -> ToolContext:
    """What the broker hands a tool of ``tenant``'s run (for calling a tool's func directly)."""
    run_id = str(uuid.uuid4())
    return ToolContext(
        credential=credential_issue(
            tenant_id=str(tenant.pk), tenant_slug=tenant.slug, run_id=run_id, tool=tool
        ),
        idempotency_key=key,
        run_pk=0,
        run_public_id=run_id,
        trace_id="t" * 32,
        deadline=time.monotonic() + timeout,
    )


@pytest.fixture(scope="session")
def billing_secret() -> str:
    """The tenant's downstream API key: in the credential store and in the downstream's
    check, and (the tests prove) nowhere else."""
    return "bk_" + secrets.token_hex(20)


class Downstream:
    """What a downstream recorded, from the start of the current test on."""

    def __init__(self, read):
        self._read = read
        self._offset = 0

    def mark(self) -> None:
        self._offset = len(self._read())

    def calls(self, tool: str | None = None) -> list[dict]:
        calls = self._read()[self._offset :]
        return [c for c in calls if tool is None or c.get("tool") == tool]


@pytest.fixture(scope="session")
def _billing_mcp_process(billing_secret, tmp_path_factory):
    state = tmp_path_factory.mktemp("billing") / "calls.json"
    port = free_port()
    log = open(state.with_name("server.log"), "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(SERVER),
            "http",
            str(port),
            "--state",
            str(state),
            "--expect-sha256",
            hashlib.sha256(billing_secret.encode()).hexdigest(),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(state.with_name("server.log").read_text())
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("demo MCP server did not start") from None
            time.sleep(0.1)
    yield {"url": f"http://127.0.0.1:{port}/mcp", "state": state}
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _read_calls(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() and path.stat().st_size else []


@pytest.fixture
def billing_mcp(_billing_mcp_process):
    downstream = Downstream(lambda: _read_calls(_billing_mcp_process["state"]))
    downstream.url = _billing_mcp_process["url"]
    downstream.mark()
    return downstream


@pytest.fixture
def billing_stdio(billing_secret, tmp_path):
    """The stdio server's command (the worker starts it per call) and what it recorded."""
    state = tmp_path / "stdio-calls.json"
    downstream = Downstream(lambda: _read_calls(state))
    downstream.command = [
        sys.executable,
        str(SERVER),
        "stdio",
        "--state",
        str(state),
        "--expect-sha256",
        hashlib.sha256(billing_secret.encode()).hexdigest(),
    ]
    return downstream


# --- a plain HTTP API --------------------------------------------------------------------


class _Api(BaseHTTPRequestHandler):
    secret = ""
    requests: list[dict] = []
    refunds: dict[str, dict] = {}
    lock = threading.Lock()

    def log_message(self, format, *args):  # quiet
        pass

    def _reply(self, status: int, body: dict | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        query = parse_qs(parts.query)
        presented = self.headers.get("X-Api-Key") or (query.get("api_key") or [None])[0]
        record = {
            "method": method,
            "path": parts.path,
            "query": {k: v[0] for k, v in query.items()},
            "idempotency_key": self.headers.get("Idempotency-Key"),
            "trace_id": self.headers.get("X-Trace-Id"),
            "body": body,
            "authorized": presented == self.secret,
        }
        with self.lock:
            self.requests.append(record)
        if parts.path == "/v1/flaky":
            return self._reply(503, {"error": "try later"})
        if not record["authorized"]:
            return self._reply(401, {"error": "bad key"})
        if method == "GET" and parts.path.startswith("/v1/invoices/"):
            invoice = parts.path[len("/v1/invoices/") :]
            if invoice == "in_missing":
                return self._reply(404, {"error": f"no invoice {invoice}"})
            return self._reply(
                200,
                {
                    "data": {
                        "id": invoice,
                        "amount": 4000,
                        "customer": {"code": "C-1001"},
                        "lines": [{"sku": "pro"}],
                    },
                    "links": {"self": parts.path},
                },
            )
        if method == "POST" and parts.path == "/v1/refunds":
            key = record["idempotency_key"]
            with self.lock:
                if key in self.refunds:
                    return self._reply(200, {**self.refunds[key], "replayed": True})
                refund = {
                    "id": f"re_{len(self.refunds) + 1}",
                    "charge": body.get("charge_id"),
                    "amount": body.get("amount_cents"),
                }
                self.refunds[key] = refund
            record["executed"] = True
            return self._reply(201, refund)
        return self._reply(404, {"error": "no such endpoint"})

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")


@pytest.fixture(scope="session")
def _billing_api_server(billing_secret):
    _Api.secret = billing_secret
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def billing_api(_billing_api_server):
    downstream = Downstream(lambda: list(_Api.requests))
    downstream.url = _billing_api_server
    downstream.mark()
    return downstream


# --- a model that proposes what the test says ---------------------------------------------


class ProposingModel:
    """Proposes ``calls`` ((tool, arguments) pairs) one per step, then a final answer;
    remembers the tools it was offered each time."""

    def __init__(self, calls):
        self.calls = list(calls)
        self.offered: list[list[str]] = []

    def complete(self, request):
        self.offered.append([t.name for t in request.tools])
        done = len(request.state.get("observations", []))
        if done < len(self.calls):
            tool, arguments = self.calls[done]
            action = {"type": "tool_call", "tool": tool, "arguments": arguments}
        else:
            action = {"type": "final", "message": "Done."}
        return ModelResponse(action=action, model="proposing", prompt_tokens=5, completion_tokens=5)


@pytest.fixture
def fake_model(monkeypatch):
    """``fake_model(tenant, tools, calls)``: an active agent ``support`` of ``tenant`` whose
    model proposes ``calls``; returns the model."""
    from agents import runtime as rt
    from agents.models import Agent
    from agents.planner import INTENTS

    def make(tenant, tools, calls):
        model = ProposingModel(calls)
        monkeypatch.setitem(rt.MODEL_CLIENTS, "proposing", lambda agent: model)
        Agent.objects.filter(tenant=tenant, slug="support").update(is_active=False)
        version = Agent.objects.filter(tenant=tenant, slug="support").count() + 1
        Agent.objects.create(
            tenant=tenant,
            slug="support",
            version=version,
            name="Proposing",
            model_route=["proposing"],
            allowed_tools=list(tools),
            intents=list(INTENTS),
        )
        return model

    return make
