"""The Celery app.

Worker liveness is a heartbeat row each worker writes to the database (see
``console.heartbeat``): it works the same on Redis and on kombu's filesystem transport,
which has no broadcast control (ping, inspect).
"""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_ready.connect
def _start_heartbeat(sender=None, **kwargs):
    from console.heartbeat import start_heartbeat

    start_heartbeat(hostname=getattr(sender, "hostname", None))


@signals.worker_shutdown.connect
def _stop_heartbeat(sender=None, **kwargs):
    from console.heartbeat import stop_heartbeat

    stop_heartbeat()
