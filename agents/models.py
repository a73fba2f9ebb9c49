"""The runtime's tables. The support toolkit's (the demo customer system's) live in
``support.models``.

Every table that holds customer data carries a tenant, and every query on it filters by
tenant in code (never in the prompt).
"""

from __future__ import annotations

import uuid

import pgtrigger
from django.conf import settings
from django.db import models
from django.db.models import Q

# --- the runtime ------------------------------------------------------------------------
# Statuses are TextChoices with CheckConstraints; transitions are conditional UPDATEs in
# agents.runtime / agents.services.runs that check the row count, and on PostgreSQL a trigger
# refuses any change away from a final status.



class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    WAITING_APPROVAL = "waiting_approval", "Waiting for approval"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    DENIED = "denied", "Denied"
    CANCELLED = "cancelled", "Cancelled"
    HANDED_OFF = "handed_off", "Handed off"
    BUDGET_EXHAUSTED = "budget_exhausted", "Budget exhausted"
    KILLED = "killed", "Killed"


ACTIVE_RUN_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING_APPROVAL)
TERMINAL_RUN_STATUSES = tuple(s for s in RunStatus.values if s not in ACTIVE_RUN_STATUSES)


class FailureClass(models.TextChoices):
    MODEL = "model", "Model"
    TOOL = "tool", "Tool"
    NETWORK = "network", "Network"
    POLICY = "policy", "Policy"
    DATA = "data", "Data"
    LOGIC = "logic", "Logic"


class Tier(models.TextChoices):
    READ = "read", "Read"
    WRITE_LOW = "write_low", "Write (low risk)"
    WRITE_HIGH = "write_high", "Write (high risk)"


class Agent(models.Model):
    """A named, versioned agent definition. Runs pin the version they started with.

    ``tenant`` empty means the definition is shared by every tenant; a tenant-specific
    active version of the same slug wins over the shared one.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("console.Tenant", null=True, blank=True, on_delete=models.PROTECT,
                               related_name="agents")
    slug = models.SlugField(max_length=64)
    version = models.PositiveIntegerField()
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    model_route = models.JSONField(default=list)  # ordered route names, first is primary
    allowed_tools = models.JSONField(default=list)
    intents = models.JSONField(default=list)
    max_steps = models.PositiveIntegerField(default=12)
    max_tokens = models.PositiveIntegerField(default=20_000)
    max_wall_seconds = models.FloatField(default=300.0)
    max_cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=1)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "slug", "version"], name="uniq_agent_version"),
            models.UniqueConstraint(fields=["slug"], condition=Q(is_active=True, tenant__isnull=True),
                                    name="one_active_shared_agent_per_slug"),
            models.UniqueConstraint(fields=["tenant", "slug"],
                                    condition=Q(is_active=True, tenant__isnull=False),
                                    name="one_active_tenant_agent_per_slug"),
            models.CheckConstraint(condition=Q(max_steps__gt=0) & Q(max_tokens__gt=0)
                                   & Q(max_wall_seconds__gt=0) & Q(max_cost_usd__gt=0),
                                   name="agent_budgets_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.slug} v{self.version}"


class AgentRun(models.Model):
    """The durable record of one task. Steps are persisted one by one."""

    id = models.BigAutoField(primary_key=True)
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    tenant = models.ForeignKey("console.Tenant", on_delete=models.PROTECT, related_name="runs")
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="runs")
    intent = models.CharField(max_length=64)
    input = models.JSONField(default=dict)
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                  on_delete=models.SET_NULL, related_name="+")
    requester_label = models.CharField(max_length=150)
    on_behalf_of = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                     on_delete=models.SET_NULL, related_name="+")
    on_behalf_of_label = models.CharField(max_length=150, blank=True)
    trace_id = models.CharField(max_length=32, db_index=True)
    policy_version = models.PositiveIntegerField(null=True, blank=True)  # active at start
    # budgets (hard stops) and usage
    max_steps = models.PositiveIntegerField()
    max_tokens = models.PositiveIntegerField()
    max_wall_seconds = models.FloatField()
    max_cost_usd = models.DecimalField(max_digits=12, decimal_places=6)
    steps_used = models.PositiveIntegerField(default=0)
    tokens_used = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    wall_ms = models.FloatField(default=0)  # working time; time parked for approval excluded
    status = models.CharField(max_length=20, choices=RunStatus.choices, default=RunStatus.QUEUED)
    terminal_reason = models.TextField(blank=True)
    failure_class = models.CharField(max_length=16, blank=True)
    result = models.JSONField(null=True, blank=True)
    # planner state: observations so far and the action being carried out
    state = models.JSONField(default=dict)
    next_seq = models.PositiveIntegerField(default=1)
    # the lease a worker holds while it executes steps (a fencing token)
    lease_token = models.CharField(max_length=32, blank=True)
    lease_owner = models.CharField(max_length=255, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)  # worker pick-ups
    # API idempotency: same requester + key + body returns the same run
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_hash = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=RunStatus.values), name="run_status_valid"),
            models.CheckConstraint(condition=Q(failure_class="") | Q(failure_class__in=FailureClass.values),
                                   name="run_failure_class_valid"),
            models.CheckConstraint(
                condition=Q(status__in=ACTIVE_RUN_STATUSES) | ~Q(terminal_reason=""),
                name="run_terminal_has_reason"),
            models.UniqueConstraint(fields=["requester", "idempotency_key"],
                                    condition=Q(idempotency_key__isnull=False),
                                    name="uniq_run_idempotency_key_per_requester"),
        ]
        indexes = [
            # serves: the sweeper ("running/queued runs whose lease expired"). Only the few
            # active runs, and not lease_expires_at: a step renews the lease, and an update
            # that changes no indexed column can be HOT (no index entry per step).
            models.Index(fields=["status"], name="run_active_status",
                         condition=Q(status__in=["queued", "running"])),
            # serves: run lists per tenant, newest first
            models.Index(fields=["tenant", "-created_at"], name="run_tenant_created"),
        ]
        triggers = [
            pgtrigger.Protect(
                name="run_final_status_is_final", operation=pgtrigger.Update,
                condition=pgtrigger.Q(old__status__in=list(TERMINAL_RUN_STATUSES))
                & pgtrigger.Q(old__status__df=pgtrigger.F("new__status")),
            ),
        ]

    def __str__(self) -> str:
        return f"run {self.public_id}"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_RUN_STATUSES


class StepKind(models.TextChoices):
    MODEL = "model", "Model call"
    TOOL = "tool", "Tool call"
    APPROVAL = "approval", "Approval"
    CONTROL = "control", "Control (switch, budget, terminal)"


class Step(models.Model):
    """One persisted step of a run: a model call, a tool span, an approval wait."""

    id = models.BigAutoField(primary_key=True)
    # no index of its own: uniq_step_run_seq (run, seq) serves every lookup by run
    run = models.ForeignKey(AgentRun, on_delete=models.CASCADE, related_name="steps", db_index=False)
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=StepKind.choices)
    name = models.CharField(max_length=64, blank=True)
    trace_id = models.CharField(max_length=32)
    span_id = models.CharField(max_length=16)
    parent_span_id = models.CharField(max_length=16, blank=True)
    input = models.JSONField(default=dict)  # redacted
    output = models.JSONField(default=dict)  # redacted, bounded
    ok = models.BooleanField(default=True)
    failure_class = models.CharField(max_length=16, blank=True)
    started_at = models.DateTimeField()
    duration_ms = models.FloatField(default=0)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    model = models.CharField(max_length=120, blank=True)
    prompt_hash = models.CharField(max_length=64, blank=True)
    policy_decision = models.CharField(max_length=20, blank=True)
    policy_version = models.PositiveIntegerField(null=True, blank=True)
    policy_rule = models.CharField(max_length=64, blank=True)
    invocation = models.ForeignKey("ToolInvocation", null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="steps")

    class Meta:
        ordering = ["run", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["run", "seq"], name="uniq_step_run_seq"),
            models.CheckConstraint(condition=Q(kind__in=StepKind.values), name="step_kind_valid"),
            models.CheckConstraint(condition=Q(failure_class="") | Q(failure_class__in=FailureClass.values),
                                   name="step_failure_class_valid"),
        ]


class InvocationState(models.TextChoices):
    PROPOSED = "proposed", "Proposed"
    AWAITING_APPROVAL = "awaiting_approval", "Awaiting approval"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    STARTED = "started", "Started (in flight)"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    REFUSED = "refused", "Refused before execution"
    DENIED = "denied", "Denied by policy"


class ToolInvocation(models.Model):
    """One proposed or executed tool call. The idempotency key is unique: a redelivered
    message, a retry or a resumed run finds the row and returns its stored result."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # no index of its own: uniq_invocation_run_step (run, step_seq) serves lookups by run
    run = models.ForeignKey(AgentRun, on_delete=models.PROTECT, related_name="invocations",
                            db_index=False)
    tenant = models.ForeignKey("console.Tenant", on_delete=models.PROTECT, related_name="+")
    step_seq = models.PositiveIntegerField()  # the model step that proposed it
    tool = models.CharField(max_length=64)
    tier = models.CharField(max_length=16, choices=Tier.choices)
    arguments = models.JSONField(default=dict)  # canonical (sorted keys) arguments
    arg_hash = models.CharField(max_length=64)
    idempotency_key = models.CharField(max_length=80)
    decision = models.CharField(max_length=20, blank=True)
    decision_reason = models.TextField(blank=True)
    policy_version = models.PositiveIntegerField(null=True, blank=True)
    state = models.CharField(max_length=20, choices=InvocationState.choices,
                             default=InvocationState.PROPOSED)
    attempts = models.PositiveIntegerField(default=0)
    holder = models.CharField(max_length=32, blank=True)  # run lease token of the executor
    result = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    failure_class = models.CharField(max_length=16, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["idempotency_key"], name="uniq_invocation_idempotency_key"),
            # One proposed action per model step: a re-planned step cannot act twice.
            models.UniqueConstraint(fields=["run", "step_seq"], name="uniq_invocation_run_step"),
            models.CheckConstraint(condition=Q(state__in=InvocationState.values),
                                   name="invocation_state_valid"),
            models.CheckConstraint(condition=Q(tier__in=Tier.values), name="invocation_tier_valid"),
        ]


class Policy(models.Model):
    """Versioned policy rules as data. Exactly one version is active."""

    id = models.BigAutoField(primary_key=True)
    version = models.PositiveIntegerField(unique=True)
    description = models.CharField(max_length=200, blank=True)
    rules = models.JSONField()
    is_active = models.BooleanField(default=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-version"]
        constraints = [
            models.UniqueConstraint(fields=["is_active"], condition=Q(is_active=True),
                                    name="exactly_one_active_policy"),
        ]

    def __str__(self) -> str:
        return f"policy v{self.version}"


class SwitchScope(models.TextChoices):
    TOOL = "tool", "Disable a tool"
    INTENT = "intent", "Route an intent to humans"
    MEMORY = "memory", "Freeze memory refresh"
    APPROVAL = "approval", "Force approval (tier or tool)"
    AGENT = "agent", "Pause an agent"
    GLOBAL = "global", "Stop everything"


class KillSwitch(models.Model):
    """The authoritative switch state. Workers read it before every step and again right
    before a tool runs; credit writes re-read it inside their own transaction."""

    id = models.BigAutoField(primary_key=True)
    scope = models.CharField(max_length=16, choices=SwitchScope.choices)
    target = models.CharField(max_length=64, blank=True)  # "" for global
    engaged = models.BooleanField(default=False)
    reason = models.TextField(blank=True)
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    changed_by_label = models.CharField(max_length=150, blank=True)
    changed_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["scope", "target"]
        constraints = [
            models.UniqueConstraint(fields=["scope", "target"], name="uniq_switch_scope_target"),
            models.CheckConstraint(condition=Q(scope__in=SwitchScope.values), name="switch_scope_valid"),
            models.CheckConstraint(condition=~Q(scope="global") | Q(target=""),
                                   name="switch_global_has_no_target"),
            models.CheckConstraint(condition=Q(engaged=False) | ~Q(reason=""),
                                   name="switch_engaged_has_reason"),
        ]
        indexes = [
            # serves: switches_active_for (engaged switches only; a handful of rows)
            models.Index(fields=["scope", "target"], condition=Q(engaged=True),
                         name="switch_engaged"),
        ]

    def __str__(self) -> str:
        return f"{self.scope}:{self.target or '*'}"


class TenantBudget(models.Model):
    """A tenant's daily model spend cap (USD). Without a row, settings.AGENT_TENANT_DAILY_CAP_USD."""

    tenant = models.OneToOneField("console.Tenant", on_delete=models.CASCADE, related_name="budget")
    daily_cap_usd = models.DecimalField(max_digits=12, decimal_places=6)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(daily_cap_usd__gte=0), name="tenant_budget_nonnegative"),
        ]


class TenantSpend(models.Model):
    """Model spend reserved per tenant per UTC day. Reservations are conditional UPDATEs
    (``spent + estimate <= cap``), so concurrent runs cannot overspend the cap."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey("console.Tenant", on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    cap_usd = models.DecimalField(max_digits=12, decimal_places=6)
    spent_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "day"], name="uniq_tenant_spend_day"),
            models.CheckConstraint(condition=Q(spent_usd__lte=models.F("cap_usd")),
                                   name="tenant_spend_within_cap"),
        ]
