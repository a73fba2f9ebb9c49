"""The tool broker: every tool execution goes through here.

- A short-lived credential scoped to tenant, run and tool (agents.credentials); the tool
  side verifies it and takes the tenant from it.
- Stripe-like idempotency: the key is derived from the run, the proposing step and the
  canonical arguments. The same key with the same arguments returns the stored result;
  the same step with other arguments is an ``IdempotencyConflict``; a call still in
  flight under another worker is not started twice (``InFlight``: try again later).
- Timeouts (SIGALRM in the worker's main thread) and bounded retries with exponential
  backoff (tenacity), for retry-safe failures of idempotent tools only.
- Failures are classified model / tool / network / policy / data / logic.

The broker does not persist steps: the runtime records the outcome, the invocation's final
state, the step and its audit event in one transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from agents import hotsql
from agents.credentials import CredentialError, credential_issue
from agents.models import AgentRun, InvocationState, ToolInvocation
from agents.tools.registry import Tool, ToolContext, ToolError, ToolTimeout

logger = logging.getLogger(__name__)

# Grace after an attempt's timeout before a "started" call is considered orphaned.
IN_FLIGHT_GRACE_SECONDS = 2.0
RETRY_WAIT = wait_exponential(multiplier=0.05, min=0.05, max=2.0)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ToolError) and exc.retryable


# The retry policy's parts are stateless, so they are built once; only the Retrying object
# (which holds the per-call statistics) is new for every call.
RETRY_IF = retry_if_exception(_retryable)
_STOPS: dict[int, stop_after_attempt] = {}


def _stop_after(attempts: int) -> stop_after_attempt:
    stop = _STOPS.get(attempts)
    if stop is None:
        stop = _STOPS[attempts] = stop_after_attempt(attempts)
    return stop


class InFlight(Exception):
    """Another worker is executing this very call right now; do not start it twice."""


class IdempotencyConflict(Exception):
    """The same step (or key) was proposed again with different arguments."""

    failure_class = "logic"


class OutcomeUnknown(Exception):
    """A non-idempotent call with side effects was interrupted: retrying could act twice."""

    failure_class = "tool"


# One encoder, built once: json.dumps with these options builds a new JSONEncoder per call.
# The output is identical (same options, the C encoder either way).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def canonical_json(value: Any) -> str:
    return _CANONICAL.encode(value)


def arguments_hash(arguments: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(arguments).encode()).hexdigest()


def idempotency_key_for(*, run_public_id: str, step_seq: int, arguments: dict[str, Any]) -> str:
    """``idk_`` + sha256(run, step, canonical arguments): stable across retries and resumes."""
    return _key(run_public_id, step_seq, arguments_hash(arguments))


def _key(run_public_id: str, step_seq: int, digest: str) -> str:
    return "idk_" + hashlib.sha256(f"{run_public_id}:{step_seq}:{digest}".encode()).hexdigest()[:48]


@dataclass
class ToolOutcome:
    ok: bool
    invocation: ToolInvocation
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    failure_class: str = ""
    attempts: int = 0
    latency_ms: float = 0.0
    replayed: bool = False
    refused: bool = False
    result_size: int = 0
    retries: list[str] = field(default_factory=list)


def invocation_propose(
    *,
    run: AgentRun,
    step_seq: int,
    tool: Tool,
    arguments: dict[str, Any],
    decision: str = "",
    decision_reason: str = "",
    policy_version: int | None = None,
    state: str = InvocationState.PROPOSED,
) -> ToolInvocation:
    """Find or create the invocation of (run, step). Other arguments at the same step, or the
    same key with other arguments, raise IdempotencyConflict."""
    fields = _invocation_fields(run=run, step_seq=step_seq, tool=tool, arguments=arguments,
                                decision=decision, decision_reason=decision_reason,
                                policy_version=policy_version, state=state)
    digest, key = fields["arg_hash"], fields["idempotency_key"]
    try:  # the common case is a new call: insert first, look up only on a conflict
        return _insert(**fields)
    except IntegrityError:
        existing = ToolInvocation.objects.filter(
            Q(run=run, step_seq=step_seq) | Q(idempotency_key=key)
        ).first()
        if existing is None:
            raise
    if existing.tool != tool.name or (existing.arg_hash != digest and existing.idempotency_key == key):
        raise IdempotencyConflict(
            f"step {step_seq} of run {run.public_id} already proposed {existing.tool} with other "
            "arguments; a step acts at most once"
        )
    if existing.arg_hash != digest and existing.state not in (
        InvocationState.APPROVED,
        InvocationState.AWAITING_APPROVAL,
    ):
        raise IdempotencyConflict(
            f"step {step_seq} of run {run.public_id} was already proposed with other arguments"
        )
    return existing


def _invocation_fields(
    *, run, step_seq, tool, arguments, decision, decision_reason, policy_version, state
) -> dict[str, Any]:
    """The columns of a new invocation of ``tool`` at (run, step): canonical arguments,
    their hash and the idempotency key derived from them."""
    canonical = json.loads(canonical_json(arguments))
    digest = arguments_hash(canonical)
    return dict(
        run=run,
        tenant_id=run.tenant_id,
        step_seq=step_seq,
        tool=tool.name,
        tier=tool.tier,
        arguments=canonical,
        arg_hash=digest,
        idempotency_key=_key(str(run.public_id), step_seq, digest),
        decision=decision,
        decision_reason=decision_reason[:2000],
        policy_version=policy_version,
        state=state,
    )


def _insert(**fields: Any) -> ToolInvocation:
    """INSERT one invocation (IntegrityError when (run, step) or the key already exists).

    Outside a transaction this is one autocommitted statement (one round trip, one commit):
    no BEGIN/COMMIT around it and no savepoint. Inside a caller's transaction a savepoint
    keeps the caller's transaction usable after a conflict.
    """
    if connection.in_atomic_block:
        with transaction.atomic():
            return ToolInvocation.objects.create(**fields)
    return ToolInvocation.objects.create(**fields)


def pure_read(tool: Tool) -> bool:
    """A tool that changes nothing (tier ``read``, no side effects): running it twice is
    harmless, so its invocation row need not be on disk before it runs."""
    return tool.tier == "read" and not tool.side_effects


def invocation_start(
    *,
    run: AgentRun,
    step_seq: int,
    tool: Tool,
    arguments: dict[str, Any],
    lease_token: str,
    decision: str,
    decision_reason: str,
    policy_version: int | None,
    defer: bool = False,
) -> ToolInvocation | None:
    """The fast path of an allowed call on a fresh step: the invocation, already
    ``started`` and held by ``lease_token``.

    - A tool that can change anything: inserted in one committed statement before the tool
      runs, so the idempotency key and the proposal are durable before any side effect
      (the same as ``invocation_propose`` followed by the conditional start, minus two
      round trips and a commit).
    - ``defer`` (only for a ``pure_read`` tool, on a step known to have no invocation
      row): not inserted at all. The runtime inserts it with its outcome in the step's
      own statement (``hotsql.step_write(new_invocation=...)``); if the step turns out to
      have a row after all, that statement writes nothing and the general path takes over.
      Losing it in a crash only means the read runs again on resume.

    Returns None when the step already has an invocation (a resumed run, a redelivered
    message, an approval): the caller then takes the general path, which looks it up and
    decides replay / in flight / conflict / resume after approval."""
    if defer and not pure_read(tool):
        raise ValueError(f"{tool.name} can change something: its invocation must be durable before it runs")
    now = timezone.now()
    values = _invocation_fields(run=run, step_seq=step_seq, tool=tool, arguments=arguments,
                                decision=decision, decision_reason=decision_reason,
                                policy_version=policy_version, state=InvocationState.STARTED)
    values.update(holder=lease_token, started_at=now, created_at=now)
    if defer:
        return hotsql.invocation_new(**values)
    # Hand-written INSERT ... ON CONFLICT DO NOTHING (agents.hotsql): no ORM compilation,
    # and a conflict is a row count of 0 rather than an error (no savepoint needed). A pure
    # read's row (a resumed run of an older version) commits without waiting for the flush.
    return hotsql.invocation_insert(durable=not pure_read(tool), **values)


@contextlib.contextmanager
def _deadline(seconds: float, tool_name: str):
    """Raise ToolTimeout in the running code after ``seconds`` (main thread only; elsewhere
    the tool sees ``ctx.deadline`` and the database's own statement timeout)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise ToolTimeout(f"{tool_name} did not finish within {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _classify(exc: BaseException) -> ToolError:
    if isinstance(exc, ToolError):
        return exc
    if isinstance(exc, CredentialError):
        return ToolError(str(exc), failure_class="logic", code="credential_refused")
    if isinstance(exc, (ConnectionError, TimeoutError, OSError, OperationalError)):
        return ToolError(
            f"{type(exc).__name__}: {exc}", failure_class="network", retryable=True, code="network"
        )
    return ToolError(f"unexpected {type(exc).__name__}: {exc}", failure_class="logic", code="bug")


def _bounded(tool: Tool, result: Any) -> tuple[dict[str, Any], int]:
    text = canonical_json(result)
    if len(text) <= tool.max_result_chars:
        return result, len(text)
    return {"truncated": True, "size": len(text), "preview": text[: tool.max_result_chars]}, len(text)


def _start(
    invocation: ToolInvocation, *, run: AgentRun, tool: Tool, lease_token: str, arguments: dict[str, Any]
) -> ToolInvocation:
    """Take the invocation for execution (a conditional UPDATE): fresh, approved, or
    orphaned by a dead worker. Anything else is in flight elsewhere or already done."""
    now = timezone.now()
    orphaned_before = now - timedelta(seconds=tool.timeout_seconds + IN_FLIGHT_GRACE_SECONDS)
    startable = Q(state__in=[InvocationState.PROPOSED, InvocationState.APPROVED]) | Q(
        state=InvocationState.STARTED, started_at__lt=orphaned_before
    )
    fields: dict[str, Any] = {"state": InvocationState.STARTED, "holder": lease_token, "started_at": now}
    canonical = json.loads(canonical_json(arguments))
    if canonical != invocation.arguments:  # approved with edited arguments
        digest = arguments_hash(canonical)
        fields.update(
            arguments=canonical,
            arg_hash=digest,
            idempotency_key=_key(str(run.public_id), invocation.step_seq, digest),
        )
    was_in_flight = invocation.state == InvocationState.STARTED
    updated = ToolInvocation.objects.filter(startable, pk=invocation.pk).update(**fields)
    if updated:
        for name, value in fields.items():
            setattr(invocation, name, value)
    else:
        invocation.refresh_from_db()
        if invocation.state == InvocationState.STARTED:
            raise InFlight(f"{tool.name} call {invocation.idempotency_key} is in flight elsewhere")
        return invocation
    if was_in_flight and not tool.idempotent and tool.side_effects:
        raise OutcomeUnknown(
            f"{tool.name} was interrupted mid-call and is not idempotent; its outcome is unknown"
        )
    return invocation


def broker_execute(
    *,
    run: AgentRun,
    invocation: ToolInvocation,
    tool: Tool,
    lease_token: str,
    arguments: dict[str, Any] | None = None,
    check_switches=None,
    already_started: bool = False,
) -> ToolOutcome:
    """Execute ``invocation`` at most once in effect, and return its outcome.

    ``check_switches`` is called right before the tool runs; it returns a refusal reason
    (a kill switch engaged since the step began) or None. ``already_started``: the caller
    inserted the invocation ``started`` under ``lease_token`` itself (``invocation_start``),
    so the conditional start is already done and committed.
    """
    if already_started:
        return _run_started(invocation, run=run, tool=tool, lease_token=lease_token,
                            check_switches=check_switches)
    arguments = invocation.arguments if arguments is None else arguments
    if invocation.state == InvocationState.SUCCEEDED:
        return ToolOutcome(
            ok=True,
            invocation=invocation,
            result=invocation.result,
            replayed=True,
            attempts=invocation.attempts,
            result_size=len(canonical_json(invocation.result)),
        )
    if invocation.state in (InvocationState.FAILED, InvocationState.REFUSED):
        return ToolOutcome(
            ok=False,
            invocation=invocation,
            error=invocation.error,
            replayed=True,
            failure_class=invocation.failure_class,
            attempts=invocation.attempts,
        )
    invocation = _start(invocation, run=run, tool=tool, lease_token=lease_token, arguments=arguments)
    if invocation.state in (InvocationState.SUCCEEDED, InvocationState.FAILED, InvocationState.REFUSED):
        return broker_execute(run=run, invocation=invocation, tool=tool, lease_token=lease_token)
    return _run_started(invocation, run=run, tool=tool, lease_token=lease_token,
                        check_switches=check_switches)


def _run_started(
    invocation: ToolInvocation, *, run: AgentRun, tool: Tool, lease_token: str, check_switches=None
) -> ToolOutcome:
    """Run a call this lease holds in state ``started``: switch re-check, then the tool."""
    if invocation.state != InvocationState.STARTED or invocation.holder != lease_token:
        raise IdempotencyConflict(
            f"{tool.name} call {invocation.idempotency_key} is {invocation.state}; it cannot execute"
        )
    arguments = invocation.arguments

    refusal = check_switches() if check_switches else None
    if refusal:
        error = {"code": "switch_engaged", "message": refusal, "class": "policy", "retryable": False}
        return ToolOutcome(ok=False, invocation=invocation, error=error, failure_class="policy", refused=True)

    retries: list[str] = []
    attempts = 0
    began = time.perf_counter()

    def attempt() -> Any:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            ToolInvocation.objects.filter(pk=invocation.pk, holder=lease_token).update(
                started_at=timezone.now()
            )
        ctx = ToolContext(
            credential=credential_issue(
                tenant_id=str(run.tenant_id),
                tenant_slug=run.tenant.slug,
                run_id=str(run.public_id),
                tool=tool.name,
                ttl_seconds=tool.timeout_seconds + 30,
            ),
            idempotency_key=invocation.idempotency_key,
            run_pk=run.pk,
            run_public_id=str(run.public_id),
            trace_id=run.trace_id,
            deadline=time.monotonic() + tool.timeout_seconds,
        )
        try:
            with _deadline(tool.timeout_seconds, tool.name):
                return tool.func(ctx, arguments)
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            classified = _classify(exc)
            retries.append(f"attempt {attempts}: {classified.failure_class}: {classified.message}")
            raise classified from exc

    retry_safe = tool.idempotent or not tool.side_effects
    try:
        raw = Retrying(
            stop=_stop_after(tool.max_attempts if retry_safe else 1),
            wait=RETRY_WAIT,
            retry=RETRY_IF,
            reraise=True,
        )(attempt)
    except ToolError as exc:
        latency = (time.perf_counter() - began) * 1000
        logger.warning(
            "tool %s failed (%s) after %d attempt(s): %s", tool.name, exc.failure_class, attempts, exc.message
        )
        return ToolOutcome(
            ok=False,
            invocation=invocation,
            error=exc.as_dict(),
            failure_class=exc.failure_class,
            attempts=attempts,
            latency_ms=latency,
            retries=retries,
        )
    latency = (time.perf_counter() - began) * 1000
    result, size = _bounded(tool, raw)
    return ToolOutcome(
        ok=True,
        invocation=invocation,
        result=result,
        attempts=attempts,
        latency_ms=latency,
        result_size=size,
        retries=retries,
        replayed=bool(isinstance(raw, dict) and raw.get("replayed")),
    )


def invocation_finish_fields(outcome: ToolOutcome) -> dict[str, Any]:
    """The columns that record an outcome on its invocation (written by the runtime)."""
    if outcome.refused:
        state = InvocationState.REFUSED
    else:
        state = InvocationState.SUCCEEDED if outcome.ok else InvocationState.FAILED
    return {
        "state": state,
        "result": outcome.result if outcome.ok else None,
        "error": None if outcome.ok else outcome.error,
        "failure_class": outcome.failure_class,
        "latency_ms": outcome.latency_ms,
        "finished_at": timezone.now(),
        "attempts": F("attempts") + outcome.attempts,
    }


# --- the invocation's other transitions -------------------------------------------------
# Called by the runtime inside the transaction that persists the step (its ``extra``), so a
# transition is never written without its step and audit event.


def invocation_outcome_save(pk: Any, finish: dict[str, Any], *, holder: str | None = None) -> bool:
    """Record an outcome (``invocation_finish_fields``) on a call's row; with ``holder``,
    only while that lease still holds it. Returns whether the row was written."""
    calls = ToolInvocation.objects.filter(pk=pk)
    if holder is not None:
        calls = calls.filter(holder=holder)
    return bool(calls.update(**finish))


def invocation_await_approval(invocation: ToolInvocation, decision) -> None:
    """require_approval: the call waits for a reviewer, with the decision that parked it."""
    ToolInvocation.objects.filter(pk=invocation.pk).update(
        state=InvocationState.AWAITING_APPROVAL,
        decision=decision.effect,
        decision_reason=decision.reason[:2000],
        policy_version=decision.policy_version,
    )
    invocation.state = InvocationState.AWAITING_APPROVAL


def invocation_denied_after_approval(invocation: ToolInvocation, decision) -> bool:
    """The active policy denies a call a reviewer let through (it changed while the call
    waited, or the approved edit crosses a limit): the call never runs; its row says so,
    with the decision. Only from awaiting_approval or approved. Returns whether it moved."""
    moved = ToolInvocation.objects.filter(
        pk=invocation.pk, state__in=[InvocationState.AWAITING_APPROVAL, InvocationState.APPROVED]
    ).update(
        state=InvocationState.DENIED,
        decision=decision.effect,
        decision_reason=decision.reason[:2000],
        policy_version=decision.policy_version,
    )
    if moved:
        invocation.state = InvocationState.DENIED
    return bool(moved)


# an approval request's final status -> the state of the call it held
_DECIDED_STATES = {
    "approved": InvocationState.APPROVED,  # it may start
    "rejected": InvocationState.REJECTED,  # a reviewer said no: it never runs
    "expired": InvocationState.REFUSED,  # nobody decided in time: failed closed
    "cancelled": InvocationState.REFUSED,  # the run was cancelled while it waited
}


def invocation_decided(invocation: ToolInvocation, *, outcome: str) -> bool:
    """The approval request holding a call closed with ``outcome`` (approved, rejected,
    expired, cancelled): approved lets it start; any other outcome means it never runs.
    Only from awaiting_approval; a call no longer awaiting keeps its state. Returns
    whether it moved."""
    state = _DECIDED_STATES[outcome]
    moved = ToolInvocation.objects.filter(pk=invocation.pk, state=InvocationState.AWAITING_APPROVAL).update(
        state=state
    )
    if moved:
        invocation.state = state
    return bool(moved)
