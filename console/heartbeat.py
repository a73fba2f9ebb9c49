"""Worker heartbeats: a row per worker process, refreshed every few seconds.

A worker is alive when its row is fresher than ``WORKER_STALE_AFTER``. A clean shutdown
deletes the row at once; a killed worker goes stale within a few heartbeats.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

logger = logging.getLogger(__name__)

_stop = threading.Event()
_thread: threading.Thread | None = None
_hostname: str | None = None


def _beat(hostname: str) -> None:
    from console.models import WorkerHeartbeat

    WorkerHeartbeat.objects.update_or_create(
        hostname=hostname, defaults={"last_seen": timezone.now(), "pid": os.getpid()}
    )


def _loop(hostname: str) -> None:
    while not _stop.is_set():
        try:
            close_old_connections()
            _beat(hostname)
        except Exception:  # keep beating through a transient database error
            logger.exception("worker heartbeat failed")
        _stop.wait(settings.WORKER_HEARTBEAT_SECONDS)
    connection.close()


def start_heartbeat(*, hostname: str | None) -> None:
    global _thread, _hostname
    _hostname = hostname or f"celery@{socket.gethostname()}-{os.getpid()}"
    _stop.clear()
    _beat(_hostname)
    _thread = threading.Thread(target=_loop, args=(_hostname,), name="heartbeat", daemon=True)
    _thread.start()


def stop_heartbeat() -> None:
    from console.models import WorkerHeartbeat

    _stop.set()
    if _hostname:
        try:
            close_old_connections()
            WorkerHeartbeat.objects.filter(hostname=_hostname).delete()
        except Exception:
            logger.exception("could not remove worker heartbeat")


def live_workers():
    from console.models import WorkerHeartbeat

    cutoff = timezone.now() - settings.WORKER_STALE_AFTER
    return WorkerHeartbeat.objects.filter(last_seen__gte=cutoff)
