"""Thin Celery tasks of the audit app."""

from __future__ import annotations

import logging

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task(name="audit.tasks.checkpoint_task", ignore_result=True)
def checkpoint_task() -> dict | None:
    """Periodic signed checkpoint (CELERY_BEAT_SCHEDULE["audit-checkpoint"])."""
    from audit.checkpoints import CheckpointError, checkpoint_take

    try:
        record = checkpoint_take()
    except CheckpointError as exc:
        if exc.code == "audit_checkpoint_disabled":
            logger.warning("%s", exc.message)
            return None
        # A broken chain or a tampered checkpoint file: loud, every period, until fixed.
        logger.error("AUDIT CHECKPOINT REFUSED: %s", exc.message)
        raise
    logger.info("audit checkpoint seq=%s hash=%s webhook=%s", record["seq"], record["hash"],
                record["webhook"])
    return record


@shared_task(name="audit.tasks.stage_sweep_task", ignore_result=True)
def stage_sweep_task() -> int:
    """Delete chained staging rows (CELERY_BEAT_SCHEDULE["audit-stage-sweep"])."""
    from audit.services import stage_sweep

    return stage_sweep()
