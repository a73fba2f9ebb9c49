"""Reads of the audit log: filtered search with keyset pagination, export, approvals view.

Pagination is keyset on ``seq`` (newest first): a page is ``WHERE <filters> AND seq <
cursor ORDER BY seq DESC LIMIT n+1``. Each filter has a ``(column, seq)`` index (see
models.py), so a page costs an index range scan of n rows whatever the depth -- no OFFSET.
The cursor is opaque to clients (base64 of a versioned token), and a bad one is a 422.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from urllib.parse import quote

from django.db.models import QuerySet
from django.utils.dateparse import parse_date, parse_datetime

from audit.actions import ACTIONS
from audit.models import AuditEvent
from console.errors import InvalidInput
from console.models import Tenant

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
EXPORT_BATCH = 2000
TEXT_FILTERS = ("actor", "action", "tenant", "object_type", "object_id", "trace_id")
FILTER_NAMES = (*TEXT_FILTERS, "since", "until")
_MAX_TEXT = {"actor": 150, "action": 64, "tenant": 64, "object_type": 64, "object_id": 64,
             "trace_id": 64}
# What "the side effect that followed" an approval decision can be, in the same trace.
SIDE_EFFECT_ACTIONS = ("credit.applied", "account.status_changed", "tool.executed",
                       "tool.failed", "tool.refused", "tool.replayed")


@dataclass(frozen=True)
class EventFilters:
    actor: str = ""
    action: str = ""
    tenant: str = ""
    object_type: str = ""
    object_id: str = ""
    trace_id: str = ""
    since: datetime | None = None
    until: datetime | None = None
    tenant_id: object = None  # resolved from the slug

    def as_params(self) -> dict[str, str]:
        """The filters as query parameters (for links and the export event)."""
        out = {name: getattr(self, name) for name in TEXT_FILTERS if getattr(self, name)}
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.isoformat()
        return out


@dataclass
class Page:
    events: list[AuditEvent]
    next_cursor: str | None
    limit: int
    filters: EventFilters = field(default_factory=EventFilters)


def _parse_time(name: str, raw: str, problems: list[str]) -> datetime | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        value = parse_datetime(raw.replace(" ", "T", 1) if "T" not in raw and " " in raw else raw)
    except ValueError:
        value = None
    if value is None:
        try:
            day = parse_date(raw)
        except ValueError:
            day = None
        if day is not None:
            value = datetime.combine(day, time.min)
    if value is None:
        problems.append(f"{name}={raw!r} is not an ISO 8601 date or date-time "
                        "(e.g. 2026-03-01 or 2026-03-01T09:30:00Z)")
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # the console and API speak UTC
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        problems.append(f"{name}={raw!r} is outside the dates this log can hold")
        return None


def parse_filters(params: Mapping[str, object]) -> EventFilters:
    """Validate search filters from query parameters; every problem in one clear 422."""
    problems: list[str] = []
    values: dict[str, object] = {}
    for name in TEXT_FILTERS:
        raw = params.get(name)
        text = "" if raw is None else str(raw).strip()
        if len(text) > _MAX_TEXT[name]:
            problems.append(f"{name} is longer than {_MAX_TEXT[name]} characters")
        if "\x00" in text:
            problems.append(f"{name} contains a NUL character")
        values[name] = text
    if values["action"] and values["action"] not in ACTIONS:
        problems.append(f"action={values['action']!r} is not a known audit action (e.g. "
                        "approval.decided, credit.applied; see audit/actions.py)")
    since = _parse_time("since", str(params.get("since") or ""), problems)
    until = _parse_time("until", str(params.get("until") or ""), problems)
    if since and until and since >= until:
        problems.append("since must be earlier than until (since is inclusive, until exclusive)")
    tenant_id = None
    if values["tenant"] and not problems:
        tenant_id = Tenant.objects.filter(slug=values["tenant"]).values_list("pk", flat=True).first()
        if tenant_id is None:
            problems.append(f"tenant={values['tenant']!r} is not a known tenant slug")
    if problems:
        raise InvalidInput("Invalid audit search: " + "; ".join(problems) + ".",
                           code="invalid_filter")
    return EventFilters(since=since, until=until, tenant_id=tenant_id, **values)


def parse_limit(raw: object, default: int = DEFAULT_LIMIT) -> int:
    if raw in (None, ""):
        return default
    try:
        value = int(str(raw))
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise InvalidInput(f"limit={raw!r} must be an integer from 1 to {MAX_LIMIT}.",
                           code="invalid_filter")
    return value


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    bad = InvalidInput("cursor is not valid: pass back the next_cursor value of a previous "
                       "page unchanged, or omit it for the newest events.", code="invalid_cursor")
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    version, _, number = text.partition(":")
    if version != "v1" or not number.isdigit() or int(number) < 1:
        raise bad
    return int(number)


def filtered_events(filters: EventFilters) -> QuerySet[AuditEvent]:
    qs = AuditEvent.objects.all()
    if filters.actor:
        qs = qs.filter(actor_label=filters.actor)
    if filters.action:
        qs = qs.filter(action=filters.action)
    if filters.tenant:
        qs = qs.filter(tenant_id=filters.tenant_id)
    if filters.object_type:
        qs = qs.filter(object_type=filters.object_type)
    if filters.object_id:
        qs = qs.filter(object_id=filters.object_id)
    if filters.trace_id:
        qs = qs.filter(trace_id=filters.trace_id)
    if filters.since:
        qs = qs.filter(occurred_at__gte=filters.since)
        if filters.since > datetime.min.replace(tzinfo=UTC) + TIME_SLACK:
            first = _first_seq_at_or_after(filters.since - TIME_SLACK)
            qs = qs.filter(seq__gte=first) if first is not None else qs.none()
    if filters.until:
        qs = qs.filter(occurred_at__lt=filters.until)
        if filters.until < datetime.max.replace(tzinfo=UTC) - TIME_SLACK:
            beyond = _first_seq_at_or_after(filters.until + TIME_SLACK)
            if beyond is not None:
                qs = qs.filter(seq__lt=beyond)
    return qs


# A time window is also translated into a seq range, so a window with no other filter is a
# primary-key range scan in seq order instead of "every row of the window, then sort by
# seq" (or a backwards scan of the whole table from the newest row until the window is
# reached). It relies on occurred_at following seq: both are assigned under the chain lock,
# occurred_at by one clock (PostgreSQL's clock_timestamp(); SQLite: the one host's clock).
# The bounds are widened by TIME_SLACK so a clock stepped back by less than that (NTP) or
# equal timestamps cannot drop an event; the occurred_at conditions above keep the result
# exact. See docs/audit.md.
TIME_SLACK = timedelta(seconds=60)


def _first_seq_at_or_after(moment: datetime) -> int | None:
    """One probe of the occurred_at index: the event that opens the range."""
    return (AuditEvent.objects.filter(occurred_at__gte=moment).order_by("occurred_at")
            .values_list("seq", flat=True).first())


def event_search(*, filters: EventFilters, cursor: str | None = None,
                 limit: int = DEFAULT_LIMIT) -> Page:
    """One page of events, newest first, and the cursor of the next (older) page."""
    qs = filtered_events(filters).select_related("tenant")
    if cursor:
        qs = qs.filter(seq__lt=decode_cursor(cursor))
    rows = list(qs.order_by("-seq")[: limit + 1])
    next_cursor = encode_cursor(rows[limit - 1].seq) if len(rows) > limit else None
    events = rows[:limit]
    for event in events:
        annotate_links(event)
    return Page(events=events, next_cursor=next_cursor, limit=limit, filters=filters)


def iter_events(*, filters: EventFilters, batch_size: int = EXPORT_BATCH) -> Iterator[AuditEvent]:
    """Every matching event, oldest first, in keyset batches (constant memory)."""
    base = filtered_events(filters).select_related("tenant").order_by("seq")
    last = 0
    while True:
        batch = list(base.filter(seq__gt=last)[:batch_size])
        if not batch:
            return
        yield from batch
        last = batch[-1].seq


def event_as_dict(event: AuditEvent) -> dict:
    return {
        "seq": event.seq,
        "event_id": str(event.event_id),
        "occurred_at": event.occurred_at.isoformat(timespec="microseconds"),
        "actor_type": event.actor_type,
        "actor_id": event.actor_id,
        "actor_label": event.actor_label,
        "action": event.action,
        "tenant": event.tenant.slug if event.tenant_id else None,
        "tenant_id": str(event.tenant_id) if event.tenant_id else None,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "trace_id": event.trace_id,
        "policy_version": event.policy_version,
        "payload": event.payload,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


# --- links to the rest of the console ---------------------------------------------------


def _payload_str(event: AuditEvent, key: str) -> str:
    payload = event.payload if isinstance(event.payload, dict) else {}
    value = payload.get(key)
    return str(value) if isinstance(value, (str, int)) and str(value) else ""


def annotate_links(event: AuditEvent) -> AuditEvent:
    """Attach ``run_id``/``run_url``, ``approval_id``/``approval_url``, ``trace_url``."""
    run_id = ""
    if event.object_type == "run":
        run_id = event.object_id
    run_id = run_id or _payload_str(event, "run_id")
    if not run_id and event.actor_type == "run":
        run_id = event.actor_id
    approval_id = ""
    if event.object_type in ("approval", "approval_request"):
        approval_id = event.object_id
    approval_id = approval_id or _payload_str(event, "request_id")
    event.run_id = run_id
    event.run_url = f"/runs/{quote(run_id, safe='')}/" if run_id else ""
    event.approval_id = approval_id
    event.approval_url = f"/approvals/{quote(approval_id, safe='')}/" if approval_id else ""
    event.trace_url = f"/audit/?trace_id={quote(event.trace_id, safe='')}" if event.trace_id else ""
    return event


# --- who approved what ------------------------------------------------------------------


@dataclass
class Decision:
    event: AuditEvent
    reviewer: str
    decision: str
    reason: str
    tool: str
    arguments: object
    edited: bool | None
    requested_by: str = ""
    effects: list[AuditEvent] = field(default_factory=list)


def _decision_of(event: AuditEvent) -> Decision:
    payload = event.payload if isinstance(event.payload, dict) else {}
    edited = payload.get("edited")
    return Decision(
        event=annotate_links(event),
        reviewer=event.actor_label,
        decision=str(payload.get("decision") or ""),
        reason=str(payload.get("reason") or ""),
        tool=str(payload.get("tool") or ""),
        arguments=payload.get("arguments"),
        edited=edited if isinstance(edited, bool) else None,
    )


def approval_decisions(*, filters: EventFilters, cursor: str | None = None,
                       limit: int = DEFAULT_LIMIT) -> tuple[list[Decision], str | None]:
    """``approval.decided`` events, newest first, each with what followed in its trace.

    The side effects are the ``SIDE_EFFECT_ACTIONS`` events of the same trace after the
    decision and before the trace's next decision; the requester is the actor of the
    trace's ``run.created`` event. Two queries for the whole page (trace index).
    """
    forced = replace(filters, action="approval.decided")
    page = event_search(filters=forced, cursor=cursor, limit=limit)
    decisions = [_decision_of(event) for event in page.events]
    traces = {d.event.trace_id for d in decisions if d.event.trace_id}
    if traces:
        related = (AuditEvent.objects
                   .filter(trace_id__in=traces,
                           action__in=(*SIDE_EFFECT_ACTIONS, "approval.decided", "run.created"))
                   .order_by("trace_id", "seq")
                   .only("seq", "action", "trace_id", "actor_label", "object_type", "object_id",
                         "payload", "occurred_at", "actor_type", "actor_id"))
        by_trace: dict[str, list[AuditEvent]] = {}
        for event in related:
            by_trace.setdefault(event.trace_id, []).append(event)
        for decision in decisions:
            trail = by_trace.get(decision.event.trace_id, [])
            for event in trail:
                if event.action == "run.created" and not decision.requested_by:
                    decision.requested_by = event.actor_label
            for event in trail:
                if event.seq <= decision.event.seq:
                    continue
                if event.action == "approval.decided":
                    break
                if event.action in SIDE_EFFECT_ACTIONS:
                    decision.effects.append(annotate_links(event))
    return decisions, page.next_cursor
