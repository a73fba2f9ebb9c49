# The support toolkit's tables (customers, subscriptions, tickets, the credit ledger, credited
# charges, reply drafts, account changes) moved to the ``support`` app. Only the migration
# state forgets them here: the tables and their rows stay, and support/migrations/0001_initial
# adopts them under the same names. Their PostgreSQL triggers are named after the model's
# app ("pgtrigger_credit_ledger_no_update_<hash of agents.CreditLedger>"), so the old ones
# are dropped here and support's 0001 installs them again under the new names.

import pgtrigger.migrations
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('agents', '0004_credit_evidence'),
    ]

    operations = [
        pgtrigger.migrations.RemoveTrigger(model_name='creditledger', name='credit_ledger_no_update'),
        pgtrigger.migrations.RemoveTrigger(model_name='creditledger', name='credit_ledger_no_delete'),
        pgtrigger.migrations.RemoveTrigger(model_name='creditedcharge', name='credited_charge_no_update'),
        pgtrigger.migrations.RemoveTrigger(model_name='creditedcharge', name='credited_charge_no_delete'),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                # those that point at others first
                migrations.DeleteModel(name='AccountChange'),
                migrations.DeleteModel(name='ReplyDraft'),
                migrations.DeleteModel(name='CreditedCharge'),
                migrations.DeleteModel(name='CreditLedger'),
                migrations.DeleteModel(name='Ticket'),
                migrations.DeleteModel(name='Subscription'),
                migrations.DeleteModel(name='Customer'),
            ],
            database_operations=[],
        ),
    ]
