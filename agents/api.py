"""Runs over the API: start (with Idempotency-Key), read, trace, cancel."""

from __future__ import annotations

import json

from django.http import HttpRequest
from ninja import Header, Router
from ninja.responses import Status

from agents.access import run_for_canceller, run_for_viewer
from agents.schemas import RunCancelIn, RunOut, RunStartIn, TraceOut
from agents.selectors import run_summary, run_trace
from agents.services.runs import run_cancel, run_start
from console.errors import InvalidInput

router = Router(tags=["runs"])


@router.post(
    "",
    response={200: RunOut, 201: RunOut},
    summary="Start a run (same Idempotency-Key and body: the same run; another body: 409)",
)
def start_run(
    request: HttpRequest,
    payload: RunStartIn,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key"),
):
    budgets = payload.budgets.dict(exclude_none=True) if payload.budgets else None
    run, created = run_start(
        actor=request.auth,
        tenant=payload.tenant,
        agent=payload.agent,
        message=payload.input.message,
        intent=payload.intent,
        idempotency_key=idempotency_key,
        on_behalf_of=payload.on_behalf_of,
        budgets=budgets,
    )
    run = run_for_viewer(user=request.auth, public_id=str(run.public_id))
    return Status(201 if created else 200, run_summary(run))


@router.get("/{run_id}", response=RunOut, summary="Status, terminal reason, usage, result")
def get_run(request: HttpRequest, run_id: str):
    return run_summary(run_for_viewer(user=request.auth, public_id=run_id))


@router.get(
    "/{run_id}/trace",
    response=TraceOut,
    summary="Ordered steps with span ids, timings, tokens, policy decisions",
)
def get_trace(request: HttpRequest, run_id: str, include_io: bool = True):
    return run_trace(run_for_viewer(user=request.auth, public_id=run_id), include_io=include_io)


@router.post("/{run_id}/cancel", response=RunOut, summary="Cancel a run that has not ended (409 if it has)")
def cancel_run(request: HttpRequest, run_id: str):
    # The body is optional ({"reason": "..."}), so it is parsed here rather than by a schema.
    reason = ""
    if request.content_type == "application/json" and request.body.strip():
        try:
            reason = RunCancelIn(**json.loads(request.body)).reason
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f'Cancel body must be JSON like {{"reason": "..."}}: {exc}') from None
    run = run_for_canceller(user=request.auth, public_id=run_id)
    run = run_cancel(actor=request.auth, run=run, reason=reason)
    return run_summary(run)
