"""What a data-defined tool does when the broker runs it: check the broker's credential,
find and decrypt the tenant's downstream secret, ask the downstream's circuit breaker, call
it (``http_transport`` or ``mcp_client``) within the call's deadline, and hand back a
result or a classified ``ToolError`` in which the secret never appears.

The runtime sees an ordinary ``agents.tools.Tool`` (``integrations.resolver`` builds it):
policy, approval, kill switches, idempotency keys, retries (``agents.broker``), the trace and
the audit log apply as to any tool. Failure classes: the downstream unreachable ->
``network``; timeouts, 5xx, 429, an open breaker -> ``tool`` (both retried by the broker
when the tool is retry-safe, then handed off); a refusal of the arguments (4xx, an MCP
tool error) -> ``data`` (back to the model); a refused or missing credential -> ``logic``.
"""

from __future__ import annotations

import time
from typing import Any

from django.db.models import Q

from agents.llm.breaker import CircuitBreaker
from agents.tools.registry import ToolContext, ToolError
from integrations import crypto, http_transport, mcp_client
from integrations.definitions import Definition, Injection
from integrations.models import Credential, CredentialPlacement, ServerTransport, Transport


def breaker_for(definition: Definition) -> CircuitBreaker:
    # The model routes' breaker (shared by every process through the cache), one per
    # downstream: an MCP server or an HTTP tool's endpoint.
    return CircuitBreaker(f"tool:{definition.downstream}")


def credential_for(definition: Definition, tenant_id: str) -> Injection | None:
    """The tenant's secret for the tool's scope (a row for this very tool wins over one for
    the scope), decrypted; None when the tool needs none. One indexed read per call."""
    if not definition.credential_scope:
        return None
    this_tool = Q(tool_id=definition.tool_id) if definition.tool_id else Q(pk__in=[])
    rows = Credential.objects.filter(tenant_id=tenant_id, scope=definition.credential_scope).filter(
        this_tool | Q(tool__isnull=True)
    )
    row = min(rows, key=lambda r: r.tool_id is None, default=None)
    if row is None:
        raise ToolError(
            f"{definition.name} needs a credential of scope {definition.credential_scope!r} and this "
            "tenant has none; an admin adds one (Integrations > Credentials)",
            failure_class="logic", code="credential_missing",
        )
    stdio = definition.server is not None and definition.server.transport == ServerTransport.STDIO
    if (row.placement == CredentialPlacement.ENV) != stdio:
        raise ToolError(
            f"{definition.name}: a credential placed in {row.get_placement_display().lower()} does not "
            "fit this transport (stdio servers take environment variables, HTTP takes headers or query)",
            failure_class="logic", code="credential_misplaced",
        )
    try:
        secret = crypto.decrypt(row.ciphertext)
    except crypto.CredentialUnreadable as exc:
        raise ToolError(f"{definition.name}: {exc}", failure_class="logic",
                        code="credential_unreadable") from None
    return Injection(placement=row.placement, name=row.name, value=row.prefix + secret, secret=secret)


def remaining_seconds(ctx: ToolContext, definition: Definition) -> float:
    """The call's own timeout: what is left of the broker's deadline, less a margin, so the
    call ends (and cleans up its connection or subprocess) before the broker's alarm."""
    margin = min(0.5, definition.timeout_seconds * 0.1)
    return max(0.05, ctx.deadline - time.monotonic() - margin)


def call(definition: Definition, ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """Run one call of a data-defined tool (the ``func`` of its ``Tool``)."""
    claims = ctx.claims(definition.name)  # issued by the broker for this run and tool
    if definition.tenant_id is not None and claims.tenant_id != definition.tenant_id:
        raise ToolError(f"{definition.name} is not available to this tenant", failure_class="logic",
                        code="tool_not_available")
    injection = credential_for(definition, claims.tenant_id)
    breaker = breaker_for(definition)
    if not breaker.allow():
        raise ToolError(
            f"{definition.name}: its downstream failed repeatedly; circuit open, next try in "
            f"{breaker.retry_in():.0f}s", failure_class="tool", code="circuit_open",
        )
    timeout = remaining_seconds(ctx, definition)
    try:
        if definition.transport == Transport.HTTP:
            raw = http_transport.request(definition, arguments, injection=injection,
                                         idempotency_key=ctx.idempotency_key, trace_id=ctx.trace_id,
                                         timeout=timeout)
        else:
            raw = mcp_client.call_tool(definition.server, definition.remote_name, arguments,
                                       injection=injection, idempotency_key=ctx.idempotency_key,
                                       trace_id=ctx.trace_id, timeout=timeout)
    except ToolError as exc:
        # the downstream is unwell (unreachable, slow, 5xx): the breaker counts it; a
        # refusal of the arguments or the credential means it answered
        if exc.retryable:
            breaker.record_failure()
        else:
            breaker.record_success()
        if injection is not None:
            exc.message = injection.scrub(exc.message)
            exc.args = (exc.message,)
        raise exc from None
    breaker.record_success()
    return injection.scrub(raw) if injection is not None else raw
