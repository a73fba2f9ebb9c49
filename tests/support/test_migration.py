"""The support toolkit's models moved from ``agents`` to ``support`` (agents/migrations/0005,
support/migrations/0001). A database migrated before the move keeps its tables, rows,
constraints, indexes and foreign keys, and on PostgreSQL its append-only triggers."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from agents.models import AgentRun
from support.models import CreditedCharge, CreditLedger, Customer, ReplyDraft, Subscription, Ticket

pytestmark = pytest.mark.django_db(transaction=True)
IS_POSTGRES = "postgresql" in settings.DATABASES["default"]["ENGINE"]

BEFORE = [("agents", "0004_credit_evidence")]  # the leaf before the move (support unapplied)
TABLES = ["agents_customer", "agents_subscription", "agents_ticket", "agents_creditledger",
          "agents_creditedcharge", "agents_replydraft", "agents_accountchange"]


def migrate(targets) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    return MigrationExecutor(connection)  # a fresh loader sees what is applied now


def leaves() -> list[tuple[str, str]]:
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


def schema() -> dict[str, dict[str, tuple]]:
    """Each table's constraints and indexes (name -> columns, kind), triggers aside."""
    with connection.cursor() as cursor:
        return {
            table: {
                name: (tuple(info["columns"] or ()), info["primary_key"], info["unique"],
                       info["foreign_key"], info["check"], info["index"])
                for name, info in connection.introspection.get_constraints(cursor, table).items()
            }
            for table in TABLES
        }


def pg_triggers(table: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal "
                       "AND tgrelid = %s::regclass", [table])
        return {row[0] for row in cursor.fetchall()}


def refused(sql: str) -> bool:
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)
    except DatabaseError:
        return True
    return False


def seed_before_the_move(apps) -> dict:
    """One of each, written through the models as they were before the move."""
    tenant = apps.get_model("console", "Tenant").objects.create(slug="moved", name="Moved")
    agent = apps.get_model("agents", "Agent").objects.create(slug="mig", version=1, name="Mig")
    run = apps.get_model("agents", "AgentRun").objects.create(
        tenant=tenant, agent=agent, intent="billing_refund", requester_label="test", trace_id="t" * 32,
        max_steps=5, max_tokens=100, max_wall_seconds=10, max_cost_usd=1)
    customer = apps.get_model("agents", "Customer").objects.create(
        tenant=tenant, code="C-7001", name="Old Row", email="old.row@moved.example")
    apps.get_model("agents", "Subscription").objects.create(
        tenant=tenant, customer=customer, plan="team", monthly_price_cents=4000,
        started_on=date(2025, 1, 1), charges=[{"date": "2026-03-01", "amount_cents": 4000, "ref": "ch_a"},
                                               {"date": "2026-03-02", "amount_cents": 4000, "ref": "ch_b"}])
    apps.get_model("agents", "Ticket").objects.create(
        tenant=tenant, customer=customer, number="C-7001-T1", subject="Billed twice", body="twice",
        created_at=datetime(2026, 3, 3, tzinfo=UTC))
    credit = apps.get_model("agents", "CreditLedger").objects.create(
        tenant=tenant, customer=customer, amount_cents=4000, reason="duplicate", run=run,
        idempotency_key="mig-credit", ticket_number="C-7001-T1")
    apps.get_model("agents", "CreditedCharge").objects.create(
        tenant=tenant, customer=customer, credit=credit, charge_ref="ch_b",
        charge_date=date(2026, 3, 2), charge_amount_cents=4000)
    apps.get_model("agents", "ReplyDraft").objects.create(
        tenant=tenant, customer=customer, body="Refunded.", run=run, idempotency_key="mig-draft")
    return {"tenant": tenant.pk, "run": run.pk, "credit": credit.pk}


@pytest.fixture
def before_the_move():
    """The database as it was before the move; migrated to the leaves again afterwards."""
    after = leaves()
    executor = migrate(BEFORE)
    assert ("support", "0001_initial") not in executor.loader.applied_migrations
    yield executor.loader.project_state(BEFORE).apps
    migrate(leaves())
    assert set(MigrationExecutor(connection).loader.applied_migrations) >= set(after)


def test_rows_written_before_the_move_read_through_the_support_models(before_the_move):
    ids = seed_before_the_move(before_the_move)
    schema_before = schema()

    migrate(leaves())
    ContentType.objects.clear_cache()

    credit = CreditLedger.objects.select_related("customer", "run").get(pk=ids["credit"])
    customer = credit.customer
    assert (customer.code, customer.tenant_id, credit.amount_cents) == ("C-7001", ids["tenant"], 4000)
    assert credit.ticket_number == "C-7001-T1" and credit.idempotency_key == "mig-credit"
    # foreign keys both ways: to the runtime's runs and among the toolkit's own tables
    assert credit.run.pk == ids["run"]
    run = AgentRun.objects.get(pk=ids["run"])
    assert list(run.credits.all()) == [credit] and run.drafts.get().body == "Refunded."
    assert [c.charge_ref for c in credit.charges.all()] == ["ch_b"]
    assert CreditedCharge.objects.get().customer == customer
    assert Subscription.objects.get(customer=customer).charges[1]["ref"] == "ch_b"
    assert Ticket.objects.get(customer=customer).number == "C-7001-T1"
    assert ReplyDraft.objects.get().customer == customer
    assert list(customer.credits.all()) == [credit]
    # the same constraints and indexes, by name and columns
    assert schema() == schema_before
    assert "uniq_credited_charge" in schema_before["agents_creditedcharge"]
    assert "ticket_tenant_customer_created" in schema_before["agents_ticket"]
    # the content types (and so their permissions) moved with the models
    assert ContentType.objects.get_for_model(Customer).app_label == "support"
    assert not ContentType.objects.filter(app_label="agents", model="customer").exists()


def test_the_constraints_still_hold_after_the_move(before_the_move):
    ids = seed_before_the_move(before_the_move)
    migrate(leaves())

    credit = CreditLedger.objects.get(pk=ids["credit"])
    with pytest.raises(DatabaseError), transaction.atomic():  # one credit per charge, ever
        CreditedCharge.objects.create(tenant_id=ids["tenant"], customer=credit.customer, credit=credit,
                                      charge_ref="ch_b", charge_date=date(2026, 3, 2),
                                      charge_amount_cents=4000)
    with pytest.raises(DatabaseError), transaction.atomic():  # one credit per idempotency key
        CreditLedger.objects.create(tenant_id=ids["tenant"], customer=credit.customer, amount_cents=1,
                                    reason="again", idempotency_key="mig-credit")
    with pytest.raises(DatabaseError), transaction.atomic():  # a status of CustomerStatus
        Customer.objects.filter(pk=credit.customer_id).update(status="gone")


@pytest.mark.postgres
@pytest.mark.skipif(not IS_POSTGRES, reason="PostgreSQL only")
def test_on_postgresql_the_credit_ledger_stays_append_only_across_the_move(before_the_move):
    ids = seed_before_the_move(before_the_move)
    update_credit = f"UPDATE agents_creditledger SET amount_cents = 1 WHERE id = {ids['credit']}"
    update_charge = "UPDATE agents_creditedcharge SET charge_amount_cents = 1"
    assert refused(update_credit) and refused(update_charge)  # the old triggers, before

    migrate(leaves())

    assert refused(update_credit) and refused(update_charge)
    assert refused(f"DELETE FROM agents_creditledger WHERE id = {ids['credit']}")
    assert refused("DELETE FROM agents_creditedcharge")
    with pytest.raises(DatabaseError), transaction.atomic():
        CreditLedger.objects.filter(pk=ids["credit"]).update(reason="edited")
    # one trigger per operation, named after the model's new app: none left behind
    assert pg_triggers("agents_creditledger") == {"pgtrigger_credit_ledger_no_update_b86ee",
                                                  "pgtrigger_credit_ledger_no_delete_adf9a"}
    assert pg_triggers("agents_creditedcharge") == {"pgtrigger_credited_charge_no_update_8cdc4",
                                                    "pgtrigger_credited_charge_no_delete_ed351"}
    assert CreditLedger.objects.get(pk=ids["credit"]).amount_cents == 4000


def test_the_models_and_the_migrations_agree():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
