"""Approval requests and handoffs name their subject instead of pointing at the runtime's
tables (issue 20): ``subject_kind`` ("agent_run"), ``subject_id`` (the run's public id)
and, on a request, ``action_id`` (its tool call's id); a handoff keeps its run's
``trace_id``. The ids are copied from the foreign keys, which then go, with their index
and constraint replaced by ones on the subject. Backwards, the keys are filled again from
the subject fields (possible while every subject is a run)."""

import uuid

from django.db import migrations, models

RUN = "agent_run"
BATCH = 1000


def _batches(qs, *fields):
    """Rows of ``qs`` as (pk, *fields), BATCH at a time, in pk order (keyset: no cursor
    stays open while the rows are updated)."""
    last = None
    while True:
        page = qs.order_by("pk") if last is None else qs.filter(pk__gt=last).order_by("pk")
        rows = list(page.values_list("pk", *fields)[:BATCH])
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def to_subjects(apps, schema_editor):
    db = schema_editor.connection.alias
    request_model = apps.get_model("approvals", "ApprovalRequest")
    handoff_model = apps.get_model("approvals", "Handoff")
    requests = request_model.objects.using(db)
    for rows in _batches(requests, "run__public_id", "invocation_id"):
        requests.bulk_update(
            [
                request_model(pk=pk, subject_kind=RUN, subject_id=str(run), action_id=str(call))
                for pk, run, call in rows
            ],
            ["subject_kind", "subject_id", "action_id"],
        )
    handoffs = handoff_model.objects.using(db)
    for rows in _batches(handoffs, "run__public_id", "run__trace_id"):
        handoffs.bulk_update(
            [
                handoff_model(pk=pk, subject_kind=RUN, subject_id=str(run), trace_id=trace)
                for pk, run, trace in rows
            ],
            ["subject_kind", "subject_id", "trace_id"],
        )


def to_foreign_keys(apps, schema_editor):
    db = schema_editor.connection.alias
    run_model = apps.get_model("agents", "AgentRun")
    request_model = apps.get_model("approvals", "ApprovalRequest")
    handoff_model = apps.get_model("approvals", "Handoff")
    for model in (request_model, handoff_model):
        others = model.objects.using(db).exclude(subject_kind=RUN).count()
        if others:
            raise RuntimeError(
                f"{others} {model._meta.verbose_name_plural} are about subjects other than runs; "
                "they cannot point at a run: migrate them away first."
            )

    def run_pks(rows):
        ids = {uuid.UUID(row[1]) for row in rows}
        return dict(run_model.objects.using(db).filter(public_id__in=ids).values_list("public_id", "pk"))

    requests = request_model.objects.using(db)
    for rows in _batches(requests, "subject_id", "action_id"):
        runs = run_pks(rows)
        requests.bulk_update(
            [
                request_model(pk=pk, run_id=runs[uuid.UUID(run)], invocation_id=uuid.UUID(call))
                for pk, run, call in rows
            ],
            ["run", "invocation"],
        )
    handoffs = handoff_model.objects.using(db)
    for rows in _batches(handoffs, "subject_id"):
        runs = run_pks(rows)
        handoffs.bulk_update([handoff_model(pk=pk, run_id=runs[uuid.UUID(run)]) for pk, run in rows], ["run"])


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0002_runtime"),
        ("approvals", "0003_queue_sla_claims_handoffs"),
    ]

    operations = [
        # nullable first, so that going back can add them again before they are filled
        migrations.AlterField(
            model_name="approvalrequest",
            name="run",
            field=models.ForeignKey(
                null=True,
                on_delete=models.PROTECT,
                related_name="approval_requests",
                to="agents.agentrun",
            ),
        ),
        migrations.AlterField(
            model_name="approvalrequest",
            name="invocation",
            field=models.ForeignKey(
                null=True,
                on_delete=models.PROTECT,
                related_name="approval_requests",
                to="agents.toolinvocation",
            ),
        ),
        migrations.AlterField(
            model_name="handoff",
            name="run",
            field=models.OneToOneField(
                null=True, on_delete=models.PROTECT, related_name="handoff", to="agents.agentrun"
            ),
        ),
        migrations.AddField(
            model_name="approvalrequest",
            name="subject_kind",
            field=models.CharField(default="", max_length=32),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="approvalrequest",
            name="subject_id",
            field=models.CharField(default="", max_length=64),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="approvalrequest",
            name="action_id",
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AddField(
            model_name="handoff",
            name="subject_kind",
            field=models.CharField(default="", max_length=32),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="handoff",
            name="subject_id",
            field=models.CharField(default="", max_length=64),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="handoff",
            name="trace_id",
            field=models.CharField(blank=True, max_length=32),
        ),
        migrations.RunPython(to_subjects, to_foreign_keys),
        migrations.RemoveConstraint(model_name="approvalrequest", name="uniq_pending_request_per_action"),
        migrations.RemoveIndex(model_name="approvalrequest", name="approval_run_status"),
        migrations.RemoveField(model_name="approvalrequest", name="invocation"),
        migrations.RemoveField(model_name="approvalrequest", name="run"),
        migrations.RemoveField(model_name="handoff", name="run"),
        migrations.AddIndex(
            model_name="approvalrequest",
            index=models.Index(
                fields=["subject_kind", "subject_id", "status"], name="approval_subject_status"
            ),
        ),
        migrations.AddConstraint(
            model_name="approvalrequest",
            constraint=models.UniqueConstraint(
                condition=models.Q(status="pending"),
                fields=("subject_kind", "subject_id", "action_id"),
                name="uniq_pending_request_per_action",
            ),
        ),
        migrations.AddConstraint(
            model_name="handoff",
            constraint=models.UniqueConstraint(
                fields=("subject_kind", "subject_id"), name="uniq_handoff_per_subject"
            ),
        ),
    ]
