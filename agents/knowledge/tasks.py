"""Thin Celery tasks of the context and memory layer."""

from __future__ import annotations

from celery import shared_task

from agents.knowledge.services import memory_refresh_all
from audit.services import Actor


@shared_task(name="knowledge.memory_refresh")
def memory_refresh_task() -> dict[str, int]:
    """Periodic (Celery beat): refresh long-term memory; frozen scopes are refused and audited."""
    return memory_refresh_all(actor=Actor.system("memory-refresh"))
