"""The tool registry: name, description, JSON Schema of the arguments, tier, timeout,
retry policy, whether the tool is idempotent. Tools run only through the broker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import jsonschema

from agents.credentials import Claims, credential_verify
from agents.llm.base import ToolSpec


class ToolError(Exception):
    """A tool failure with a class (model/tool/network/policy/data/logic) and a message
    that says what was wrong and how to fix it. ``retryable`` marks retry-safe failures."""

    def __init__(
        self, message: str, *, failure_class: str = "tool", retryable: bool = False, code: str = "tool_error"
    ):
        super().__init__(message)
        self.message = message
        self.failure_class = failure_class
        self.retryable = retryable
        self.code = code

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "class": self.failure_class,
            "retryable": self.retryable,
        }


class ToolTimeout(ToolError):
    def __init__(self, message: str):
        super().__init__(message, failure_class="tool", retryable=True, code="timeout")


@dataclass
class ToolContext:
    """What the broker hands a tool: a scoped credential and the call's idempotency key."""

    credential: str
    idempotency_key: str
    run_pk: int
    run_public_id: str
    trace_id: str
    deadline: float  # time.monotonic() by which the tool must have returned

    def claims(self, tool: str) -> Claims:
        """Verify the credential for ``tool`` (the tool side's check)."""
        return credential_verify(self.credential, tool=tool)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    tier: str
    func: Callable[[ToolContext, dict[str, Any]], dict[str, Any]]
    timeout_seconds: float = 5.0
    max_attempts: int = 3  # total attempts for retry-safe failures
    idempotent: bool = True  # safe to call again with the same idempotency key
    side_effects: bool = False
    max_result_chars: int = 8000
    validator: Any = field(default=None, compare=False, repr=False)
    # The tool's own invariants, checkable before the call: (tenant_id, arguments) ->
    # [(code, message)]. The runtime runs it on a proposal before policy and approval, an
    # approver's edit is checked with it, and the tool checks the same again when it runs.
    precheck: Callable[[Any, dict[str, Any]], list[tuple[str, str]]] | None = field(
        default=None, compare=False, repr=False
    )
    # What a reviewer needs to judge a proposed call, read live: (tenant_id, arguments) ->
    # a JSON-able dict (for apply_credit: the evidence check and the credit history).
    review: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = field(
        default=None, compare=False, repr=False
    )
    # Why every call of this tool needs a person's approval whatever the policy says ("" =
    # the policy decides): a tool imported from an MCP server until an admin reviews it.
    # The runtime adds it to the policy's forced approvals (it turns an allow into
    # require_approval, never a deny into anything else).
    forced_approval: str = ""
    # The stored version of a tool defined as data (integrations), recorded with each step
    # and audit event of a call; None for a tool in code.
    version: int | None = None

    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)

    def validate(self, arguments: Any) -> list[str]:
        """Problems with ``arguments`` against the JSON Schema, as readable strings."""
        validator = self.validator or jsonschema.Draft202012Validator(self.parameters)
        problems = []
        for err in sorted(validator.iter_errors(arguments), key=lambda e: list(e.path)):
            where = "/".join(str(p) for p in err.absolute_path) or "arguments"
            message = err.message  # it quotes the offending value, which may be huge
            if len(message) > PROBLEM_CHARS:
                message = message[:PROBLEM_CHARS] + "…[truncated]"
            problems.append(f"{where}: {message}")
        return problems


REGISTRY: dict[str, Tool] = {}
PROBLEM_CHARS = 300  # per schema problem: repair prompts and audit payloads stay bounded


def register(
    *,
    name: str,
    description: str,
    parameters: dict[str, Any],
    tier: str,
    timeout_seconds: float = 5.0,
    max_attempts: int = 3,
    idempotent: bool = True,
    side_effects: bool = False,
    max_result_chars: int = 8000,
    precheck: Callable[[Any, dict[str, Any]], list[tuple[str, str]]] | None = None,
    review: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None,
):
    """Decorator registering a tool function under ``name`` (last registration wins)."""
    jsonschema.Draft202012Validator.check_schema(parameters)

    def wrap(func):
        REGISTRY[name] = Tool(
            name=name,
            description=description,
            parameters=parameters,
            tier=tier,
            func=func,
            timeout_seconds=timeout_seconds,
            max_attempts=max_attempts,
            idempotent=idempotent,
            side_effects=side_effects,
            max_result_chars=max_result_chars,
            validator=jsonschema.Draft202012Validator(parameters),
            precheck=precheck,
            review=review,
        )
        return func

    return wrap


class ToolSource(Protocol):
    """Tools defined somewhere other than in code (the ``integrations`` app: HTTP and MCP
    tools that admins register as data). Registered by the app when it loads, as toolkits
    register their tools; the runtime never imports it."""

    def get(self, name: str, tenant_id: Any) -> Tool | None:
        """The tool called ``name`` that tenant ``tenant_id`` may use (its own or a global
        one; ``tenant_id`` None: global ones only), or None."""

    def names(self) -> set[str]:
        """Every tool name it defines, for any tenant (what a kill switch may target)."""


SOURCES: list[ToolSource] = []


def register_source(source: ToolSource) -> None:
    """Add ``source`` to the places ``get_tool`` looks (once, however often called)."""
    if source not in SOURCES:
        SOURCES.append(source)


def get_tool(name: str, tenant_id: Any = None) -> Tool | None:
    """The tool ``name`` for a run of tenant ``tenant_id``: a tool registered in code (one
    dict lookup, as before: in-process tools never wait for a source), else the first
    source that has one for that tenant."""
    tool = REGISTRY.get(name)
    if tool is None:
        for source in SOURCES:
            tool = source.get(name, tenant_id)
            if tool is not None:
                break
    return tool


def known_tool_names() -> set[str]:
    """Every tool name, in code or in a source, of any tenant."""
    names = set(REGISTRY)
    for source in SOURCES:
        names |= source.names()
    return names
