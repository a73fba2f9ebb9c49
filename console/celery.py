"""The Celery app.

Worker liveness is a heartbeat row each worker writes to the database (see
``console.heartbeat``): it works the same on Redis and on kombu's filesystem transport,
which has no broadcast control (ping, inspect).

Database connections outlive a task, as they outlive a request in the web process. Celery's
Django fix-up closes every connection before and after every task unless
``CELERY_DB_REUSE_MAX`` is set (settings set it): a new PostgreSQL backend per run cost
more server CPU than the run itself, and threw away the step loop's prepared statements.
Instead, around each task, ``close_old_connections`` applies Django's own rules:
``CONN_MAX_AGE``, ``CONN_HEALTH_CHECKS``, and closing a connection left broken or inside a
transaction. SQLite's ``CONN_MAX_AGE`` is 0, so there it still closes after each task.
"""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.task_prerun.connect
@signals.task_postrun.connect
def _recycle_db_connections(sender=None, **kwargs):
    if getattr(getattr(sender, "request", None), "is_eager", False):
        return  # an eager task runs inside its caller's connection (and maybe transaction)
    from django.db import close_old_connections

    close_old_connections()


@signals.worker_init.connect
def _import_the_step_loop(**kwargs):
    """Import the step loop (with jsonschema, tenacity, the tools) in the worker's main
    process, before the prefork pool forks: each child then starts its first run warm and
    shares those pages, where it spent ~0.8 s of CPU importing them (docs/benchmarks.md).
    Django's fix-up has set Django up by now (its worker_init receiver runs first); only
    modules are loaded, no connection is opened."""
    from django.apps import apps

    if apps.ready:
        import agents.runtime  # noqa: F401


@signals.worker_ready.connect
def _start_heartbeat(sender=None, **kwargs):
    from console.heartbeat import start_heartbeat

    start_heartbeat(hostname=getattr(sender, "hostname", None))


@signals.worker_shutdown.connect
def _stop_heartbeat(sender=None, **kwargs):
    from console.heartbeat import stop_heartbeat

    stop_heartbeat()
