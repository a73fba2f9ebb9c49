"""Review queues. Reviewers hold django-guardian object permissions on a queue:
``view_reviewqueue`` to see its requests and ``decide_reviewqueue`` to decide them."""

from __future__ import annotations

import uuid

import pgtrigger
from django.conf import settings
from django.db import models

from approvals.subjects import subject_label


class ReviewQueue(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    tools = models.JSONField(default=list, blank=True)  # tool names this queue covers
    tiers = models.JSONField(default=list, blank=True)  # tool tiers this queue covers
    sla_minutes = models.PositiveIntegerField(default=240)
    capacity = models.PositiveIntegerField(default=500)
    escalation_queue = models.ForeignKey("self", null=True, blank=True,
                                         on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["name"]
        permissions = [("decide_reviewqueue", "Can decide requests in this queue")]
        constraints = [
            models.CheckConstraint(condition=models.Q(sla_minutes__gt=0), name="queue_sla_positive"),
            models.CheckConstraint(condition=models.Q(capacity__gt=0), name="queue_capacity_positive"),
        ]

    def __str__(self) -> str:
        return self.name


class SubjectQuerySet(models.QuerySet):
    def of_subject(self, subject) -> SubjectQuerySet:
        """The rows about ``subject`` (an ``approvals.subjects.Subject``: its kind and id)."""
        return self.filter(subject_kind=subject.kind, subject_id=subject.id)


class ApprovalStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    EXPIRED = "expired", "Expired"
    CANCELLED = "cancelled", "Cancelled"


FINAL_APPROVAL_STATUSES = ("approved", "rejected", "expired", "cancelled")


class ApprovalRequest(models.Model):
    """What a reviewer needs to decide on one proposed action.

    Transitions leave ``pending`` only through conditional UPDATEs (approvals.services);
    on PostgreSQL a trigger also refuses changing a final status. It is about a subject
    (``subject_kind``, ``subject_id``: ``agent_run`` and the run's public id) and holds one
    proposed action of it (``action_id``: the run's tool call); one pending request per
    action is a named constraint. The subject's handler (approvals.subjects) acts on it.
    """

    objects = SubjectQuerySet.as_manager()

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("console.Tenant", on_delete=models.PROTECT, related_name="+")
    queue = models.ForeignKey(ReviewQueue, on_delete=models.PROTECT, related_name="requests")
    subject_kind = models.CharField(max_length=32)
    subject_id = models.CharField(max_length=64)
    action_id = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=ApprovalStatus.choices,
                              default=ApprovalStatus.PENDING)
    approvals_required = models.PositiveSmallIntegerField(default=1)
    # the proposal
    tool = models.CharField(max_length=64)
    arguments = models.JSONField(default=dict)
    amount_cents = models.PositiveIntegerField(null=True, blank=True)
    currency = models.CharField(max_length=3, blank=True)
    risk_tier = models.CharField(max_length=16)
    # what the agent concluded, and the tool results it relied on
    summary = models.TextField(blank=True)
    evidence = models.JSONField(default=list)
    policy_version = models.PositiveIntegerField(null=True, blank=True)
    policy_rule = models.CharField(max_length=64, blank=True)
    policy_reason = models.TextField(blank=True)
    trace_id = models.CharField(max_length=32, blank=True)
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                  on_delete=models.SET_NULL, related_name="+")
    requester_label = models.CharField(max_length=150, blank=True)
    on_behalf_of = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                     on_delete=models.SET_NULL, related_name="+")
    on_behalf_of_label = models.CharField(max_length=150, blank=True)
    due_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    # the outcome: the arguments the tool runs with (edited or not) and the reason
    approved_arguments = models.JSONField(null=True, blank=True)
    edited = models.BooleanField(default=False)
    edited_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                  on_delete=models.SET_NULL, related_name="+")
    decision_reason = models.TextField(blank=True)
    # claiming: one reviewer holds a lease so two people do not work the same item
    claimed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    claim_expires_at = models.DateTimeField(null=True, blank=True)
    # SLA: flagged when near_due_at passes, escalated once when due_at passes, expired
    # (fail closed) when the escalated deadline passes too
    near_due_at = models.DateTimeField(null=True, blank=True)
    flagged_at = models.DateTimeField(null=True, blank=True)
    escalated_at = models.DateTimeField(null=True, blank=True)
    escalated_from = models.ForeignKey(ReviewQueue, null=True, blank=True,
                                       on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["due_at"]
        constraints = [
            models.CheckConstraint(condition=models.Q(status__in=ApprovalStatus.values),
                                   name="approval_status_valid"),
            models.CheckConstraint(condition=models.Q(approvals_required__in=[1, 2]),
                                   name="approval_required_one_or_two"),
            models.UniqueConstraint(fields=["subject_kind", "subject_id", "action_id"],
                                    condition=models.Q(status="pending"),
                                    name="uniq_pending_request_per_action"),
        ]
        indexes = [
            # serves: a queue's pending items, oldest-due first (the reviewer's list), the
            # per-queue counts of the page and the capacity check
            models.Index(fields=["queue", "status", "due_at"], name="approval_queue_status_due"),
            # serves: the SLA sweep's breach/expiry scan (pending, due_at <= now)
            models.Index(fields=["status", "due_at"], name="approval_status_due"),
            # serves: the SLA sweep's near-breach scan (pending, not flagged, near_due_at <= now)
            models.Index(fields=["status", "near_due_at"], name="approval_status_near_due"),
            # serves: the metrics (decided requests of a queue in a time window)
            models.Index(fields=["queue", "decided_at"], name="approval_queue_decided"),
            # serves: the requests of one subject, pending or all (run detail and summary,
            # cancel, resume: a run's request for its call, a run's few rows filtered)
            models.Index(fields=["subject_kind", "subject_id", "status"], name="approval_subject_status"),
        ]
        triggers = [
            pgtrigger.Protect(
                name="approval_final_status_is_final", operation=pgtrigger.Update,
                condition=pgtrigger.Q(old__status__in=list(FINAL_APPROVAL_STATUSES))
                & pgtrigger.Q(old__status__df=pgtrigger.F("new__status")),
            ),
        ]

    def __str__(self) -> str:
        return f"approval {self.id} ({self.tool}, {self.status})"


class DecisionKind(models.TextChoices):
    APPROVE = "approve", "Approve"
    REJECT = "reject", "Reject"


class ApprovalDecision(models.Model):
    """One reviewer's decision on one request (at most one per reviewer per request)."""

    id = models.BigAutoField(primary_key=True)
    request = models.ForeignKey(ApprovalRequest, on_delete=models.PROTECT, related_name="decisions")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decision = models.CharField(max_length=16, choices=DecisionKind.choices)
    reason = models.TextField(blank=True)
    arguments = models.JSONField(null=True, blank=True)  # edited arguments, when edited
    edited = models.BooleanField(default=False)
    # {"field": {"from": old, "to": new}} for an edit
    diff = models.JSONField(null=True, blank=True)
    # sha256 of the canonical arguments this decision approved: only approvals of the
    # current proposal count towards dual control (an edit starts a new proposal)
    proposal_hash = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["request", "reviewer"], name="uniq_decision_per_reviewer"),
            models.CheckConstraint(condition=models.Q(decision__in=DecisionKind.values),
                                   name="decision_kind_valid"),
            models.CheckConstraint(condition=~models.Q(decision="reject") | ~models.Q(reason=""),
                                   name="reject_has_reason"),
        ]


class HandoffStatus(models.TextChoices):
    OPEN = "open", "Open"
    TAKEN = "taken", "Taken"
    RESOLVED = "resolved", "Resolved"


class HandoffSource(models.TextChoices):
    ROUTING = "routing", "Routed to humans"
    EXPIRY = "expiry", "Approval expired"
    BUDGET = "budget", "Budget exhausted"
    BACKPRESSURE = "backpressure", "Review queue full"
    RUNTIME = "runtime", "Runtime (tool, data, switch)"


class Handoff(models.Model):
    """A subject a person must finish (a run that ended handed off): created in the same
    transaction as the run's terminal state, once per subject. open -> taken -> resolved,
    by conditional UPDATEs; on PostgreSQL a trigger keeps ``resolved`` final."""

    objects = SubjectQuerySet.as_manager()

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    subject_kind = models.CharField(max_length=32)
    subject_id = models.CharField(max_length=64)
    trace_id = models.CharField(max_length=32, blank=True)
    tenant = models.ForeignKey("console.Tenant", on_delete=models.PROTECT, related_name="+")
    source = models.CharField(max_length=16, choices=HandoffSource.choices)
    reason = models.TextField()
    summary = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=HandoffStatus.choices, default=HandoffStatus.OPEN)
    taken_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                 on_delete=models.SET_NULL, related_name="+")
    taken_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                    on_delete=models.SET_NULL, related_name="+")
    resolved_at = models.DateTimeField(null=True, blank=True)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.CheckConstraint(condition=models.Q(status__in=HandoffStatus.values),
                                   name="handoff_status_valid"),
            models.CheckConstraint(condition=models.Q(source__in=HandoffSource.values),
                                   name="handoff_source_valid"),
            models.CheckConstraint(condition=~models.Q(status="resolved") | ~models.Q(note=""),
                                   name="handoff_resolved_has_note"),
            # one handoff per subject; also serves "the handoff of this run"
            models.UniqueConstraint(fields=["subject_kind", "subject_id"], name="uniq_handoff_per_subject"),
        ]
        indexes = [
            # serves: the handoff page (open/taken first, per tenant, oldest first)
            models.Index(fields=["tenant", "status", "created_at"], name="handoff_tenant_status"),
        ]
        triggers = [
            pgtrigger.Protect(
                name="handoff_resolved_is_final", operation=pgtrigger.Update,
                condition=pgtrigger.Q(old__status="resolved")
                & pgtrigger.Q(old__status__df=pgtrigger.F("new__status")),
            ),
        ]

    def __str__(self) -> str:
        return f"handoff {self.id} ({self.status})"

    @property
    def subject_label(self) -> str:
        """What the page calls the subject ("run 6f1c...")."""
        return subject_label(self.subject_kind, self.subject_id)
