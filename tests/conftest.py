"""Shared fixtures: personas, API clients, and a real Celery worker process.

Personas (healthchecks-style): ``operator``, ``lead``, ``lead2``, ``accounts`` (reviewer on
Account changes only), ``auditor``, ``admin``, ``outsider`` (logged in, no role), and the
service accounts ``svc_acme`` / ``svc_globex``; ``globex_lead`` (a Billing credits
reviewer of tenant globex only).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test import Client

ROOT = Path(__file__).resolve().parent.parent


# --- the append-only audit table vs. test database resets -------------------------------
# TransactionTestCase-style tests reset the database with TRUNCATE (PostgreSQL) or DELETE
# (SQLite), which the audit table's triggers refuse -- as they should. The test harness
# resets as the database superuser: on PostgreSQL with session_replication_role=replica
# (ordinary triggers do not fire), on SQLite by dropping and re-creating the triggers
# around the flush. The application never does either.


@pytest.fixture(autouse=True, scope="session")
def _flush_past_audit_triggers():
    from django.db.backends.base.operations import BaseDatabaseOperations

    original = BaseDatabaseOperations.execute_sql_flush

    def execute_sql_flush(self, sql_list):
        vendor = self.connection.vendor
        if vendor == "postgresql":
            sql_list = ["SET LOCAL session_replication_role = replica", *sql_list]
            return original(self, sql_list)
        if vendor == "sqlite":
            from audit.migrations import _sqlite_triggers

            with self.connection.cursor() as cursor:
                for name in _sqlite_triggers.NAMES:
                    cursor.execute(f"DROP TRIGGER IF EXISTS {name}")
            try:
                return original(self, sql_list)
            finally:
                with self.connection.cursor() as cursor:
                    for sql in _sqlite_triggers.CREATE:
                        cursor.execute(sql)
        return original(self, sql_list)

    BaseDatabaseOperations.execute_sql_flush = execute_sql_flush
    yield
    BaseDatabaseOperations.execute_sql_flush = original


@pytest.fixture(autouse=True, scope="session")
def _audit_chain_at_statement_end_in_test_transactions():
    """pytest-django's ``db`` tests run in a transaction that is rolled back, never
    committed; on PostgreSQL the audit chain is appended at COMMIT (a deferred constraint
    trigger), so inside those tests events would never reach the chain. There the trigger
    is made IMMEDIATE (it chains at the end of each staging INSERT, under the same lock,
    held to the end of the test's transaction). Tests that commit for real
    (``transactional_db``, live servers, worker processes) run the deferred production
    path; tests/audit/test_chain_at_commit.py covers it directly."""
    from django.db import connections
    from django.test import TestCase

    original = TestCase.__dict__["_enter_atomics"]
    original_rollback = TestCase.__dict__["_rollback_atomics"]

    def _enter_atomics(cls):
        atomics = original.__func__(cls)
        for alias in atomics:
            conn = connections[alias]
            if conn.vendor == "postgresql":
                with conn.cursor() as cursor:
                    cursor.execute("SET CONSTRAINTS audit_chain_at_commit IMMEDIATE")
                # and stage at record time, not with a COMMIT that never comes
                conn.audit_defer_staging = False
        return atomics

    def _rollback_atomics(cls, atomics):
        try:
            return original_rollback.__func__(cls, atomics)
        finally:
            for alias in atomics:
                if hasattr(connections[alias], "audit_defer_staging"):
                    connections[alias].audit_defer_staging = True

    TestCase._enter_atomics = classmethod(_enter_atomics)
    TestCase._rollback_atomics = classmethod(_rollback_atomics)
    yield
    TestCase._enter_atomics = original
    TestCase._rollback_atomics = original_rollback


# --- personas ---------------------------------------------------------------------------


@pytest.fixture
def seeded(db):
    """Tenants, role groups, personas and review queues, exactly as seed_demo makes them."""
    from approvals.seed import seed_queues
    from console.seed import seed_identity

    _, tenants, users = seed_identity()
    seed_queues(users=users)
    outsider = User.objects.create_user("outsider", password="outsider-pass")
    users["outsider"] = outsider
    return {"tenants": tenants, "users": users}


@pytest.fixture
def tenants(seeded):
    return seeded["tenants"]


@pytest.fixture
def acme(tenants):
    return tenants["acme"]


@pytest.fixture
def globex(tenants):
    return tenants["globex"]


def _persona(name):
    @pytest.fixture
    def fixture(seeded):
        return seeded["users"][name]

    fixture.__name__ = name.replace("-", "_")
    return fixture


operator = _persona("operator")
lead = _persona("lead")
lead2 = _persona("lead2")
accounts = _persona("accounts")
auditor = _persona("auditor")
admin = _persona("admin")
outsider = _persona("outsider")
svc_acme = _persona("svc-acme")
svc_globex = _persona("svc-globex")


@pytest.fixture
def globex_lead(seeded):
    """A support lead of tenant globex only, reviewer (view and decide) on "Billing
    credits", the queue acme's credits go to: queues are shared by tenants, so this is who
    must see nothing of acme's requests there."""
    from guardian.shortcuts import assign_perm

    from approvals.models import ReviewQueue
    from console.models import TenantMembership
    from console.roles import REVIEWER

    user = User.objects.create_user("globex-lead", password="globex-lead-pass")
    user.groups.add(Group.objects.get(name=REVIEWER))
    TenantMembership.objects.create(user=user, tenant=seeded["tenants"]["globex"])
    queue = ReviewQueue.objects.get(slug="billing-credits")
    for perm in ("view_reviewqueue", "decide_reviewqueue"):
        assign_perm(perm, user, queue)
    return user


@pytest.fixture
def login():
    """``login(user)`` returns a test Client with that user's console session."""

    def make(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make


@pytest.fixture
def token_client():
    """``token_client(user)`` returns a Client that sends a fresh bearer token."""
    from audit.services import Actor
    from console.services import token_issue

    def make(user: User) -> Client:
        _, plaintext = token_issue(actor=Actor.system("tests"), user=user, name="test")
        return Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}")

    return make


# --- runtime helpers shared by the agents, approvals and switches tests -----------------


@pytest.fixture
def runtime(seeded):
    """The support toolkit's demo data, the support agent and the default policy."""
    from agents.seed import seed_runtime
    from support.seed import seed_support_data

    seed_support_data(tenants=seeded["tenants"])
    seed_runtime()
    return seeded


def refunds_of_distinct_duplicates(tenant, n: int) -> list[str]:
    """``n`` refund requests, each for another customer of ``tenant`` given a duplicate March
    charge of their own (a charge can be credited once, so many credits need many charges)."""
    from support.models import Subscription

    subscriptions = Subscription.objects.filter(tenant=tenant).select_related("customer")
    messages = []
    for sub in subscriptions.order_by("customer__code")[:n]:
        ref = f"dup_{sub.customer.code}_3"
        if not any(c.get("ref") == ref for c in sub.charges):
            march = [c for c in sub.charges if c["date"].startswith("2026-03")]
            if len(march) < 2:
                sub.charges = [*sub.charges, {"date": "2026-03-15", "amount_cents": sub.monthly_price_cents,
                                              "ref": ref}]
                sub.save(update_fields=["charges"])
        # $10 each: under the dual-control threshold whatever the plan's price
        code = sub.customer.code
        messages.append(f"Customer {code} was billed twice in March, please refund $10 of the duplicate")
    assert len(messages) == n, f"only {len(messages)} customers in {tenant}"
    return messages


@pytest.fixture
def start_run(runtime):
    """``start_run(message, actor=svc-acme, tenant="acme", **kw)`` creates a run (not enqueued)."""
    from agents.services.runs import run_start

    def start(message: str, *, actor=None, tenant: str = "acme", **kwargs) :
        actor = actor or runtime["users"]["svc-acme"]
        kwargs.setdefault("enqueue", False)
        run, _ = run_start(actor=actor, tenant=tenant, message=message, **kwargs)
        return run

    return start


@pytest.fixture
def step():
    """``step(run)`` runs the step loop in this process until the run parks or ends."""
    from agents.runtime import run_execute

    def execute(run) :
        run_execute(run_id=str(run.public_id), worker="pytest")
        run.refresh_from_db()
        return run

    return execute


@pytest.fixture
def pending_request():
    from agents.approval_subject import requests_of
    from approvals.models import ApprovalRequest

    def get(run) -> ApprovalRequest:
        return requests_of(run).select_related("queue").get(status="pending")

    return get



# --- a real Celery worker process -------------------------------------------------------


def worker_env() -> dict[str, str]:
    """The environment a worker subprocess needs to share this test's database and broker."""
    env = os.environ.copy()
    env["DJANGO_SETTINGS_MODULE"] = "console.settings_test"
    settings_dict = connection.settings_dict
    if connection.vendor == "postgresql":
        user = settings_dict.get("USER") or "postgres"
        password = settings_dict.get("PASSWORD") or ""
        auth = f"{user}:{password}@" if password else f"{user}@"
        host = settings_dict.get("HOST") or "127.0.0.1"
        port = settings_dict.get("PORT") or 5432
        env["DATABASE_URL"] = f"postgres://{auth}{host}:{port}/{settings_dict['NAME']}"
    else:
        env["DATABASE_URL"] = f"sqlite:///{settings_dict['NAME']}"
    return env


class WorkerProcess:
    def __init__(self, *, concurrency: int = 2, name: str | None = None, extra_env=None):
        self.name = name or f"test-{uuid.uuid4().hex[:8]}"
        self.hostname = f"{self.name}@localhost"
        env = worker_env()
        env.update(extra_env or {})
        from django.conf import settings

        self.log_path = Path(settings.VAR_DIR) / f"{self.name}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "console", "worker", "--loglevel=INFO",
             f"--concurrency={concurrency}", f"--hostname={self.hostname}",
             f"--queues={settings.CELERY_TASK_DEFAULT_QUEUE}", "--without-gossip",
             "--without-mingle"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        from console.models import WorkerHeartbeat

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.output()}")
            if WorkerHeartbeat.objects.filter(hostname=self.hostname).exists():
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-20000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if not self.log.closed:
            self.log.close()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@pytest.fixture
def start_worker(transactional_db):
    """``start_worker()`` starts a real Celery worker process and waits until it is live."""
    started: list[WorkerProcess] = []

    def start(**kwargs) -> WorkerProcess:
        worker = WorkerProcess(**kwargs)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()
