"""Thin Celery tasks: load by id, call the runtime. Retries and acks policy live here.

``acks_late`` with ``reject_on_worker_lost``: a message is acknowledged only after the
task returns, and requeued if the worker process dies. That is safe because stepping a
run is idempotent: only the lease holder steps it, and tool calls are keyed. A run whose
worker died while holding the message is also picked up by the sweeper (``sweep_runs_task``,
on Celery beat) once its lease expires.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import transaction

logger = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=50, ignore_result=True)
def run_step_task(self, run_id: str) -> str:
    from agents.runtime import RETRY_LATER, run_execute

    outcome = run_execute(run_id=run_id, worker=self.request.hostname or "")
    if outcome == RETRY_LATER:
        raise self.retry(countdown=min(2 ** min(self.request.retries, 5), 30))
    return outcome


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=50, ignore_result=True)
def resume_run_task(self, run_id: str) -> str:
    """Resume a parked run after an approval decision (same loop, same lease rules)."""
    from agents.runtime import RETRY_LATER, run_execute

    outcome = run_execute(run_id=run_id, worker=self.request.hostname or "")
    if outcome == RETRY_LATER:
        raise self.retry(countdown=min(2 ** min(self.request.retries, 5), 30))
    return outcome


@shared_task(ignore_result=True)
def sweep_runs_task() -> int:
    from agents.services import run_sweep

    return len(run_sweep())


@shared_task(ignore_result=True)
def expire_switches_task() -> int:
    """Beat: lift kill switches whose expiry passed (records switch.expired)."""
    from agents.services import switch_expire_due

    return len(switch_expire_due())


def send_run(run_id: str, *, resume: bool = False) -> None:
    """Publish now. A failed publish is logged, not raised: the run stays queued in the
    database and the sweeper enqueues it again."""
    task = resume_run_task if resume else run_step_task
    try:
        task.delay(str(run_id))
    except Exception:
        logger.exception("could not enqueue run %s; the sweeper will retry", run_id)


def enqueue_run(run, *, resume: bool = False) -> None:
    """Enqueue the run when the current transaction commits (never a run the worker
    cannot see yet)."""
    run_id = str(run.public_id)
    transaction.on_commit(lambda: send_run(run_id, resume=resume))
