"""Reads for the operator console: the dashboard, the run list, switch history.

Aggregates are computed over a bounded window (``window`` hours, default 24) so the
dashboard costs the same on a busy day and a quiet one; percentiles are computed in Python
over at most ``MAX_SAMPLE`` runs of each task type (newest first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from agents.approval_subject import requests_of
from agents.models import ACTIVE_RUN_STATUSES, AgentRun, KillSwitch, RunStatus, TenantSpend
from console.models import Tenant, TenantMembership
from console.roles import ADMIN, has_role

MAX_SAMPLE = 2000
RUN_PAGE = 50

STATUS_COLOURS = {
    "queued": "#8a94a6",
    "running": "#2557c7",
    "waiting_approval": "#a15c00",
    "succeeded": "#17803d",
    "failed": "#b3261e",
    "denied": "#7b2d8b",
    "cancelled": "#5b6573",
    "handed_off": "#c77d25",
    "budget_exhausted": "#9c4221",
    "killed": "#1d232b",
}


def visible_tenants(user) -> QuerySet[Tenant]:
    """Tenants whose runs the user may see in the console (admins: all)."""
    if has_role(user, ADMIN):
        return Tenant.objects.all()
    return Tenant.objects.filter(pk__in=TenantMembership.objects.filter(user=user).values("tenant_id"))


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Bar:
    label: str
    value: float
    display: str
    width: float  # 0..100, share of the largest bar
    colour: str = "#2557c7"
    limit: float | None = None  # 0..100 position of a limit marker


def _bars(items: list[tuple[str, float, str, str]]) -> list[Bar]:
    top = max((v for _, v, _, _ in items), default=0) or 1
    return [Bar(n, v, shown, round(100 * v / top, 2), colour) for n, v, shown, colour in items]


def dashboard_data(*, user, window_hours: int = 24) -> dict[str, Any]:
    now = timezone.now()
    since = now - timedelta(hours=window_hours)
    tenants = visible_tenants(user)
    runs = AgentRun.objects.filter(tenant__in=tenants)
    recent = runs.filter(created_at__gte=since)

    by_status = dict(recent.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    # Active runs count however old they are: a run stuck for two days is exactly news.
    for status, n in (
        runs.filter(status__in=ACTIVE_RUN_STATUSES)
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    ):
        by_status[status] = n
    status_rows = [(s.value, s.label, by_status.get(s.value, 0)) for s in RunStatus]
    status_bars = _bars([(label, n, str(n), STATUS_COLOURS[value]) for value, label, n in status_rows])

    return {
        "window_hours": window_hours,
        "generated_at": now,
        "status_rows": status_rows,
        "status_bars": status_bars,
        "active_total": sum(by_status.get(s, 0) for s in ACTIVE_RUN_STATUSES),
        "task_types": _task_types(recent),
        "spend": _spend(tenants, now),
        "approvals": _approvals(user, now),
        "handoffs": _handoffs(tenants, recent),
        "switches": engaged_switches(),
    }


def _task_types(recent: QuerySet[AgentRun]) -> list[dict[str, Any]]:
    terminal = recent.exclude(status__in=ACTIVE_RUN_STATUSES).exclude(finished_at__isnull=True)
    rows = []
    for intent in sorted(set(terminal.values_list("intent", flat=True))):
        sample = list(
            terminal.filter(intent=intent)
            .order_by("-created_at")
            .values_list("status", "steps_used", "cost_usd", "created_at", "finished_at")[:MAX_SAMPLE]
        )
        succeeded = [r for r in sample if r[0] == RunStatus.SUCCEEDED]
        latencies = [(r[4] - r[3]).total_seconds() for r in sample]
        total_cost = sum((r[2] for r in sample), Decimal(0))
        rows.append(
            {
                "intent": intent,
                "runs": len(sample),
                "succeeded": len(succeeded),
                "success_rate": len(succeeded) / len(sample) if sample else None,
                "mean_steps": sum(r[1] for r in sample) / len(sample) if sample else None,
                "p50": percentile(latencies, 50),
                "p95": percentile(latencies, 95),
                # every run's spend counts, so failures make success more expensive
                "cost_per_success": (total_cost / len(succeeded)) if succeeded else None,
                "total_cost": total_cost,
            }
        )
    return rows


def _spend(tenants: QuerySet[Tenant], now) -> list[dict[str, Any]]:
    from agents.services.spend import spend_daily_cap

    today = now.date()
    rows = {r.tenant_id: r for r in TenantSpend.objects.filter(tenant__in=tenants, day=today)}
    tokens = dict(
        AgentRun.objects.filter(tenant__in=tenants, created_at__date=today)
        .values_list("tenant_id")
        .annotate(t=Sum("tokens_used"))
        .values_list("tenant_id", "t")
    )
    out = []
    for tenant in tenants.order_by("slug"):
        row = rows.get(tenant.pk)
        cap = row.cap_usd if row else spend_daily_cap(tenant.pk)
        spent = row.spent_usd if row else Decimal(0)
        share = float(spent / cap * 100) if cap else 0.0
        out.append(
            {
                "tenant": tenant.slug,
                "spent": spent,
                "cap": cap,
                "tokens": tokens.get(tenant.pk) or 0,
                "share": round(min(share, 100.0), 2),
                "state": "bad" if share >= 90 else "warn" if share >= 70 else "ok",
            }
        )
    return out


def _approvals(user, now) -> dict[str, Any]:
    """The approvals panel: the review queues the user holds a permission on, and every
    queue for operators, who watch queue SLAs (``approvals.selectors.watched_queue_ids``);
    in them only the requests of the user's tenants (``approvals.selectors.queue_overview``).
    Counts and SLA state only: a queue links to the approval page only where the user may
    open it."""
    from approvals.selectors import queue_overview

    queues = queue_overview(user, now=now, watch=True)
    return {
        "reviews": any(q["reviewable"] for q in queues),
        "open": sum(q["pending"] for q in queues),
        "breached": sum(q["breached"] for q in queues),
        "near": sum(q["near"] for q in queues),
        "queues": queues,
        "next_due": min((q["next_due"] for q in queues if q["next_due"]), default=None),
    }


def _handoffs(tenants: QuerySet[Tenant], recent: QuerySet[AgentRun]) -> dict[str, Any]:
    """Open handoffs from the approvals app's Handoff model when it exists; the handed-off
    runs of the window either way."""
    handed_off = recent.filter(status=RunStatus.HANDED_OFF)
    result: dict[str, Any] = {
        "runs": handed_off.count(),
        "open": None,
        "latest": list(handed_off.select_related("tenant").order_by("-finished_at")[:5]),
    }
    try:
        from approvals.models import Handoff  # built by the approvals work (issue 6)
    except ImportError:
        return result
    try:
        qs = Handoff.objects.filter(tenant__in=tenants)
        status_field = next((f for f in ("status", "state") if hasattr(Handoff, f)), None)
        if status_field:
            qs = qs.exclude(**{f"{status_field}__in": ["resolved", "closed", "done"]})
        result["open"] = qs.count()
    except Exception:  # the model's shape is not settled yet: show runs only
        result["open"] = None
    return result


def engaged_switches() -> list[KillSwitch]:
    from agents.services.switches import switches_engaged

    return sorted(switches_engaged(), key=lambda s: (s.scope, s.target))


# --- runs -------------------------------------------------------------------------------

RUN_FILTERS = ("status", "intent", "tenant", "agent", "q")


def run_list(*, user, params: dict[str, str], limit: int = RUN_PAGE) -> dict[str, Any]:
    """Runs the user may see, newest first, filtered. ``q`` matches a run id or trace id."""
    import uuid

    runs = AgentRun.objects.filter(tenant__in=visible_tenants(user)).select_related("tenant", "agent")
    problems = []
    if params.get("status"):
        if params["status"] == "active":
            runs = runs.filter(status__in=ACTIVE_RUN_STATUSES)
        elif params["status"] in RunStatus.values:
            runs = runs.filter(status=params["status"])
        else:
            problems.append(f"Unknown status {params['status']!r}.")
    if params.get("intent"):
        runs = runs.filter(intent=params["intent"])
    if params.get("tenant"):
        runs = runs.filter(tenant__slug=params["tenant"])
    if params.get("agent"):
        runs = runs.filter(agent__slug=params["agent"])
    q = (params.get("q") or "").strip()
    if q:
        match = Q(trace_id=q.lower())
        try:  # a trace id is 32 hex digits, which also parses as a UUID: match either
            match |= Q(public_id=uuid.UUID(q))
        except ValueError:
            pass
        runs = runs.filter(match)
    rows = list(runs.order_by("-created_at")[: limit + 1])
    return {"runs": rows[:limit], "more": len(rows) > limit, "problems": problems}


def run_timeline(run: AgentRun) -> dict[str, Any]:
    """The trace as a timeline: each step with its offset and duration as shares of the
    run's span (for the bars), the policy decision and the approval waits."""
    steps = list(run.steps.select_related("invocation").order_by("seq"))
    start = run.created_at
    end = run.finished_at or timezone.now()
    for s in steps:
        end = max(end, s.started_at + timedelta(milliseconds=s.duration_ms))
    span_ms = max((end - start).total_seconds() * 1000, 1.0)
    items = []
    for s in steps:
        offset = (s.started_at - start).total_seconds() * 1000
        items.append(
            {
                "step": s,
                "offset_ms": offset,
                "left": round(max(0.0, min(100.0, offset / span_ms * 100)), 3),
                "width": round(max(0.4, min(100.0, s.duration_ms / span_ms * 100)), 3),
                "messages": (s.input or {}).get("messages") if s.kind == "model" else None,
            }
        )
    waits = []
    for r in requests_of(run).select_related("queue").order_by("created_at"):
        until = r.decided_at or timezone.now()
        waits.append(
            {
                "request": r,
                "wait_s": (until - r.created_at).total_seconds(),
                "left": round(max(0.0, (r.created_at - start).total_seconds() * 1000 / span_ms * 100), 3),
                "width": round(max(0.4, (until - r.created_at).total_seconds() * 1000 / span_ms * 100), 3),
            }
        )
    elapsed = (end - (run.started_at or run.created_at)).total_seconds() if run.started_at else 0.0
    return {
        "items": items,
        "waits": waits,
        "span_ms": span_ms,
        "progress": {
            "steps": run.steps_used,
            "max_steps": run.max_steps,
            "step_share": round(min(100.0, run.steps_used / run.max_steps * 100), 1) if run.max_steps else 0,
            "working_s": run.wall_ms / 1000,
            "elapsed_s": elapsed,
            "max_wall_s": run.max_wall_seconds,
            "wall_share": round(min(100.0, run.wall_ms / 1000 / run.max_wall_seconds * 100), 1),
            "tokens": run.tokens_used,
            "max_tokens": run.max_tokens,
        },
    }


# --- switch history (from the audit log) ------------------------------------------------


def switch_history(*, limit: int = 50) -> list[Any]:
    from audit.models import AuditEvent

    return list(
        AuditEvent.objects.filter(
            action__in=["switch.engaged", "switch.released", "switch.expired"]
        ).order_by("-seq")[:limit]
    )
