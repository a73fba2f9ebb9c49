"""Read-only audit API: search, streamed export, verification. No write endpoint exists."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

from django.db import transaction
from django.http import HttpRequest, StreamingHttpResponse
from django.utils import timezone
from ninja import Router

from audit.access import require_audit_reader_api
from audit.schemas import AuditEventPage, VerifyOut
from audit.selectors import (
    event_as_dict,
    event_search,
    iter_events,
    parse_filters,
    parse_limit,
)
from console.errors import InvalidInput

router = Router(tags=["audit"])

EXPORT_COLUMNS = ("seq", "event_id", "occurred_at", "actor_type", "actor_id", "actor_label",
                  "action", "tenant", "tenant_id", "object_type", "object_id", "trace_id",
                  "policy_version", "payload", "prev_hash", "hash")
_FILTER_DOC = ("Filters: actor (label, e.g. a username), action (dotted name), tenant (slug), "
               "object_type, object_id, trace_id, since (inclusive), until (exclusive); "
               "times are ISO 8601, UTC when no offset is given.")


@router.get("/events", response=AuditEventPage,
            summary="Search audit events, newest first, with cursor pagination",
            description=_FILTER_DOC + " Pass next_cursor back as cursor for older events.")
def list_events(request: HttpRequest, actor: str = "", action: str = "", tenant: str = "",
                object_type: str = "", object_id: str = "", trace_id: str = "",
                since: str = "", until: str = "", cursor: str = "", limit: str = ""):
    require_audit_reader_api(request, request.auth)
    filters = parse_filters(request.GET)
    page = event_search(filters=filters, cursor=cursor or None, limit=parse_limit(limit))
    return {"events": [event_as_dict(e) for e in page.events], "next_cursor": page.next_cursor,
            "limit": page.limit}


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        value = json.dumps(value, sort_keys=True, ensure_ascii=False)
    text = str(value)
    # Spreadsheet formula injection: a cell starting with = + - @ would be evaluated.
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        text = "'" + text
    return text


def _jsonl(events) -> Iterator[bytes]:
    for event in events:
        yield (json.dumps(event_as_dict(event), ensure_ascii=False, sort_keys=True) + "\n").encode()


def _csv(events) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    for count, event in enumerate(events, start=1):
        row = event_as_dict(event)
        writer.writerow([_csv_cell(row[name]) for name in EXPORT_COLUMNS])
        if count % 200 == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


@router.get("/export", summary="Export matching events, oldest first, streamed (JSONL or CSV)",
            description=_FILTER_DOC + " format=jsonl|csv. Rows are read in keyset batches and "
            "streamed, so a large range never loads into memory. The export is itself audited.")
def export_events(request: HttpRequest, format: str = "jsonl", actor: str = "", action: str = "",
                  tenant: str = "", object_type: str = "", object_id: str = "",
                  trace_id: str = "", since: str = "", until: str = ""):
    require_audit_reader_api(request, request.auth)
    if format not in ("jsonl", "csv"):
        raise InvalidInput(f"format={format!r} is not supported: use format=jsonl or format=csv.",
                           code="invalid_filter")
    filters = parse_filters(request.GET)
    from audit.services import audit_record

    with transaction.atomic():
        audit_record(actor=request.auth, action="audit.exported", object_type="audit_log",
                     object_id="export",
                     payload={"format": format, "filters": filters.as_params(), "via": "api"})
    events = iter_events(filters=filters)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    if format == "csv":
        response = StreamingHttpResponse(_csv(events), content_type="text/csv; charset=utf-8")
    else:
        response = StreamingHttpResponse(_jsonl(events), content_type="application/x-ndjson")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.{format}"'
    response["Cache-Control"] = "no-store"
    return response


@router.get("/verify", response=VerifyOut,
            summary="Recompute the hash chain: {ok, checked, first_bad_seq}",
            description="Verifies every event from the genesis. Records an audit.verified event "
            "naming the caller and the result.")
def verify(request: HttpRequest):
    require_audit_reader_api(request, request.auth)
    from audit.services import chain_verify

    result = chain_verify(actor=request.auth, record=True)
    return {"ok": result.ok, "checked": result.checked, "first_bad_seq": result.first_bad_seq,
            "reason": result.reason, "head_seq": result.head_seq}
