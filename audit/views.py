"""The auditor's console pages. Read-only, except that verifying records who verified."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from audit.access import require_audit_reader_page
from audit.actions import ACTIONS
from audit.selectors import (
    EventFilters,
    approval_decisions,
    event_search,
    parse_filters,
    parse_limit,
)
from audit.services import chain_verify
from console.errors import InvalidInput
from console.models import Tenant


def _form_context(request: HttpRequest) -> dict:
    return {
        "params": {name: request.GET.get(name, "") for name in
                   ("actor", "action", "tenant", "object_type", "object_id", "trace_id",
                    "since", "until")},
        "actions": sorted(ACTIONS),
        "tenants": list(Tenant.objects.values_list("slug", flat=True)),
    }


def _older_query(request: HttpRequest, cursor: str | None) -> str:
    if not cursor:
        return ""
    query = request.GET.copy()
    query["cursor"] = cursor
    return query.urlencode()


@login_required
@require_GET
def audit_events(request: HttpRequest) -> HttpResponse:
    """Search the log: filters, newest first, an "older" cursor link, htmx row updates."""
    require_audit_reader_page(request)
    context = _form_context(request)
    status = 200
    try:
        filters = parse_filters(request.GET)
        page = event_search(filters=filters, cursor=request.GET.get("cursor") or None,
                            limit=parse_limit(request.GET.get("limit")))
        context.update(page=page, older_query=_older_query(request, page.next_cursor))
    except InvalidInput as exc:
        # htmx swaps only 2xx responses: the message replaces the rows with a 200 there.
        context.update(error=exc.message, page=None)
        status = 200 if request.htmx else 422
    template = "audit/events.html#results" if request.htmx else "audit/events.html"
    return render(request, template, context, status=status)


@login_required
@require_POST
def audit_verify(request: HttpRequest) -> HttpResponse:
    """Verify the whole chain now; the check is recorded as an audit.verified event."""
    require_audit_reader_page(request)
    result = chain_verify(actor=request.user, record=True)
    if request.htmx:
        return render(request, "audit/events.html#verify_result", {"verify": result})
    context = _form_context(request)
    context.update(verify=result, page=event_search(filters=EventFilters()), older_query="")
    return render(request, "audit/events.html", context)


@login_required
@require_GET
def audit_approvals(request: HttpRequest) -> HttpResponse:
    """Who approved what: each decision, its reason, the proposal, and what followed."""
    require_audit_reader_page(request)
    context = _form_context(request)
    status = 200
    try:
        filters = parse_filters({**request.GET.dict(), "action": ""})
        decisions, next_cursor = approval_decisions(
            filters=filters, cursor=request.GET.get("cursor") or None,
            limit=parse_limit(request.GET.get("limit")))
        context.update(decisions=decisions, older_query=_older_query(request, next_cursor))
    except InvalidInput as exc:
        context.update(error=exc.message, decisions=None)
        status = 200 if request.htmx else 422
    template = "audit/approvals.html#results" if request.htmx else "audit/approvals.html"
    return render(request, template, context, status=status)
