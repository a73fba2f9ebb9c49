"""A small OpenAI-compatible chat-completions server on a real socket, for tests.

It listens on 127.0.0.1 on a free port in a background thread. Tell it what to do with the
next requests, in order, with ``push(...)``; when the script runs out it answers
``default`` (a plain ``final`` action). Every request it received is kept in ``requests``
(the JSON body and the headers) so tests can assert what the client sent.

Behaviours (build them with the helpers below):
  ok_final(msg) / ok_tool(name, args) / ok_content(text)   a normal answer
  status(429) / status(500) / status(400)                  an HTTP error
  hang(seconds)                                            no answer until the client gave up
  malformed_body()                                         HTTP 200 with a body that is not JSON
  ok_tool(..., arguments_text="{not json")                 tool arguments that are not JSON
  tool_calls([...])                                        several tool calls at once
"""

from __future__ import annotations

import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _completion(message: dict[str, Any], *, model: str, usage: tuple[int, int] | None) -> dict:
    body: dict[str, Any] = {
        "id": "chatcmpl-test", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}],
    }
    if usage is not None:
        body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                         "total_tokens": usage[0] + usage[1]}
    return body


def ok_content(text: str, *, usage: tuple[int, int] | None = (100, 20)) -> dict:
    return {"kind": "ok", "message": {"content": text}, "usage": usage}


def ok_final(message: str = "Done.", **kwargs) -> dict:
    return ok_content(json.dumps({"type": "final", "message": message}), **kwargs)


def tool_calls(calls: list[tuple[str, Any]], *, content: str | None = None,
               usage: tuple[int, int] | None = (100, 20)) -> dict:
    return {"kind": "ok", "usage": usage, "message": {"content": content, "tool_calls": [
        {"id": f"call_{index}", "type": "function",
         "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}
        for index, (name, args) in enumerate(calls)]}}


def ok_tool(name: str, arguments: Any = None, *, arguments_text: str | None = None, **kwargs) -> dict:
    return tool_calls([(name, arguments_text if arguments_text is not None else (arguments or {}))], **kwargs)


def status(code: int, text: str = "") -> dict:
    text = text or json.dumps({"error": {"message": f"HTTP {code}"}})
    return {"kind": "status", "code": code, "text": text}


def hang(seconds: float = 10.0) -> dict:
    return {"kind": "hang", "seconds": seconds}


def malformed_body() -> dict:
    return {"kind": "malformed"}


class FakeOpenAI:
    def __init__(self) -> None:
        self.script: deque[dict] = deque()
        self.requests: list[dict[str, Any]] = []
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
                    fake.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                    behaviour = fake.script.popleft() if fake.script else fake.default
                fake._respond(self, behaviour, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    # -- control -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeOpenAI:
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

    @property
    def count(self) -> int:
        return len(self.requests)

    # -- answers -------------------------------------------------------------------------

    def _respond(self, handler: BaseHTTPRequestHandler, behaviour: dict, body: dict) -> None:
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
        payload = _completion(behaviour["message"], model=model, usage=behaviour.get("usage"))
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
