"""Reads for the approval page, the API and the metrics.

Visibility is computed once per request as the set of queue ids the user holds
``view_reviewqueue`` or ``decide_reviewqueue`` on (guardian's ``get_objects_for_user``: one
query over the permission tables, a few dozen ids at most), plus the tenants the user
belongs to. Every list then filters ``queue_id IN (...)`` in SQL, served by the index
(queue, status, due_at): no per-object permission checks in Python.
"""

from __future__ import annotations

import base64
import json
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Min, Q, QuerySet
from django.utils import timezone
from guardian.shortcuts import get_objects_for_user

from approvals.models import ApprovalRequest, ApprovalStatus, ReviewQueue
from approvals.subjects import HANDLERS
from console.errors import InvalidInput
from console.models import Tenant
from console.roles import ADMIN, OPERATOR, has_role

VIEW_PERMS = ["approvals.view_reviewqueue", "approvals.decide_reviewqueue"]


def visible_queue_ids(user, *, decide: bool = False) -> list[uuid.UUID]:
    """Ids of the queues ``user`` may see (or decide in, with ``decide=True``)."""
    if not getattr(user, "is_authenticated", False):
        return []
    cache_attr = "_approval_decide_queues" if decide else "_approval_view_queues"
    cached = getattr(user, cache_attr, None)
    if cached is None:
        perms = ["approvals.decide_reviewqueue"] if decide else VIEW_PERMS
        cached = list(
            get_objects_for_user(
                user, perms, klass=ReviewQueue, any_perm=True, accept_global_perms=False
            ).values_list("pk", flat=True)
        )
        setattr(user, cache_attr, cached)
    return cached


def member_tenant_ids(user) -> list | None:
    """Tenants whose requests ``user`` may see; None means every tenant (admins)."""
    if user.is_superuser or has_role(user, ADMIN):
        return None
    from console.models import TenantMembership

    return list(TenantMembership.objects.filter(user=user).values_list("tenant_id", flat=True))


def of_tenants(qs: QuerySet, tenants: list | None) -> QuerySet:
    """``qs`` (requests, handoffs) narrowed to ``tenants`` as ``member_tenant_ids`` gives
    them (None: every tenant). Queues are shared by tenants: every list and figure of
    requests goes through this."""
    return qs if tenants is None else qs.filter(tenant_id__in=tenants)


def requests_visible_to(user) -> QuerySet[ApprovalRequest]:
    qs = ApprovalRequest.objects.filter(queue_id__in=visible_queue_ids(user))
    return of_tenants(qs, member_tenant_ids(user))


def sla_state(request: ApprovalRequest, now: datetime | None = None) -> str:
    """ok | near | breached (escalated or overdue) | closed."""
    if request.status != ApprovalStatus.PENDING:
        return "closed"
    now = now or timezone.now()
    if request.escalated_at is not None or request.due_at <= now:
        return "breached"
    if request.flagged_at is not None or (request.near_due_at and request.near_due_at <= now):
        return "near"
    return "ok"


@dataclass
class ListFilters:
    status: str = ApprovalStatus.PENDING
    queue: str = ""
    tier: str = ""
    sla: str = ""
    claimed: str = ""
    tool: str = ""


SLA_FILTERS = ("", "ok", "near", "breached")
CLAIM_FILTERS = ("", "mine", "unclaimed", "others")


def parse_filters(data: dict[str, Any]) -> ListFilters:
    f = ListFilters(
        status=(data.get("status") or ApprovalStatus.PENDING).strip(),
        queue=(data.get("queue") or "").strip(),
        tier=(data.get("tier") or "").strip(),
        sla=(data.get("sla") or "").strip(),
        claimed=(data.get("claimed") or "").strip(),
        tool=(data.get("tool") or "").strip(),
    )
    if f.status not in (*ApprovalStatus.values, "all"):
        raise InvalidInput(f"status must be one of {', '.join(ApprovalStatus.values)} or all.")
    if f.tier not in ("", "read", "write_low", "write_high"):
        raise InvalidInput("tier must be read, write_low or write_high.")
    if f.sla not in SLA_FILTERS:
        raise InvalidInput("sla must be ok, near or breached.")
    if f.claimed not in CLAIM_FILTERS:
        raise InvalidInput("claimed must be mine, unclaimed or others.")
    return f


def request_list(user, filters: ListFilters, *, now: datetime | None = None) -> QuerySet[ApprovalRequest]:
    """The requests ``user`` may see, oldest-due first, filtered."""
    now = now or timezone.now()
    qs = requests_visible_to(user)
    if filters.status != "all":
        qs = qs.filter(status=filters.status)
    if filters.queue:
        qs = qs.filter(queue__slug=filters.queue)
    if filters.tier:
        qs = qs.filter(risk_tier=filters.tier)
    if filters.tool:
        qs = qs.filter(tool=filters.tool)
    if filters.sla == "breached":
        qs = qs.filter(Q(escalated_at__isnull=False) | Q(due_at__lte=now))
    elif filters.sla == "near":
        qs = qs.filter(escalated_at__isnull=True, due_at__gt=now).filter(
            Q(flagged_at__isnull=False) | Q(near_due_at__lte=now)
        )
    elif filters.sla == "ok":
        qs = qs.filter(escalated_at__isnull=True, flagged_at__isnull=True, near_due_at__gt=now)
    live_claim = Q(claimed_by__isnull=False, claim_expires_at__gt=now)
    if filters.claimed == "mine":
        qs = qs.filter(live_claim, claimed_by=user)
    elif filters.claimed == "unclaimed":
        qs = qs.exclude(live_claim)
    elif filters.claimed == "others":
        qs = qs.filter(live_claim).exclude(claimed_by=user)
    return qs.select_related("queue", "claimed_by").order_by("due_at", "id")


def encode_cursor(request: ApprovalRequest) -> str:
    raw = json.dumps([request.due_at.isoformat(), str(request.id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def after_cursor(qs: QuerySet[ApprovalRequest], cursor: str) -> QuerySet[ApprovalRequest]:
    """Keyset pagination on (due_at, id)."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        due, pk = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not (isinstance(due, str) and isinstance(pk, str)):
            raise ValueError("cursor parts are not strings")
        due_at, pk = datetime.fromisoformat(due), uuid.UUID(pk)
        if due_at.tzinfo is None:
            raise ValueError("cursor time has no time zone")
    except (ValueError, TypeError):
        raise InvalidInput("cursor is not valid; use the next_cursor of the previous page.") from None
    return qs.filter(Q(due_at__gt=due_at) | Q(due_at=due_at, id__gt=pk))


def watched_queue_ids(user) -> list[uuid.UUID]:
    """Queues whose SLA figures ``user`` may watch: the queues they may see, and every
    queue for operators, who watch queue SLAs without reviewing (counts and SLA state
    only: opening a queue or a request still needs a permission on the queue)."""
    if has_role(user, OPERATOR):
        return list(ReviewQueue.objects.values_list("pk", flat=True))
    return visible_queue_ids(user)


def queue_overview(user, *, now: datetime | None = None, watch: bool = False) -> list[dict[str, Any]]:
    """The user's queues with pending counts, SLA state and whether intake is throttled
    (two aggregate queries over the pending rows of those queues). ``watch``: the queues
    of ``watched_queue_ids`` (the dashboard); each row says whether the user may open the
    queue (``reviewable``).

    Queues are shared by tenants and capacity counts every tenant's requests, so
    ``throttled`` says whether intake is refused; the counts are the user's tenants' only.
    ``pending_all`` (every tenant's pending requests, the capacity use) is None unless the
    user sees every tenant (admins, or a member of all of them): a reviewer of one tenant
    does not learn another tenant's volume."""
    now = now or timezone.now()
    visible = set(visible_queue_ids(user))
    ids = watched_queue_ids(user) if watch else list(visible)
    queues = list(ReviewQueue.objects.filter(pk__in=ids).select_related("escalation_queue"))
    pending = ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING, queue_id__in=ids)
    totals = {row["queue_id"]: row["n"] for row in pending.values("queue_id").annotate(n=Count("id"))}
    tenants = member_tenant_ids(user)
    mine = of_tenants(pending, tenants)
    sees_every_tenant = tenants is None or len(set(tenants)) >= Tenant.objects.count()
    rows = {
        row["queue_id"]: row
        for row in mine.values("queue_id").annotate(
            n=Count("id"),
            near=Count("id", filter=Q(escalated_at__isnull=True, due_at__gt=now, near_due_at__lte=now)),
            breached=Count("id", filter=Q(escalated_at__isnull=False) | Q(due_at__lte=now)),
            oldest=Min("created_at"),
            next_due=Min("due_at"),
        )
    }
    out = []
    for queue in queues:
        row = rows.get(queue.pk, {})
        total = totals.get(queue.pk, 0)
        state = "breached" if row.get("breached") else "near" if row.get("near") else "ok"
        out.append(
            {
                "queue": queue,
                "pending": row.get("n", 0),
                "pending_all": total if sees_every_tenant else None,
                "capacity": queue.capacity,
                "throttled": total >= queue.capacity,
                "near": row.get("near", 0),
                "breached": row.get("breached", 0),
                "oldest": row.get("oldest"),
                "backlog_age": (now - row["oldest"]) if row.get("oldest") else None,
                "next_due": row.get("next_due"),
                "sla_state": state,
                "reviewable": queue.pk in visible,
            }
        )
    return out


def _percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, math.ceil(pct / 100 * len(ordered)) - 1))  # nearest rank
    return ordered[index]


def queue_metrics(user, *, now: datetime | None = None, days: int = 7) -> list[dict[str, Any]]:
    """Per visible queue over the last ``days``: time to decision p50/p95 (minutes),
    decisions, breaches (escalations out of the queue) and backlog age (oldest pending)."""
    now = now or timezone.now()
    since = now - timedelta(days=days)
    ids = visible_queue_ids(user)
    queues = {q.pk: q for q in ReviewQueue.objects.filter(pk__in=ids)}
    durations: dict[Any, list[float]] = {pk: [] for pk in queues}
    # every figure counts only the requests of the user's tenants, like the lists (not
    # requests_visible_to: a breach is counted in the queue it escalated out of)
    scoped = of_tenants(ApprovalRequest.objects.all(), member_tenant_ids(user))
    decided = (
        scoped.filter(
            queue_id__in=ids,
            decided_at__gte=since,
            status__in=[ApprovalStatus.APPROVED, ApprovalStatus.REJECTED],
        )
        .order_by("-decided_at")
        .values_list("queue_id", "created_at", "decided_at")[:20000]
    )
    for queue_id, created, decided_at in decided:
        durations[queue_id].append((decided_at - created).total_seconds() / 60)
    breaches = dict(
        scoped.filter(escalated_from_id__in=ids, escalated_at__gte=since)
        .values("escalated_from_id")
        .annotate(n=Count("id"))
        .values_list("escalated_from_id", "n")
    )
    oldest = dict(
        scoped.filter(queue_id__in=ids, status=ApprovalStatus.PENDING)
        .values("queue_id")
        .annotate(o=Min("created_at"))
        .values_list("queue_id", "o")
    )
    rows = []
    for pk, queue in sorted(queues.items(), key=lambda kv: kv[1].name):
        values = durations[pk]
        rows.append(
            {
                "queue": queue,
                "decisions": len(values),
                "p50": _percentile(values, 50),
                "p95": _percentile(values, 95),
                "breaches": breaches.get(pk, 0),
                "backlog_age_min": (now - oldest[pk]).total_seconds() / 60 if pk in oldest else None,
            }
        )
    return rows


def metrics_chart(rows: list[dict[str, Any]], *, width: int = 560, bar: int = 14) -> dict[str, Any]:
    """Geometry for a small server-rendered SVG: per queue, bars for p50, p95 and the
    backlog age on a shared minutes scale."""
    peak = max(
        [v for r in rows for v in (r["p50"], r["p95"], r["backlog_age_min"]) if v is not None] or [1.0]
    )
    label_w, plot_w = 150, width - 150 - 70
    items, y = [], 8
    for r in rows:
        bars = []
        for key, css in (("p50", "p50"), ("p95", "p95"), ("backlog_age_min", "age")):
            value = r[key]
            w = 0 if value is None else max(1, round(plot_w * value / peak))
            bars.append(
                {
                    "y": y,
                    "w": w,
                    "css": css,
                    "label": "—" if value is None else f"{value:.1f} min",
                    "text_x": label_w + w + 4,
                }
            )
            y += bar + 2
        items.append({"row": r, "label_y": y - 2 * (bar + 2) + 4, "bars": bars})
        y += 10
    return {
        "width": width,
        "height": max(y, 40),
        "label_w": label_w,
        "bar": bar,
        "items": items,
        "peak": peak,
    }


def request_decisions(request: ApprovalRequest) -> list:
    return list(request.decisions.select_related("reviewer").order_by("created_at"))


# What the subject's handler shows a reviewer (approvals.subjects). Reads degrade: a kind
# no app handles any more shows without them (deciding one fails closed).


def request_review(request: ApprovalRequest) -> dict[str, Any] | None:
    """The check of the arguments under review, read now (for a run: its tool's review
    hook); None when there is none."""
    handler = HANDLERS.get(request.subject_kind)
    return handler.review(request) if handler else None


def request_trace(request: ApprovalRequest) -> dict[str, Any] | None:
    """The subject's trace (``{"steps": [...]}``), None without one."""
    handler = HANDLERS.get(request.subject_kind)
    return handler.trace(request) if handler else None


def request_trace_url(request: ApprovalRequest) -> str:
    handler = HANDLERS.get(request.subject_kind)
    return handler.trace_url(request) if handler else ""
