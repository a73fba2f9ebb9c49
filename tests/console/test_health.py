import time

import pytest
from django.test import Client


def _health():
    response = Client().get("/api/v1/health")
    return response.status_code, response.json()


@pytest.mark.django_db
def test_health_without_a_worker_is_503_and_says_which_check_failed():
    status, body = _health()
    assert status == 503
    assert body["status"] == "fail"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is True
    assert body["checks"]["worker"] == {"ok": False, "workers": 0, "last_seen": None}


@pytest.mark.e2e
def test_health_reports_a_running_worker_up_and_a_stopped_worker_down(start_worker):
    worker = start_worker()
    status, body = _health()
    assert status == 200, body
    assert body["checks"]["worker"]["workers"] >= 1
    worker.stop()
    status, body = _health()
    assert status == 503
    assert body["checks"]["worker"]["ok"] is False


@pytest.mark.e2e
def test_health_reports_a_killed_worker_down_once_its_heartbeat_is_stale(start_worker, settings):
    worker = start_worker()
    worker.kill()
    deadline = time.monotonic() + settings.WORKER_STALE_AFTER.total_seconds() + 5
    while time.monotonic() < deadline:
        status, body = _health()
        if status == 503:
            break
        time.sleep(0.5)
    assert status == 503
    assert body["checks"]["worker"]["ok"] is False


@pytest.mark.django_db
def test_health_reports_an_unreachable_broker(settings):
    from console.celery import app

    original = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:1/0"
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    try:
        status, body = _health()
    finally:
        app.conf.broker_url = original
    assert status == 503
    assert body["checks"]["broker"]["ok"] is False
