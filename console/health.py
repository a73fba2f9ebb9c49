"""Health checks: the database, the broker and at least one live worker."""

from __future__ import annotations

from django.conf import settings
from django.db import connection

from console.heartbeat import live_workers


def check_database() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return {"ok": True, "vendor": connection.vendor}
    except Exception as exc:
        return {"ok": False, "vendor": connection.vendor, "error": type(exc).__name__}


def check_broker() -> dict:
    from console.celery import app

    transport = settings.CELERY_BROKER_URL.split("://", 1)[0]
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            if transport.startswith("redis"):
                conn.default_channel.client.ping()
        return {"ok": True, "transport": transport}
    except Exception as exc:
        return {"ok": False, "transport": transport, "error": type(exc).__name__}


def check_worker() -> dict:
    try:
        workers = list(live_workers().values_list("hostname", "last_seen"))
    except Exception as exc:
        return {"ok": False, "workers": 0, "error": type(exc).__name__}
    return {
        "ok": bool(workers),
        "workers": len(workers),
        "last_seen": max((seen for _, seen in workers), default=None),
    }


def health() -> tuple[bool, dict]:
    checks = {"database": check_database(), "broker": check_broker()}
    checks["worker"] = check_worker() if checks["database"]["ok"] else {"ok": False, "workers": 0}
    ok = all(check["ok"] for check in checks.values())
    return ok, {"status": "ok" if ok else "fail", "checks": checks}
