"""The step loop: one run, one worker at a time, one durable step after another.

``run_execute`` is what a Celery task calls. It takes the run's lease (a fencing token: a
conditional UPDATE that only one worker wins) and repeats ``_step`` until the run parks
or ends. Each step:

  1. consults kill switches and budgets;
  2. asks the model for the next action (JSON validated against ACTION_SCHEMA, with a
     bounded repair loop), after reserving the tenant's daily spend;
  3. validates the tool's arguments against the tool's JSON Schema;
  4. asks the policy engine: allow / deny / require_approval;
  5. executes through the broker (credential, idempotency key, timeout, retries);
  6. persists the step, the run's usage and state and its audit event in one transaction
     that only commits while this worker still holds the lease (``_commit``);
  7. repeats until a terminal state.

A model step that proposes a tool call is committed (with the proposal in ``run.state``)
before the tool runs, so a crash between the two resumes at the tool with the same
idempotency key instead of asking the model again. ``require_approval`` parks the run
(status ``waiting_approval``, lease released: no worker is held); the approval decision
enqueues the resume on commit.

Failure classes and their recovery paths:
  model   -> repair (bounded), retry later when retryable, else fail
  tool    -> retry (broker, bounded), then hand off
  network -> retry (broker, bounded), then hand off
  data    -> repair: the error goes back to the model as an observation, bounded
  policy  -> deny (run ``denied``) or stop (switch: ``killed``)
  logic   -> fail
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import jsonschema
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F
from django.utils import timezone

from agents import approval_subject, broker, hotsql, policy
from agents import switches as switch_state
from agents.llm.base import (
    ACTION_SCHEMA,
    STEP_PLAN,
    STEP_SUMMARY,
    STEP_TOOL,
    AllRoutesDown,
    InvalidModelOutput,
    ModelClient,
    ModelError,
    ModelRequest,
    ModelRequestRejected,
    ModelResponse,
)
from agents.models import (
    AgentRun,
    FailureClass,
    InvocationState,
    RunStatus,
    Step,
    StepKind,
    SwitchScope,
    ToolInvocation,
)
from agents.planner import ScriptedSupportPlanner
from agents.prompting import build_messages
from agents.services.spend import spend_reserve, spend_settle
from agents.services.switches import switches_active_for
from agents.tools import get_tool
from approvals.models import ApprovalStatus
from approvals.services import QueueFull
from audit.redaction import redact
from audit.services import Actor, audit_fields, audit_record, audit_write
from console.tracing import trace_context

logger = logging.getLogger(__name__)

MAX_MODEL_REPAIRS = 2  # re-asks after invalid model output
MAX_DATA_REPAIRS = 3  # tool errors fed back to the model before handing off
MAX_MODEL_RETRIES = 3  # retryable model errors (later, through the task) before failing
MAX_OBSERVATION_CHARS = 4000
_ACTION_VALIDATOR = jsonschema.Draft202012Validator(ACTION_SCHEMA)

# Result of run_execute besides a RunStatus value.
BUSY = "busy"  # another worker holds the lease, or the run is not runnable
RETRY_LATER = "retry_later"  # try again after a delay (tool in flight elsewhere, model retryable)
LEASE_LOST = "lease_lost"

# The agent's instructions; agents.prompting.SYSTEM_PREAMBLE (the rules on data blocks and
# on the one action per answer) comes before them in the system message.
SYSTEM_PROMPT = (
    "You are the customer-support agent of tenant {tenant}. Look up what you need with the offered "
    "tools before you act, one call at a time, and end with a final message to the customer. Your "
    "tool calls are proposals: a policy engine and human reviewers decide."
)


class LeaseLost(Exception):
    """Another worker took the run, or it was cancelled: stop without writing."""


class RetryLater(Exception):
    def __init__(self, reason: str, countdown: float = 2.0):
        super().__init__(reason)
        self.countdown = countdown


# --- model clients ----------------------------------------------------------------------

MODEL_CLIENTS: dict[str, Callable[[Any], ModelClient]] = {
    "scripted": lambda agent: ScriptedSupportPlanner(),
}


def model_client_for(agent) -> ModelClient:
    """The client for an agent: a client registered in MODEL_CLIENTS under the agent's
    first route (tests, embedders), else the routed OpenAI-compatible client when routes
    are configured for the agent (``agents.llm.router.client_for_agent``), else the
    scripted planner (the embedded default)."""
    route = list(agent.model_route or ["scripted"])
    if route[0] != "scripted" and route[0] in MODEL_CLIENTS:
        return MODEL_CLIENTS[route[0]](agent)
    scripted = getattr(agent, "_acp_scripted_client", None)
    if scripted is not None:
        # Resolved earlier in this task execution (run_execute keeps one agent object per
        # execution): no route configured, so the stateless scripted planner. Reading the
        # route configuration scans the environment; once per execution is enough.
        return scripted
    try:
        from agents.llm.router import client_for_agent

        client = client_for_agent(agent.slug)
    except ImportError:
        client = None
    except Exception as exc:  # ImproperlyConfigured: say what is wrong, fail the step
        raise ModelError(f"model routes for agent {agent.slug} are misconfigured: {exc}") from None
    if client is not None:
        return client
    client = MODEL_CLIENTS["scripted"](agent)
    if type(client) is ScriptedSupportPlanner:  # stateless: safe to reuse for this execution
        agent._acp_scripted_client = client
    return client


# --- the loop ---------------------------------------------------------------------------


def _lease_seconds() -> float:
    return float(settings.AGENT_RUN_LEASE_SECONDS)


def run_claim(*, run_pk: int, worker: str = "") -> str | None:
    """Take the run's lease if nobody holds a live one. Returns the lease token or None."""
    claimed = _claim(run_pk=run_pk, worker=worker)
    return claimed[0] if claimed else None


def _claim(*, run_pk: int, worker: str) -> tuple[str, AgentRun] | None:
    """run_claim, also returning the run as committed by the claim (with its agent and
    tenant), which is the first step's run: no second read."""
    now = timezone.now()
    token = secrets.token_hex(16)
    with transaction.atomic():
        # queued or running, lease free or expired (hand-written conditional UPDATE)
        claimed = hotsql.run_claim(
            run_pk=run_pk,
            token=token,
            worker=worker[:255],
            now=now,
            expires=now + timedelta(seconds=_lease_seconds()),
        )
        if not claimed:
            return None
        run = AgentRun.objects.select_related("agent", "tenant").get(pk=run_pk)
        audit_record(
            actor=Actor.run(run.public_id),
            action="run.started",
            tenant=run.tenant_id,
            object_type="run",
            object_id=run.public_id,
            trace_id=run.trace_id,
            payload={"worker": worker, "attempt": run.attempts, "next_step": run.next_seq},
        )
    return token, run


def run_execute(*, run_id: str, worker: str = "") -> str:
    """Step the run until it parks or ends. Safe to call twice at once: one wins the lease,
    the other returns BUSY. Returns the run's status, BUSY, RETRY_LATER or LEASE_LOST."""
    row = hotsql.run_head(run_id)  # (pk, trace_id, status, agent slug)
    if row is None:
        logger.warning("run %s does not exist; nothing to do", run_id)
        return BUSY
    if row[2] == RunStatus.QUEUED and switch_state.paused(row[3]):
        # Paused agent: a queued run stays queued, untouched (no lease, no step, no event);
        # releasing the pause enqueues it again.
        logger.info("run %s: agent %s is paused; left queued", run_id, row[3])
        return RunStatus.QUEUED
    with trace_context(row[1]):
        claimed = _claim(run_pk=row[0], worker=worker)
        if claimed is None:
            logger.info("run %s is held by another worker or not runnable", run_id)
            return BUSY
        lease, run = claimed
        # The run's agent definition and tenant do not change while it runs: read once per
        # execution; the run row itself is re-read before every step.
        agent, tenant = run.agent, run.tenant
        try:
            while True:
                if run.lease_token != lease or run.status != RunStatus.RUNNING:
                    return LEASE_LOST
                outcome = _step(run, lease)
                if outcome is not None:
                    logger.info("run %s -> %s", run_id, outcome)
                    return outcome
                run = hotsql.run_fetch(row[0])  # AgentRun.objects.get without compiling it
                if run is None:
                    return LEASE_LOST
                run.agent, run.tenant = agent, tenant
        except LeaseLost:
            logger.info("run %s: lease lost (cancelled or taken over); stopping", run_id)
            return LEASE_LOST
        except RetryLater as exc:
            logger.info("run %s: retry later (%s)", run_id, exc)
            AgentRun.objects.filter(pk=row[0], lease_token=lease).update(
                lease_token="", lease_expires_at=None, updated_at=timezone.now()
            )
            return RETRY_LATER
        except DatabaseError:
            raise  # the database is unwell: the task retries and the sweeper resumes the run
        except Exception as exc:
            # A bug, not a failure class with a recovery path: end the run for a human
            # instead of leaving it running, to be resumed into the same error for ever.
            logger.exception("run %s: unexpected error in the step loop", run_id)
            try:
                return _finish(run, lease, RunStatus.FAILED,
                               f"Internal error in the step loop ({type(exc).__name__}): {exc}"[:2000],
                               began=time.perf_counter(), failure_class=FailureClass.LOGIC,
                               handoff=True)
            except LeaseLost:
                return LEASE_LOST


def _step(run: AgentRun, lease: str) -> str | None:
    began = time.perf_counter()
    # 1. before every step: the engaged switches (cached per process, validated by the
    # switch version key; see agents.switches)
    switches, switch_version = switch_state.engaged_with_version()
    stop = _switch_stop(run, lease, switches, began)
    if stop:
        return stop
    if "parked" in run.state:  # resumed after a pause: the marker goes with the next state write
        run.state = {k: v for k, v in run.state.items() if k != "parked"}
    exhausted = _budget_exhausted(run)
    if exhausted:
        return _finish(run, lease, RunStatus.BUDGET_EXHAUSTED, exhausted, began=began, handoff=True)
    pending = run.state.get("pending")
    if pending:
        return _act(run, lease, pending, began, switches, switch_version)
    return _think(run, lease, began)


def _switch_stop(run: AgentRun, lease: str, switches, began: float) -> str | None:
    for switch in switches:
        if switch.scope == SwitchScope.GLOBAL:
            return _finish(
                run,
                lease,
                RunStatus.KILLED,
                f"Stopped by the global kill switch: {switch.reason}",
                began=began,
                handoff=True,
            )
    for switch in switches:
        if switch.scope == SwitchScope.INTENT and switch.target == run.intent:
            return _finish(
                run,
                lease,
                RunStatus.HANDED_OFF,
                f"Intent {run.intent} is routed to humans by a kill switch: {switch.reason}",
                began=began,
                handoff=True,
            )
    for switch in switches:
        if switch.scope == SwitchScope.AGENT and switch.target == run.agent.slug:
            # Pause: park as queued, lease released (no worker held). Releasing the switch
            # enqueues it again (agents.services.switches._switch_effects); the sweeper is the backstop.
            parked = {"switch": str(switch), "reason": switch.reason, "at": timezone.now().isoformat()}
            _commit(
                run,
                lease,
                began=began,
                release=True,
                status=RunStatus.QUEUED,
                run_fields={"state": dict(run.state, parked=parked)},
                step=dict(
                    kind=StepKind.CONTROL,
                    name="agent_paused",
                    output={"switch": str(switch), "reason": switch.reason},
                ),
                audits=[{"action": "run.paused", "payload": parked}],
            )
            return RunStatus.QUEUED
    return None


def _budget_exhausted(run: AgentRun) -> str | None:
    if run.steps_used >= run.max_steps:
        return f"Step budget reached ({run.steps_used} of {run.max_steps} model steps)."
    if run.tokens_used >= run.max_tokens:
        return f"Token budget reached ({run.tokens_used} of {run.max_tokens} tokens)."
    if run.cost_usd >= run.max_cost_usd:
        return f"Cost budget reached (${run.cost_usd:.6f} of ${run.max_cost_usd:.6f})."
    if run.wall_ms >= run.max_wall_seconds * 1000:
        return (
            f"Wall-clock budget reached ({run.wall_ms / 1000:.3f}s of "
            f"{run.max_wall_seconds:g}s of working time)."
        )
    return None


# --- persistence ------------------------------------------------------------------------


def _span() -> str:
    return secrets.token_hex(8)


def _commit(
    run: AgentRun,
    lease: str,
    *,
    began: float,
    step: dict[str, Any] | None = None,
    run_fields: dict[str, Any] | None = None,
    status: str | None = None,
    release: bool = False,
    audits: list[dict[str, Any]] = (),
    extra: Callable[[int | None], None] | None = None,
    invocation: tuple[Any, dict[str, Any]] | None = None,
    new_invocation: ToolInvocation | None = None,
    durable_before_return: bool = True,
) -> int | None:
    """Persist one step atomically: the run row (fenced by the lease), the step, the
    invocation's outcome (``invocation``: its pk and columns; ``new_invocation``: a pure
    read's row, inserted with its outcome), extra writes and the audit events. Raises
    LeaseLost (and writes nothing) when the lease is gone. Returns the step's id;
    ``extra`` is called with it inside the transaction.

    ``durable_before_return=False`` (the outcome of a tool call that succeeded, on
    PostgreSQL): the commit does not wait for the WAL flush. If the server crashes before
    the flush, the step is lost exactly as if the worker had died just before committing
    it -- the invocation row, committed durably as ``started`` before the tool ran, makes
    the resumed run replay the call under the same idempotency key (no second side
    effect), and the step's audit event is lost with the step (never one without the
    other). The next durable commit flushes it anyway (WAL is written in order)."""
    now = timezone.now()
    elapsed_ms = (time.perf_counter() - began) * 1000
    fields: dict[str, Any] = dict(run_fields or {})
    fields.update(wall_ms=F("wall_ms") + elapsed_ms, updated_at=now)
    if step is not None:
        fields["next_seq"] = F("next_seq") + 1
    if status is not None:
        fields["status"] = status
    if release:
        fields.update(lease_token="", lease_owner="", lease_expires_at=None)
    else:
        fields["lease_expires_at"] = now + timedelta(seconds=_lease_seconds())
    if step is not None:
        step.setdefault("started_at", now - timedelta(milliseconds=elapsed_ms))
        step.setdefault("duration_ms", elapsed_ms)
        step.setdefault("span_id", _span())
        # Redacted and bounded, encoded to JSON once (stored as that text).
        step["input"] = _bounded_json(redact(step.get("input", {})))
        step["output"] = _bounded_json(redact(step.get("output", {})))
    events = [
        audit_fields(
            actor=Actor.run(run.public_id),
            tenant=run.tenant_id,
            object_type="run",
            object_id=run.public_id,
            trace_id=run.trace_id,
            **event,
        )
        for event in audits
    ]
    written = None
    rows = dict(run_pk=run.pk, lease=lease, run_fields=fields, step=step, seq=run.next_seq,
                trace_id=run.trace_id, invocation=invocation, new_invocation=new_invocation)
    spend = extra if isinstance(extra, SpendSettle) else None
    if (extra is None or spend is not None) and connection.vendor == "postgresql":
        # The common step: run row, step, invocation outcome and audit events in ONE
        # statement (autocommitted unless the caller holds a transaction): one round trip.
        written = hotsql.step_write(
            **rows,
            audit_events=events,
            spend=(spend.spend_id, spend.delta) if spend is not None and spend.delta else None,
            # never for a caller's own transaction: SET LOCAL would reach all of it
            async_commit=not durable_before_return and not connection.in_atomic_block,
        )
        if written is not None and written[0] and spend is not None:
            spend.written = True
    if written is None:
        with transaction.atomic():
            written = hotsql.step_write(**rows)
            if written is None:  # a value the hand-written SQL does not handle: the ORM
                written = _write_orm(run, lease, fields, step, invocation, new_invocation)
            if written[0]:
                if extra is not None:
                    extra(written[1])
                for event in events:
                    audit_write(event)
    fenced, row = written
    if not fenced:
        raise LeaseLost(str(run.public_id))
    run.next_seq += 1 if step is not None else 0
    return row


def _write_orm(run, lease, fields, step, invocation, new_invocation=None) -> tuple[bool, int | None]:
    """The same writes as ``hotsql.step_write`` through the ORM (any other expression)."""
    if new_invocation is not None and ToolInvocation.objects.filter(
        run_id=run.pk, step_seq=new_invocation.step_seq
    ).exists():
        raise hotsql.StepHasInvocation(
            f"step {new_invocation.step_seq} of run {run.public_id} has an invocation"
        )
    if not AgentRun.objects.filter(pk=run.pk, lease_token=lease, status=RunStatus.RUNNING).update(**fields):
        return False, None
    if new_invocation is not None:
        new_invocation.save(force_insert=True)
    row = None
    if step is not None:
        values = {k: (json.loads(v) if isinstance(v, hotsql.Json) else v) for k, v in step.items()}
        row = Step.objects.create(run=run, seq=run.next_seq, trace_id=run.trace_id, **values).pk
    if invocation is not None:
        ToolInvocation.objects.filter(pk=invocation[0]).update(**invocation[1])
    return True, row


def _bounded(value: Any, limit: int = 16_000) -> Any:
    text = json.dumps(value, default=str)
    if len(text) <= limit:
        return value
    return {"truncated": True, "size": len(text), "preview": text[:limit]}


def _bounded_json(value: Any, limit: int = 16_000) -> hotsql.Json:
    """``_bounded`` encoded: the JSON text of the value, or of its truncation."""
    text = json.dumps(value, default=str)
    if len(text) <= limit:
        return hotsql.Json(text)
    return hotsql.json_text({"truncated": True, "size": len(text), "preview": text[:limit]})


def _observations(run: AgentRun) -> list[dict[str, Any]]:
    return list(run.state.get("observations", []))


def _handoff_summary(run: AgentRun, reason: str) -> str:
    done = [f"{o['tool']} {'ok' if o.get('ok') else 'failed'}" for o in _observations(run)]
    pending = run.state.get("pending")
    parts = [f"Request: {run.input.get('message', '')[:300]}", f"Stopped: {reason}"]
    parts.append("Done so far: " + (", ".join(done) if done else "nothing"))
    if pending:
        parts.append(f"Proposed but not executed: {pending['tool']} {json.dumps(pending['arguments'])}")
    return "\n".join(parts)


_FINISH_ACTIONS = {
    RunStatus.SUCCEEDED: "run.succeeded",
    RunStatus.FAILED: "run.failed",
    RunStatus.DENIED: "run.denied",
    RunStatus.HANDED_OFF: "run.handed_off",
    RunStatus.BUDGET_EXHAUSTED: "run.budget_exhausted",
    RunStatus.KILLED: "run.killed",
}


def _finish(
    run: AgentRun,
    lease: str,
    status: str,
    reason: str,
    *,
    began: float,
    result: dict[str, Any] | None = None,
    failure_class: str = "",
    handoff: bool = False,
    step: dict[str, Any] | None = None,
    run_fields: dict[str, Any] | None = None,
    audits: list[dict[str, Any]] = (),
    extra=None,
) -> str:
    """End the run with a reason a person can read (and a handoff summary when a human
    must take over)."""
    result = dict(result or {})
    if handoff:
        result["handoff_summary"] = _handoff_summary(run, reason)
    fields = dict(run_fields or {})
    fields.update(
        terminal_reason=reason[:4000], result=result, failure_class=failure_class, finished_at=timezone.now()
    )
    events = [
        *audits,
        {
            "action": _FINISH_ACTIONS[status],
            "payload": {
                "reason": reason[:2000],
                "failure_class": failure_class,
                "steps": run.steps_used,
                "tokens": run.tokens_used,
                "cost_usd": str(run.cost_usd),
            },
        },
    ]
    if step is None:
        step = dict(
            kind=StepKind.CONTROL,
            name=status,
            ok=status == RunStatus.SUCCEEDED,
            failure_class=failure_class,
            output={"reason": reason},
        )
    # handed-off runs get a Handoff row in this commit
    extra = approval_subject.handoff_extra(
        extra, run=run, status=status, reason=reason, result=result, handoff=handoff
    )
    _commit(
        run,
        lease,
        began=began,
        step=step,
        run_fields=fields,
        status=status,
        release=True,
        audits=events,
        extra=extra,
    )
    return status


# --- 2. think: ask the model ------------------------------------------------------------


def _messages(run: AgentRun) -> list[dict[str, Any]]:
    """The conversation of the next model step: our instructions, the request as data, and
    each earlier tool call (refused ones included) with its result (docs/models.md)."""
    return build_messages(
        instructions=SYSTEM_PROMPT.format(tenant=run.tenant.slug),
        user_message=run.input.get("message", ""),
        observations=_observations(run),
    )


def _action_problems(action: Any) -> list[str]:
    return [err.message for err in _ACTION_VALIDATOR.iter_errors(action)][:5]


def _reserve_estimate() -> Decimal:
    return Decimal(str(settings.AGENT_MODEL_CALL_RESERVE_USD))


def _think(run: AgentRun, lease: str, began: float) -> str | None:
    closing = run.state.get(CLOSING)
    if closing and int(closing.get("turns", 0)) >= CLOSING_TURNS:
        return _finish_closing(run, lease, closing, began=began, note="closing turn over")
    agent = run.agent
    tools = [t.spec() for name in agent.allowed_tools if (t := get_tool(name, run.tenant_id))]
    estimate = _reserve_estimate()
    reserved, spend = spend_reserve(tenant_id=run.tenant_id, amount=estimate)
    if not reserved:
        return _finish(
            run,
            lease,
            RunStatus.BUDGET_EXHAUSTED,
            f"Tenant {run.tenant.slug}'s daily model spend cap (${spend.cap_usd}) is reached.",
            began=began,
            handoff=True,
        )
    request = ModelRequest(
        messages=_messages(run),
        tools=tools,
        trace_id=run.trace_id,
        step_kind=STEP_TOOL if _observations(run) else STEP_PLAN,
        state={
            "message": run.input.get("message", ""),
            "tenant": run.tenant.slug,
            "intent": run.intent,
            "observations": _observations(run),
            "step": run.next_seq,
        },
    )
    calls: list[ModelResponse] = []
    problems: list[str] = []
    try:
        client = model_client_for(agent)
        for attempt in range(MAX_MODEL_REPAIRS + 1):
            response = client.complete(request)
            calls.append(response)
            problems = _action_problems(response.action)
            if not problems:
                break
            if attempt < MAX_MODEL_REPAIRS:
                request.messages = [
                    *request.messages,
                    {"role": "assistant", "content": response.raw or json.dumps(response.action)},
                    {
                        "role": "user",
                        "content": "Your answer was not valid: "
                        + "; ".join(problems)
                        + ". Answer again with one JSON object "
                        "matching the action schema.",
                    },
                ]
        else:
            raise InvalidModelOutput(
                f"model output invalid after {MAX_MODEL_REPAIRS} repairs: " + "; ".join(problems)
            )
    except ModelError as exc:
        cost = sum((Decimal(str(c.cost_usd)) for c in calls), Decimal(0))
        spend_settle(spend_id=spend.pk, reserved=estimate, actual=cost)
        return _model_failed(run, lease, exc, calls, began)
    cost = sum((Decimal(str(c.cost_usd)) for c in calls), Decimal(0))
    # Written in the step's own transaction (no commit of its own). Every path of
    # _thought commits through it; when that transaction raises instead (lease lost, a
    # database error), it rolled back with the step and is settled on its own.
    settle = SpendSettle(spend_id=spend.pk, reserved=estimate, actual=cost)
    try:
        outcome = _thought(run, lease, began, request, calls, cost, settle)
    except BaseException:
        spend_settle(spend_id=spend.pk, reserved=estimate, actual=cost)
        raise
    if not settle.written:
        spend_settle(spend_id=spend.pk, reserved=estimate, actual=cost)
    return outcome


class SpendSettle:
    """A model step's spend settlement, written in the step's transaction: as an
    ``extra`` hook (any backend), or -- when it is the only extra -- as one more part of
    the step's single statement on PostgreSQL (``hotsql.step_write``)."""

    def __init__(self, *, spend_id: int, reserved: Decimal, actual: Decimal):
        self.spend_id, self.delta = spend_id, actual - reserved
        self.reserved, self.actual = reserved, actual
        self.written = False

    def __call__(self, step_row=None) -> None:
        spend_settle(spend_id=self.spend_id, reserved=self.reserved, actual=self.actual)
        self.written = True


def _thought(run, lease, began, request, calls, cost, settle) -> str | None:
    """Persist a model step (``settle`` writes the spend settlement in its transaction)."""
    response = calls[-1]
    action = response.action
    usage = _usage(calls)
    step = _model_step(request, calls, action)
    run_fields = {
        "steps_used": F("steps_used") + 1,
        "tokens_used": F("tokens_used") + usage["tokens"],
        "cost_usd": F("cost_usd") + cost,
    }
    audit = {
        "action": "model.called",
        "payload": {
            "model": response.model,
            "route": response.route,
            "tokens": usage["tokens"],
            "repairs": len(calls) - 1,
            "action": action.get("type"),
            "tool": action.get("tool", ""),
            "prompt_hash": response.prompt_hash,
        },
    }
    run.steps_used += 1
    run.tokens_used += usage["tokens"]
    run.cost_usd += cost
    closing = run.state.get(CLOSING)
    if closing and action["type"] in ("final", "handoff"):
        # the closing turn ends with the decision that opened it, whatever the model says
        return _finish_closing(
            run,
            lease,
            closing,
            began=began,
            result={k: action[k] for k in ("message", "summary", "reason") if action.get(k)},
            step=step,
            run_fields=run_fields,
            audits=[audit],
            extra=settle,
        )
    if action["type"] == "final":
        return _finish(
            run,
            lease,
            RunStatus.SUCCEEDED,
            f"Completed: {action.get('summary') or action['message']}"[:2000],
            began=began,
            result={"message": action["message"], "summary": action.get("summary", "")},
            step=step,
            run_fields=run_fields,
            audits=[audit],
            extra=settle,
        )
    if action["type"] == "handoff":
        reason = f"The agent handed off: {action['reason']}"
        return _finish(
            run,
            lease,
            RunStatus.HANDED_OFF,
            reason,
            began=began,
            handoff=True,
            result={"summary": action.get("summary", "")},
            step=step,
            run_fields=run_fields,
            audits=[audit],
            extra=settle,
        )
    state = dict(run.state)
    state["pending"] = pending_action(run, action)
    if closing:
        state[CLOSING] = {**closing, "turns": int(closing.get("turns", 0)) + 1}
    run_fields["state"] = state
    _commit(run, lease, began=began, step=step, run_fields=run_fields, audits=[audit], extra=settle)
    return None


# --- the closing turn: after a rejection or a denial ------------------------------------
# A reviewer's rejection or the policy's denial of a proposed call is an observation the
# model sees: it gets a few more steps to wrap up (say so to the customer in a draft that
# promises nothing), where only read and write_low tools that the policy allows run. The
# run then ends with the status and reason of the decision, whatever the model returns.
CLOSING = "closing"
CLOSING_TURNS = 3
CLOSING_TIERS = ("read", "write_low")


def _close(run, lease, pending, *, status, reason, began, failure_class, handoff, decision,
           step, audits=(), extra=None) -> None:
    """Record the rejected or denied call and hand the model its closing turn."""
    state = _observe(
        run, pending, ok=False, decision=decision,
        error={"code": "rejected" if decision == "rejected" else "denied", "message": reason},
    )
    state[CLOSING] = {"status": status, "reason": reason, "failure_class": failure_class,
                      "handoff": handoff, "turns": 0}
    _commit(run, lease, began=began, step=step, run_fields={"state": state}, audits=audits, extra=extra)
    run.state = state
    return None


def _finish_closing(run, lease, closing, *, began, note: str = "", **kwargs) -> str:
    reason = closing["reason"] + (f" ({note})" if note else "")
    return _finish(run, lease, closing["status"], reason, began=began,
                   failure_class=closing.get("failure_class", ""), handoff=bool(closing.get("handoff")),
                   **kwargs)


# On a pending action: no invocation row exists for its step yet. Set when the model's
# action is planned; ``_park`` drops it when it records the step's invocation (other paths
# that record one end the step). A pure read with it skips the durable ``started`` row: its
# invocation is inserted with its outcome, in the step's statement (broker.invocation_start).
UNRECORDED = "unrecorded"


def pending_action(run: AgentRun, action: dict[str, Any]) -> dict[str, Any]:
    """The tool call the model proposed, as the run's state holds it until the step ends."""
    return {
        "seq": run.next_seq,
        "tool": action["tool"],
        "arguments": action["arguments"],
        "rationale": action.get("rationale", ""),
        UNRECORDED: True,
    }


def _usage(calls: list[ModelResponse]) -> dict[str, int]:
    return {
        "prompt": sum(c.prompt_tokens for c in calls),
        "completion": sum(c.completion_tokens for c in calls),
        "tokens": sum(c.total_tokens for c in calls),
    }


def _model_step(
    request: ModelRequest, calls: list[ModelResponse], action: Any, failure_class: str = ""
) -> dict[str, Any]:
    usage = _usage(calls)
    last = calls[-1] if calls else None
    prompt_hash = (
        last.prompt_hash
        if last and last.prompt_hash
        else hashlib.sha256(json.dumps(request.messages, sort_keys=True, default=str).encode()).hexdigest()
    )
    return dict(
        kind=StepKind.MODEL,
        name=request.step_kind,
        ok=not failure_class,
        failure_class=failure_class,
        input={
            "messages": [
                {**m, "content": m["content"][:2000]} if isinstance(m.get("content"), str) else m
                for m in request.messages
            ],
            "tools": [t.name for t in request.tools],
        },
        output={
            "action": action,
            "raw": (last.raw[:4000] if last else ""),
            "repairs": max(0, len(calls) - 1),
            "latency_ms": [round(c.latency_ms, 3) for c in calls],
            # what the client did to the answer (e.g. the first of several tool calls taken)
            **({"notes": last.notes} if last and last.notes else {}),
        },
        prompt_tokens=usage["prompt"],
        completion_tokens=usage["completion"],
        cost_usd=sum((Decimal(str(c.cost_usd)) for c in calls), Decimal(0)),
        model=(last.model if last else ""),
        prompt_hash=prompt_hash,
    )


def _model_failed(
    run: AgentRun, lease: str, exc: ModelError, calls: list[ModelResponse], began: float
) -> str:
    retries = int(run.state.get("model_retries", 0))
    request = ModelRequest(messages=_messages(run))
    failure = {"error": str(exc), **({"routes": exc.reasons} if exc.reasons else {})}
    step = _model_step(request, calls, failure, failure_class=FailureClass.MODEL)
    usage = _usage(calls)
    cost = step["cost_usd"]
    run_fields = {
        "steps_used": F("steps_used") + 1,
        "tokens_used": F("tokens_used") + usage["tokens"],
        "cost_usd": F("cost_usd") + cost,
    }
    if exc.retryable and retries < MAX_MODEL_RETRIES:
        state = dict(run.state, model_retries=retries + 1)
        _commit(
            run,
            lease,
            began=began,
            step=step,
            run_fields={**run_fields, "state": state},
            audits=[
                {
                    "action": "model.called",
                    "payload": {"error": str(exc)[:500], "retryable": True, "retry": retries + 1},
                }
            ],
        )
        raise RetryLater(f"model error, retry {retries + 1}: {exc}", countdown=2**retries)
    if isinstance(exc, AllRoutesDown):
        # Every model route is down or its breaker is open: a person takes over, with
        # the per-route reasons in the terminal reason and the handoff summary.
        status = RunStatus.HANDED_OFF
    elif isinstance(exc, InvalidModelOutput | ModelRequestRejected) or not exc.retryable:
        # The model's failure, not an outage: output still invalid after the repairs, or a
        # server that refuses the request (HTTP 400, its message in the reason).
        status = RunStatus.FAILED
    else:
        status = RunStatus.HANDED_OFF
    return _finish(
        run,
        lease,
        status,
        f"Model failure: {exc}",
        began=began,
        failure_class=FailureClass.MODEL,
        handoff=True,
        step=step,
        run_fields=run_fields,
    )


# --- 3-5. act: validate, decide, execute ------------------------------------------------


def _facts(run: AgentRun, arguments: dict[str, Any]) -> dict[str, Any]:
    """Facts for policy rules, from the database (never from the model): what the fact
    providers the toolkits registered say (the support toolkit's ``customer_scope``)."""
    return policy.action_facts(tenant_id=run.tenant_id, arguments=arguments)


def _observe(
    run: AgentRun, pending: dict[str, Any], *, ok: bool, result=None, error=None, decision: str = ""
) -> dict[str, Any]:
    state = dict(run.state)
    obs = {
        "seq": pending["seq"],
        "tool": pending["tool"],
        "arguments": pending["arguments"],
        "ok": ok,
        "decision": decision,
    }
    if ok:
        obs["result"] = _bounded(result, MAX_OBSERVATION_CHARS)
    else:
        obs["error"] = error
    state["observations"] = [*state.get("observations", []), obs]
    state.pop("pending", None)
    return state


def _act(
    run: AgentRun,
    lease: str,
    pending: dict[str, Any],
    began: float,
    step_switches: list | None = None,
    switch_version: str | None = None,
) -> str | None:
    name, arguments = pending["tool"], pending["arguments"]
    tool = get_tool(name, run.tenant_id)  # code first; else the tenant's own or a global data tool
    problems: list[str] = []
    if tool is None or name not in run.agent.allowed_tools:
        allowed = ", ".join(run.agent.allowed_tools)
        problems = [f"tool {name!r} is not available to this agent; use one of: {allowed}"]
    elif not isinstance(arguments, dict):
        problems = ["arguments must be a JSON object"]
    else:
        problems = tool.validate(arguments)
    if problems:
        return _repair(
            run,
            lease,
            pending,
            began,
            {
                "code": "invalid_arguments",
                "class": FailureClass.DATA,
                "message": f"{name}: " + "; ".join(problems),
            },
        )
    closing = run.state.get(CLOSING)
    if closing and tool.tier not in CLOSING_TIERS:
        return _finish_closing(run, lease, closing, began=began,
                               note=f"{name} not run in the closing turn")

    # The switches read at the start of this step, matched for this tool and tier.
    switches = [
        s
        for s in (step_switches if step_switches is not None else switch_state.engaged())
        if s.scope == SwitchScope.GLOBAL
        or (s.scope, s.target)
        in {(SwitchScope.TOOL, name), (SwitchScope.APPROVAL, name), (SwitchScope.APPROVAL, tool.tier)}
    ]
    blocking = [s for s in switches if s.scope in (SwitchScope.TOOL, SwitchScope.GLOBAL)]
    forced = tuple(s.reason or str(s) for s in switches if s.scope == SwitchScope.APPROVAL)
    if tool.forced_approval:  # an imported tool no admin has reviewed yet: fail closed
        forced = (*forced, tool.forced_approval)
    ctx = policy.ActionContext(
        tool=name,
        tier=tool.tier,
        arguments=arguments,
        tenant=run.tenant.slug,
        intent=run.intent,
        facts=_facts(run, arguments),
        forced_approval=forced,
    )
    decision = policy.decide(ctx, switch_version=switch_version)
    if (
        tool.precheck is not None
        and not blocking
        and decision.effect != policy.DENY
        and not ToolInvocation.objects.filter(run=run, step_seq=pending["seq"]).exists()
    ):
        # The tool's own invariants, after the policy's deny and before approval or the
        # call: a proposal the tool would refuse never reaches a reviewer (and the tool
        # checks again when it runs). The model sees the refusal and may correct itself.
        refusals = tool.precheck(run.tenant_id, arguments)
        if refusals:
            code, message = refusals[0]
            return _repair(
                run,
                lease,
                pending,
                began,
                {"code": code, "class": FailureClass.DATA, "message": f"{name} refused: {message}"},
            )
    if not blocking and decision.effect == policy.ALLOW:
        # Fast path, the common case: a fresh step's invocation is inserted already started
        # under this lease (one committed statement: key and proposal durable before the
        # tool runs) -- or, for a pure read on a step with no invocation yet, inserted with
        # its outcome by the step's own statement. A conflict means the step has an
        # invocation already (resume, redelivery, approval): the general path below looks
        # it up.
        started = broker.invocation_start(
            run=run,
            step_seq=pending["seq"],
            tool=tool,
            arguments=arguments,
            lease_token=lease,
            decision=decision.effect,
            decision_reason=decision.reason,
            policy_version=decision.policy_version,
            defer=pending.get(UNRECORDED) is True and broker.pure_read(tool),
        )
        if started is not None:
            try:
                return _execute(run, lease, pending, tool, started, decision, began, started=True)
            except hotsql.StepHasInvocation:
                # Recorded by an earlier attempt after all (nothing of this one was
                # written; the read's result is dropped): the general path decides.
                pending = {k: v for k, v in pending.items() if k != UNRECORDED}
                run.state = {**run.state, "pending": pending}

    invocation = ToolInvocation.objects.filter(run=run, step_seq=pending["seq"]).first()
    if invocation is not None and (
        invocation.state
        in (InvocationState.AWAITING_APPROVAL, InvocationState.APPROVED, InvocationState.REJECTED)
        or approval_subject.call_requests(run, invocation).exists()
    ):
        return _resume_after_approval(run, lease, pending, tool, invocation, began)
    if blocking:
        return _refused(run, lease, pending, tool, decision, blocking[0], began)
    if decision.effect == policy.DENY:
        return _denied(run, lease, pending, tool, decision, began)
    if decision.effect == policy.REQUIRE_APPROVAL:
        if closing:
            return _finish_closing(run, lease, closing, began=began,
                                   note=f"{name} would need an approval in the closing turn")
        return _park(run, lease, pending, tool, decision, began, invocation)
    invocation = invocation or _propose(run, pending, tool, decision, arguments=arguments)
    return _execute(run, lease, pending, tool, invocation, decision, began)


def _repair(
    run: AgentRun,
    lease: str,
    pending: dict[str, Any],
    began: float,
    error: dict[str, Any],
    step: dict[str, Any] | None = None,
    extra=None,
    audits: list[dict[str, Any]] = (),
) -> str | None:
    """A data-class failure goes back to the model as an observation (bounded)."""
    repairs = int(run.state.get("data_repairs", 0)) + 1
    step = step or dict(
        kind=StepKind.TOOL,
        name=pending["tool"],
        ok=False,
        failure_class=FailureClass.DATA,
        input={"arguments": pending["arguments"]},
        output={"error": error},
    )
    if repairs > MAX_DATA_REPAIRS:
        return _finish(
            run,
            lease,
            RunStatus.HANDED_OFF,
            f"Gave up after {MAX_DATA_REPAIRS} invalid tool calls; last: {error['message']}",
            began=began,
            failure_class=FailureClass.DATA,
            handoff=True,
            step=step,
            extra=extra,
            audits=audits,
        )
    state = _observe(run, pending, ok=False, error=error)
    state["data_repairs"] = repairs
    _commit(
        run,
        lease,
        began=began,
        step=step,
        run_fields={"state": state},
        extra=extra,
        audits=audits or [{"action": "tool.failed", "payload": {"tool": pending["tool"], "error": error}}],
    )
    return None


def _version_of(tool) -> dict[str, Any]:
    """The stored version of a data tool (integrations) that this step resolved, for its
    trace and its audit events; nothing for a tool in code."""
    return {} if tool.version is None else {"tool_version": tool.version}


def _policy_step(
    pending, tool, decision, *, ok: bool, output: dict[str, Any], invocation=None, failure_class: str = ""
) -> dict[str, Any]:
    return dict(
        kind=StepKind.TOOL,
        name=tool.name,
        ok=ok,
        failure_class=failure_class,
        input={"arguments": pending["arguments"], "tier": tool.tier, **_version_of(tool)},
        output=output,
        policy_decision=decision.effect,
        policy_version=decision.policy_version,
        policy_rule=decision.rule_id[:64],
        invocation=invocation,
    )


def _policy_audit(pending, decision) -> dict[str, Any]:
    return {
        "action": "policy.decided",
        "policy_version": decision.policy_version,
        "payload": {"tool": pending["tool"], "arguments": pending["arguments"], **decision.as_dict()},
    }


def _propose(run, pending, tool, decision, *, arguments=None, state=InvocationState.PROPOSED):
    """Record the proposed call of this step with the policy decision it got (idempotent:
    the same step and arguments find the existing invocation)."""
    return broker.invocation_propose(
        run=run,
        step_seq=pending["seq"],
        tool=tool,
        arguments=pending["arguments"] if arguments is None else arguments,
        decision=decision.effect,
        decision_reason=decision.reason,
        policy_version=decision.policy_version,
        state=state,
    )


def _denied(run, lease, pending, tool, decision, began) -> str:
    invocation = _propose(run, pending, tool, decision, state=InvocationState.DENIED)
    step = _policy_step(
        pending,
        tool,
        decision,
        ok=False,
        failure_class=FailureClass.POLICY,
        output={"decision": decision.as_dict()},
        invocation=invocation,
    )
    reason = f"Policy v{decision.policy_version} denied {tool.name}: {decision.reason}"
    reviewed = invocation.state in (InvocationState.AWAITING_APPROVAL, InvocationState.APPROVED)
    # a call a reviewer let through, denied by the policy now: the row says denied too
    extra = None
    if reviewed:
        extra = lambda step_row: broker.invocation_denied_after_approval(invocation, decision)  # noqa: E731
    if run.state.get(CLOSING):
        return _finish_closing(run, lease, run.state[CLOSING], began=began, step=step,
                               note=f"{tool.name} denied in the closing turn",
                               audits=[_policy_audit(pending, decision)], extra=extra)
    return _close(
        run,
        lease,
        pending,
        status=RunStatus.DENIED,
        reason=reason,
        began=began,
        failure_class=FailureClass.POLICY,
        handoff=True,
        decision=decision.effect,
        step=step,
        audits=[_policy_audit(pending, decision)],
        extra=extra,
    )


def _refused(run, lease, pending, tool, decision, switch, began) -> str:
    invocation = _propose(run, pending, tool, decision, state=InvocationState.REFUSED)
    reason = f"{tool.name} refused: kill switch {switch} is engaged ({switch.reason})"
    step = _policy_step(
        pending,
        tool,
        decision,
        ok=False,
        failure_class=FailureClass.POLICY,
        output={"refused": reason},
        invocation=invocation,
    )
    return _finish(
        run,
        lease,
        RunStatus.KILLED,
        reason,
        began=began,
        failure_class=FailureClass.POLICY,
        handoff=True,
        step=step,
        audits=[
            {
                "action": "tool.refused",
                "payload": {"tool": tool.name, "switch": str(switch), "reason": switch.reason},
            }
        ],
    )


def _park(run, lease, pending, tool, decision, began, invocation) -> str:
    """require_approval: create the request a reviewer needs and release the worker."""
    invocation = invocation or _propose(run, pending, tool, decision, state=InvocationState.AWAITING_APPROVAL)
    created: dict[str, Any] = {}

    def create_request(step_row):
        broker.invocation_await_approval(invocation, decision)
        created["request"] = approval_subject.request_approval(
            run=run,
            invocation=invocation,
            decision=decision,
            summary=pending.get("rationale", ""),
            evidence=[
                {
                    "tool": o["tool"],
                    "arguments": o.get("arguments"),
                    "result": o.get("result"),
                    "step": o.get("seq"),
                }
                for o in _observations(run)
                if o.get("ok")
            ],
        )

    step = _policy_step(
        pending, tool, decision, ok=True, output={"decision": decision.as_dict()}, invocation=invocation
    )
    # the step has its invocation now: a resumed run must look it up
    parked = {**run.state, "pending": {k: v for k, v in pending.items() if k != UNRECORDED}}
    try:
        _commit(
            run,
            lease,
            began=began,
            step=step,
            run_fields={"state": parked},
            status=RunStatus.WAITING_APPROVAL,
            release=True,
            extra=create_request,
            audits=[
                _policy_audit(pending, decision),
                {
                    "action": "run.parked",
                    "payload": {
                        "tool": tool.name,
                        "queue": decision.queue,
                        "approvals_required": decision.approvals_required,
                    },
                },
            ],
        )
    except QueueFull as exc:
        return _finish(
            run,
            lease,
            RunStatus.HANDED_OFF,
            str(exc),
            began=time.perf_counter(),
            failure_class=FailureClass.POLICY,
            handoff=True,
        )
    return RunStatus.WAITING_APPROVAL


def _resume_after_approval(run, lease, pending, tool, invocation, began) -> str | None:
    request = approval_subject.call_requests(run, invocation).order_by("-created_at").first()
    if request is None or request.status == ApprovalStatus.PENDING:
        # Resumed while still pending (a stray message): park again without a new request.
        _commit(run, lease, began=began, status=RunStatus.WAITING_APPROVAL, release=True)
        return RunStatus.WAITING_APPROVAL
    who = ", ".join(d.reviewer.username for d in request.decisions.select_related("reviewer"))
    decided = dict(
        kind=StepKind.APPROVAL,
        name=tool.name,
        ok=request.status == ApprovalStatus.APPROVED,
        input={"request_id": str(request.id), "queue": request.queue.slug},
        output={
            "status": request.status,
            "decided_by": who,
            "edited": request.edited,
            "reason": request.decision_reason,
            "decided_at": request.decided_at.isoformat() if request.decided_at else None,
        },
        invocation=invocation,
    )
    if request.status == ApprovalStatus.REJECTED:
        reason = f"{tool.name} rejected by {who}: {request.decision_reason}"
        return _close(
            run,
            lease,
            pending,
            status=RunStatus.DENIED,
            reason=reason,
            began=began,
            failure_class=FailureClass.POLICY,
            handoff=False,
            decision="rejected",
            step=decided,
            extra=lambda step_row: broker.invocation_decided(invocation, outcome=request.status),
        )
    if request.status != ApprovalStatus.APPROVED:
        return _finish(
            run,
            lease,
            RunStatus.HANDED_OFF,
            f"Approval request {request.status}; failing closed: a person must handle it.",
            began=began,
            handoff=True,
            step=decided,
            extra=lambda step_row: broker.invocation_decided(invocation, outcome=request.status),
        )
    arguments = request.approved_arguments or request.arguments
    # Fail closed if the active policy now denies the (possibly edited) action.
    ctx = policy.ActionContext(
        tool=tool.name,
        tier=tool.tier,
        arguments=arguments,
        tenant=run.tenant.slug,
        intent=run.intent,
        facts=_facts(run, arguments),
    )
    decision = policy.decide(ctx)
    if decision.effect == policy.DENY:
        return _denied(run, lease, {**pending, "arguments": arguments}, tool, decision, began)
    if not run.state.get("approval_recorded") == str(request.id):
        # the approval step and the call's move to approved: one transaction
        state = dict(run.state, approval_recorded=str(request.id))
        _commit(run, lease, began=began, step=decided, run_fields={"state": state},
                extra=lambda step_row: broker.invocation_decided(invocation, outcome="approved"))
        run.state = state
        began = time.perf_counter()
    return _execute(
        run,
        lease,
        {**pending, "arguments": arguments},
        tool,
        invocation,
        decision,
        began,
        arguments=arguments,
    )


def _execute(
    run, lease, pending, tool, invocation, decision, began, arguments=None, started: bool = False
) -> str | None:
    def recheck() -> str | None:
        # Again immediately before the tool runs: a switch flipped since the step began wins.
        # Write tools read the authority and fail closed when the switch store is unreachable.
        return switch_state.tool_gate(
            tool=tool.name,
            writes=tool.side_effects or tool.tier != "read",
            reader=lambda: switches_active_for(tool=tool.name, agent=run.agent.slug, intent=run.intent),
        )

    try:
        outcome = broker.broker_execute(
            run=run,
            invocation=invocation,
            tool=tool,
            lease_token=lease,
            arguments=arguments,
            check_switches=recheck,
            already_started=started,
        )
    except broker.InFlight as exc:
        raise RetryLater(str(exc), countdown=tool.timeout_seconds) from None
    except (broker.IdempotencyConflict, broker.OutcomeUnknown) as exc:
        status = RunStatus.FAILED if isinstance(exc, broker.IdempotencyConflict) else RunStatus.HANDED_OFF
        return _finish(
            run,
            lease,
            status,
            f"{tool.name}: {exc}",
            began=began,
            failure_class=exc.failure_class,
            handoff=True,
        )

    finish = broker.invocation_finish_fields(outcome)
    inv_pk = outcome.invocation.pk
    # a pure read's invocation not inserted yet (broker.invocation_start(defer=True)): it
    # is inserted with its outcome, in the step's transaction
    unrecorded = outcome.invocation if outcome.invocation._state.adding else None
    if unrecorded is not None:
        hotsql.invocation_finish(unrecorded, finish)

    def record(step_row):
        if unrecorded is not None:
            hotsql.invocation_record(unrecorded)
        else:
            broker.invocation_outcome_save(inv_pk, finish)

    step = _policy_step(
        pending,
        tool,
        decision,
        ok=outcome.ok,
        failure_class=outcome.failure_class,
        invocation=outcome.invocation,
        output={"result": outcome.result} if outcome.ok else {"error": outcome.error},
    )
    step["output"].update(
        attempts=outcome.attempts,
        replayed=outcome.replayed,
        result_size=outcome.result_size,
        latency_ms=round(outcome.latency_ms, 3),
        retries=outcome.retries,
        idempotency_key=outcome.invocation.idempotency_key,
    )
    span = {
        "tool": tool.name,
        **_version_of(tool),
        "arguments": pending["arguments"],
        "ok": outcome.ok,
        "attempts": outcome.attempts,
        "latency_ms": round(outcome.latency_ms, 3),
        "result_size": outcome.result_size,
        "decision": decision.effect,
        "idempotency_key": outcome.invocation.idempotency_key,
    }
    if outcome.ok:
        action = "tool.replayed" if outcome.replayed else "tool.executed"
        audits = [{"action": action, "policy_version": decision.policy_version, "payload": span}]
        state = _observe(run, pending, ok=True, result=outcome.result, decision=decision.effect)
        try:
            _commit(
                run,
                lease,
                began=began,
                step=step,
                run_fields={"state": state},
                invocation=None if unrecorded is not None else (inv_pk, finish),
                new_invocation=unrecorded,
                audits=audits,
                durable_before_return=False,  # see _commit: recovery replays the call
            )
        except LeaseLost:
            # The side effect happened: record it on the invocation even though the run
            # moved on (a pure read's unrecorded call changed nothing: nothing to record).
            if unrecorded is None:
                broker.invocation_outcome_save(inv_pk, finish, holder=lease)
            raise
        return None
    error = outcome.error or {}
    audits = [
        {
            "action": "tool.refused" if outcome.refused else "tool.failed",
            "policy_version": decision.policy_version,
            "payload": {**span, "error": error},
        }
    ]
    if outcome.failure_class == FailureClass.DATA:
        return _repair(run, lease, pending, began, error, step=step, extra=record, audits=audits)
    message = error.get("message")
    if outcome.failure_class == FailureClass.POLICY:
        status, reason = RunStatus.KILLED, f"{tool.name} refused: {message}"
    elif outcome.failure_class == FailureClass.LOGIC:
        status, reason = RunStatus.FAILED, f"{tool.name} failed: {message}"
    else:  # tool / network: the broker already retried within bounds; a human takes over.
        status = RunStatus.HANDED_OFF
        reason = (f"{tool.name} failed after {outcome.attempts} attempt(s) "
                  f"({outcome.failure_class}): {message}")
    return _finish(
        run,
        lease,
        status,
        reason,
        began=began,
        failure_class=outcome.failure_class,
        handoff=True,
        step=step,
        extra=record,
        audits=audits,
    )

__all__ = [
    "BUSY",
    "LEASE_LOST",
    "MODEL_CLIENTS",
    "RETRY_LATER",
    "STEP_SUMMARY",
    "model_client_for",
    "run_claim",
    "run_execute",
]
