"""Memory freeze across real processes and connections: the beat task in a real Celery
worker, and a freeze racing a write on PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, connections, transaction

from agents.knowledge.models import MemoryItem
from agents.knowledge.services import FREEZE_LOCK_KEY, MemoryFrozen, memory_freeze, memory_write
from audit.models import AuditEvent
from audit.services import Actor
from console.models import Tenant

RUN = Actor.run("run-1")


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.e2e
def test_the_refresh_job_runs_in_a_worker_and_refuses_frozen_memory(start_worker):
    from agents.knowledge.tasks import memory_refresh_task

    acme = Tenant.objects.create(slug="acme", name="Acme")
    globex = Tenant.objects.create(slug="globex", name="Globex")
    memory_write(actor=RUN, tenant=acme, agent="support", key="a", value=1)
    memory_write(actor=RUN, tenant=globex, agent="support", key="b", value=2)
    memory_freeze(actor=Actor.system("operator"), tenant=globex, reason="incident 42")
    worker = start_worker(concurrency=1)

    memory_refresh_task.delay()
    assert wait_for(lambda: AuditEvent.objects.filter(action="memory.refused").exists()
                    and AuditEvent.objects.filter(action="memory.refreshed").exists()), worker.output()
    assert MemoryItem.objects.get(tenant=acme).refreshed_at is not None
    assert MemoryItem.objects.get(tenant=globex).refreshed_at is None
    refused = AuditEvent.objects.get(action="memory.refused")
    assert refused.tenant_id == globex.pk and refused.payload["operation"] == "refresh"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_freeze_waits_for_an_open_write_and_later_writes_are_refused():
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: advisory locks")
    acme = Tenant.objects.create(slug="acme", name="Acme")
    wrote, release, errors = threading.Event(), threading.Event(), []

    def slow_writer():
        try:
            with transaction.atomic():
                memory_write(actor=RUN, tenant=acme, agent="support", key="k", value="in flight")
                wrote.set()
                release.wait(30)
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    def freezer():
        try:
            memory_freeze(actor=Actor.system("operator"), tenant=acme, reason="race")
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    writer = threading.Thread(target=slow_writer)
    writer.start()
    assert wrote.wait(30)
    freezing = threading.Thread(target=freezer)
    freezing.start()

    def freeze_is_waiting():
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                           "AND objid = %s", [FREEZE_LOCK_KEY])
            return cursor.fetchone()[0] == 1

    assert wait_for(freeze_is_waiting, timeout=30)
    release.set()
    writer.join(30)
    freezing.join(30)
    assert not errors
    actions = list(AuditEvent.objects.filter(action__in=["memory.written", "memory.frozen"])
                   .order_by("seq").values_list("action", flat=True))
    assert actions == ["memory.written", "memory.frozen"]
    with pytest.raises(MemoryFrozen):
        memory_write(actor=RUN, tenant=acme, agent="support", key="k", value="after")
