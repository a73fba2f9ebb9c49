# The support toolkit's models, moved here from ``agents`` (agents/migrations/0005). The
# tables exist already (agents' 0001, 0002 and 0004 created them) and keep their names
# (db_table), their rows, constraints and indexes: only the migration state is created here.
# The append-only triggers of the credit ledger and the credited charges are installed
# again under this app's trigger names (PostgreSQL only; agents' 0005 dropped the old ones),
# and the content types (with their permissions) move from ``agents`` to ``support``.

import uuid

import django.db.models.deletion
import pgtrigger.compiler
import pgtrigger.migrations
from django.db import migrations, models

MODELS = ('customer', 'subscription', 'ticket', 'creditledger', 'creditedcharge', 'replydraft',
          'accountchange')


def move_content_types(source, target):
    def move(apps, schema_editor):
        content_type = apps.get_model('contenttypes', 'ContentType')
        db = schema_editor.connection.alias
        taken = set(content_type.objects.using(db).filter(app_label=target, model__in=MODELS)
                    .values_list('model', flat=True))
        (content_type.objects.using(db).filter(app_label=source, model__in=MODELS)
         .exclude(model__in=taken).update(app_label=target))

    return move


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('agents', '0005_support_toolkit_moved'),
        ('console', '0001_initial'),
        ('contenttypes', '0002_remove_content_type_name'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='Customer',
                    fields=[
                        ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ('code', models.CharField(max_length=32)),
                        ('name', models.CharField(max_length=200)),
                        ('email', models.EmailField(max_length=254)),
                        ('status', models.CharField(choices=[('active', 'Active'), ('suspended', 'Suspended'), ('closed', 'Closed')], default='active', max_length=16)),
                        ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='customers', to='console.tenant')),
                    ],
                    options={
                        'db_table': 'agents_customer',
                        'ordering': ['tenant', 'code'],
                        'constraints': [
                            models.UniqueConstraint(fields=('tenant', 'code'), name='uniq_customer_tenant_code'),
                            models.CheckConstraint(condition=models.Q(('status__in', ['active', 'suspended', 'closed'])), name='customer_status_valid'),
                        ],
                    },
                ),
                migrations.CreateModel(
                    name='Subscription',
                    fields=[
                        ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ('plan', models.CharField(max_length=64)),
                        ('monthly_price_cents', models.PositiveIntegerField()),
                        ('status', models.CharField(default='active', max_length=16)),
                        ('started_on', models.DateField()),
                        ('charges', models.JSONField(default=list)),
                        ('customer', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='subscriptions', to='support.customer')),
                        ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='subscriptions', to='console.tenant')),
                    ],
                    options={
                        'db_table': 'agents_subscription',
                        'ordering': ['tenant', 'customer'],
                        'indexes': [models.Index(fields=['tenant', 'customer'], name='subscription_tenant_customer')],
                    },
                ),
                migrations.CreateModel(
                    name='Ticket',
                    fields=[
                        ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ('number', models.CharField(max_length=32)),
                        ('subject', models.CharField(max_length=200)),
                        ('body', models.TextField()),
                        ('created_at', models.DateTimeField()),
                        ('customer', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='tickets', to='support.customer')),
                        ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='tickets', to='console.tenant')),
                    ],
                    options={
                        'db_table': 'agents_ticket',
                        'ordering': ['-created_at'],
                        'indexes': [models.Index(fields=['tenant', 'customer', '-created_at'], name='ticket_tenant_customer_created')],
                        'constraints': [models.UniqueConstraint(fields=('tenant', 'number'), name='uniq_ticket_tenant_number')],
                    },
                ),
                migrations.CreateModel(
                    name='CreditLedger',
                    fields=[
                        ('id', models.BigAutoField(primary_key=True, serialize=False)),
                        ('amount_cents', models.PositiveIntegerField()),
                        ('currency', models.CharField(default='USD', max_length=3)),
                        ('reason', models.CharField(max_length=500)),
                        ('idempotency_key', models.CharField(max_length=80)),
                        ('ticket_number', models.CharField(blank=True, max_length=32)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('run', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='credits', to='agents.agentrun')),
                        ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='console.tenant')),
                        ('customer', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='credits', to='support.customer')),
                    ],
                    options={
                        'db_table': 'agents_creditledger',
                        'ordering': ['-created_at'],
                        'indexes': [models.Index(fields=['tenant', 'customer'], name='credit_tenant_customer')],
                        'constraints': [
                            models.UniqueConstraint(fields=('idempotency_key',), name='uniq_credit_idempotency_key'),
                            models.CheckConstraint(condition=models.Q(('amount_cents__gt', 0)), name='credit_amount_positive'),
                        ],
                    },
                ),
                migrations.CreateModel(
                    name='CreditedCharge',
                    fields=[
                        ('id', models.BigAutoField(primary_key=True, serialize=False)),
                        ('charge_ref', models.CharField(max_length=64)),
                        ('charge_date', models.DateField()),
                        ('charge_amount_cents', models.PositiveIntegerField()),
                        ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='console.tenant')),
                        ('credit', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='charges', to='support.creditledger')),
                        ('customer', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='credited_charges', to='support.customer')),
                    ],
                    options={
                        'db_table': 'agents_creditedcharge',
                        'indexes': [models.Index(fields=['tenant', 'customer'], name='credited_charge_customer')],
                        'constraints': [models.UniqueConstraint(fields=('tenant', 'charge_ref'), name='uniq_credited_charge')],
                    },
                ),
                migrations.CreateModel(
                    name='ReplyDraft',
                    fields=[
                        ('id', models.BigAutoField(primary_key=True, serialize=False)),
                        ('ticket_number', models.CharField(blank=True, max_length=32)),
                        ('body', models.TextField()),
                        ('idempotency_key', models.CharField(max_length=80)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('customer', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='drafts', to='support.customer')),
                        ('run', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='drafts', to='agents.agentrun')),
                        ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='console.tenant')),
                    ],
                    options={
                        'db_table': 'agents_replydraft',
                        'constraints': [models.UniqueConstraint(fields=('idempotency_key',), name='uniq_draft_idempotency_key')],
                    },
                ),
                migrations.CreateModel(
                    name='AccountChange',
                    fields=[
                        ('id', models.BigAutoField(primary_key=True, serialize=False)),
                        ('old_status', models.CharField(max_length=16)),
                        ('new_status', models.CharField(max_length=16)),
                        ('reason', models.CharField(max_length=500)),
                        ('idempotency_key', models.CharField(max_length=80)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('run', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='agents.agentrun')),
                        ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='console.tenant')),
                        ('customer', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='status_changes', to='support.customer')),
                    ],
                    options={
                        'db_table': 'agents_accountchange',
                        'constraints': [models.UniqueConstraint(fields=('idempotency_key',), name='uniq_account_change_key')],
                    },
                ),
            ],
            database_operations=[],
        ),
        pgtrigger.migrations.AddTrigger(
            model_name='creditledger',
            trigger=pgtrigger.compiler.Trigger(name='credit_ledger_no_update', sql=pgtrigger.compiler.UpsertTriggerSql(func="RAISE EXCEPTION 'pgtrigger: Cannot update rows from % table', TG_TABLE_NAME;", hash='d9f1881e2843076df71ca8ee7efde148ec64837f', operation='UPDATE', pgid='pgtrigger_credit_ledger_no_update_b86ee', table='agents_creditledger', when='BEFORE')),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name='creditledger',
            trigger=pgtrigger.compiler.Trigger(name='credit_ledger_no_delete', sql=pgtrigger.compiler.UpsertTriggerSql(func="RAISE EXCEPTION 'pgtrigger: Cannot delete rows from % table', TG_TABLE_NAME;", hash='c0e647ee1d49aba5dc03faf7edffebcea066fdad', operation='DELETE', pgid='pgtrigger_credit_ledger_no_delete_adf9a', table='agents_creditledger', when='BEFORE')),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name='creditedcharge',
            trigger=pgtrigger.compiler.Trigger(name='credited_charge_no_update', sql=pgtrigger.compiler.UpsertTriggerSql(func="RAISE EXCEPTION 'pgtrigger: Cannot update rows from % table', TG_TABLE_NAME;", hash='ff0647ccad61b4f9284505712a751cf69535f841', operation='UPDATE', pgid='pgtrigger_credited_charge_no_update_8cdc4', table='agents_creditedcharge', when='BEFORE')),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name='creditedcharge',
            trigger=pgtrigger.compiler.Trigger(name='credited_charge_no_delete', sql=pgtrigger.compiler.UpsertTriggerSql(func="RAISE EXCEPTION 'pgtrigger: Cannot delete rows from % table', TG_TABLE_NAME;", hash='b808edafcb85bb222e73944f371109fa8717c0f4', operation='DELETE', pgid='pgtrigger_credited_charge_no_delete_ed351', table='agents_creditedcharge', when='BEFORE')),
        ),
        migrations.RunPython(move_content_types('agents', 'support'), move_content_types('support', 'agents')),
    ]
