"""Reads of the runtime for the API and the console (no N+1 queries)."""

from __future__ import annotations

from typing import Any

from agents.approval_subject import requests_of
from agents.models import AgentRun, RunStatus, Step
from approvals.models import ApprovalStatus


def run_summary(run: AgentRun) -> dict[str, Any]:
    """The public shape of a run (GET /api/v1/runs/{id})."""
    pending = None
    if run.status == RunStatus.WAITING_APPROVAL:
        request = (
            requests_of(run)
            .filter(status=ApprovalStatus.PENDING)
            .select_related("queue")
            .order_by("-created_at")
            .first()
        )
        if request is not None:
            pending = {
                "id": str(request.id),
                "queue": request.queue.slug,
                "tool": request.tool,
                "arguments": request.arguments,
                "approvals_required": request.approvals_required,
                "due_at": request.due_at.isoformat(),
            }
    return {
        "id": str(run.public_id),
        "status": run.status,
        "agent": run.agent.slug,
        "agent_version": run.agent.version,
        "tenant": run.tenant.slug,
        "intent": run.intent,
        "input": run.input,
        "requester": run.requester_label,
        "on_behalf_of": run.on_behalf_of_label or None,
        "trace_id": run.trace_id,
        "policy_version": run.policy_version,
        "terminal_reason": run.terminal_reason or None,
        "failure_class": run.failure_class or None,
        "result": run.result,
        "pending_approval": pending,
        "budgets": {
            "max_steps": run.max_steps,
            "max_tokens": run.max_tokens,
            "max_wall_seconds": run.max_wall_seconds,
            "max_cost_usd": str(run.max_cost_usd),
        },
        "usage": {
            "steps": run.steps_used,
            "tokens": run.tokens_used,
            "cost_usd": str(run.cost_usd),
            "wall_seconds": round(run.wall_ms / 1000, 3),
        },
        "created_at": run.created_at.isoformat(),
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


def run_trace(run: AgentRun, *, include_io: bool = True) -> dict[str, Any]:
    """The ordered steps of a run with span ids, timings, tokens and policy decisions."""
    steps = []
    for step in Step.objects.filter(run=run).select_related("invocation").order_by("seq"):
        item: dict[str, Any] = {
            "seq": step.seq,
            "kind": step.kind,
            "name": step.name,
            "span_id": step.span_id,
            "parent_span_id": step.parent_span_id or None,
            "trace_id": step.trace_id,
            "started_at": step.started_at.isoformat(),
            "duration_ms": round(step.duration_ms, 3),
            "ok": step.ok,
            "failure_class": step.failure_class or None,
            "tokens": {"prompt": step.prompt_tokens, "completion": step.completion_tokens},
            "cost_usd": str(step.cost_usd),
            "model": step.model or None,
            "prompt_hash": step.prompt_hash or None,
            "policy": (
                {"decision": step.policy_decision, "version": step.policy_version, "rule": step.policy_rule}
                if step.policy_decision
                else None
            ),
            "invocation": (
                {
                    "id": str(step.invocation.id),
                    "tool": step.invocation.tool,
                    "state": step.invocation.state,
                    "idempotency_key": step.invocation.idempotency_key,
                    "attempts": step.invocation.attempts,
                }
                if step.invocation
                else None
            ),
        }
        if include_io:
            item["input"], item["output"] = step.input, step.output
        steps.append(item)
    return {"run_id": str(run.public_id), "trace_id": run.trace_id, "status": run.status, "steps": steps}
