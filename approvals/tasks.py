"""Thin Celery tasks for approvals: the SLA sweep (beat) and webhook delivery."""

from __future__ import annotations

from celery import shared_task


@shared_task(ignore_result=True)
def sla_sweep_task() -> dict:
    from approvals.services import approval_sla_sweep

    return approval_sla_sweep()


@shared_task(ignore_result=True, acks_late=True)
def webhook_deliver_task(*, request_id: str, body: dict) -> bool:
    from approvals.notifications import webhook_deliver

    return webhook_deliver(request_id=request_id, body=body)
