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


class RetryLater(Exception):
    """The run could not be stepped now (its lease is held elsewhere, a tool call is in
    flight, every model route is busy): the task is retried with backoff."""


# One task steps a run, whether it was just started, swept or resumed after an approval:
# only the lease holder steps it, and the worker reads what it needs (an approval's
# outcome included) from the database. Retries: 1, 2, 4, 8, 16, then every 30 s, 50 times.
@shared_task(
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    autoretry_for=(RetryLater,),
    max_retries=50,
    retry_backoff=True,
    retry_backoff_max=30,
    retry_jitter=False,
)
def run_step_task(self, run_id: str) -> str:
    from agents.runtime import RETRY_LATER, run_execute

    outcome = run_execute(run_id=run_id, worker=self.request.hostname or "")
    if outcome == RETRY_LATER:
        raise RetryLater(run_id)
    return outcome


@shared_task(ignore_result=True)
def sweep_runs_task() -> int:
    from agents.services.runs import run_sweep

    return len(run_sweep())


@shared_task(ignore_result=True)
def expire_switches_task() -> int:
    """Beat: lift kill switches whose expiry passed (records switch.expired)."""
    from agents.services.switches import switch_expire_due

    return len(switch_expire_due())


def send_run(run_id: str) -> None:
    """Publish now. A failed publish is logged, not raised: the run stays queued in the
    database and the sweeper enqueues it again."""
    try:
        run_step_task.delay(str(run_id))
    except Exception:
        logger.exception("could not enqueue run %s; the sweeper will retry", run_id)


def enqueue_run(run) -> None:
    """Enqueue the run when the current transaction commits (never a run the worker
    cannot see yet)."""
    run_id = str(run.public_id)
    transaction.on_commit(lambda: send_run(run_id))
