"""The approval page (/approvals/), the item view and the human handoff queue.

Thin views: parse the form, check access (404 outside the user's queues), call a service,
render. htmx requests get the named partial; every form also works without JavaScript
(post, then redirect back).
"""

from __future__ import annotations

import json
import re

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import select_template
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from approvals.access import handoff_for_person, handoffs_visible_to, may_work_handoffs, request_for_viewer
from approvals.models import ApprovalRequest, ApprovalStatus, DecisionKind, HandoffStatus
from approvals.selectors import (
    ListFilters,
    metrics_chart,
    parse_filters,
    queue_metrics,
    queue_overview,
    request_decisions,
    request_list,
    request_review,
    request_trace,
    sla_state,
    visible_queue_ids,
)
from approvals.services import (
    DECIDE_PERM,
    approval_claim,
    approval_decide,
    approval_release,
    handoff_resolve,
    handoff_take,
    proposal_hash,
)
from console.errors import DomainError, InvalidInput, NotFound

PAGE_SIZE = 100
BULK_MAX = 50
TOOL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # what may name a review template
# The queue page runs a tool's review hook for at most this many pending rows (the first,
# oldest due): a hook reads live (apply_credit's: ~5 queries) and the list refreshes every
# few seconds. The item view always runs it.
REVIEW_ROWS = 20


def _viewable(request: HttpRequest, request_id) -> ApprovalRequest:
    try:
        return request_for_viewer(user=request.user, request_id=str(request_id))
    except NotFound as exc:
        raise Http404(exc.message) from None


def _require_reviewer(request: HttpRequest) -> None:
    if not visible_queue_ids(request.user):
        raise Http404("No review queue that you may see.")


# --- the tool's own check of a proposal (its review hook) -------------------------------


def _review_template(tool: str) -> str:
    """The review partials' template: ``approvals/_review_<tool>.html`` where the tool has
    one, else the generic ``approvals/_review.html``. Each defines the partials ``check``
    (the item view's section), ``verdict`` (beside the Approve button) and ``row`` (the
    queue page)."""
    names = ["approvals/_review.html"]
    if TOOL_NAME.match(tool):
        names.insert(0, f"approvals/_review_{tool}.html")
    return select_template(names).template.origin.template_name


# --- the queue page ---------------------------------------------------------------------


@login_required
@require_GET
def approvals_page(request: HttpRequest) -> HttpResponse:
    """The reviewer's queues (counts, SLA state, throttled intake), the item list oldest-due
    first (filterable, refreshed every few seconds) and the decision-time chart."""
    _require_reviewer(request)
    now = timezone.now()
    error = ""
    try:
        filters = parse_filters(request.GET.dict())
    except InvalidInput as exc:
        filters, error = ListFilters(), exc.message
    items = list(request_list(request.user, filters, now=now)[: PAGE_SIZE + 1])
    more = len(items) > PAGE_SIZE
    items = items[:PAGE_SIZE]
    context = {
        "now": now,
        "filters": filters,
        "filter_query": request.GET.urlencode(),
        "error": error,
        "queues": queue_overview(request.user, now=now),
        "items": _rows(items, now),
        "more": more,
    }
    if request.htmx and request.GET.get("part") == "live":
        return render(request, "approvals/page.html#live", context)
    metrics = queue_metrics(request.user, now=now)
    context.update(metrics=metrics, chart=metrics_chart(metrics))
    return render(request, "approvals/page.html", context, status=422 if error else 200)


def _rows(items: list[ApprovalRequest], now) -> list[dict]:
    """The list's rows; the first ``REVIEW_ROWS`` pending ones carry their tool's check, read
    live like the item view's."""
    rows, checked, templates = [], 0, {}
    for r in items:
        review, template = None, ""
        if r.status == ApprovalStatus.PENDING and checked < REVIEW_ROWS:
            review = request_review(r)
        if review is not None:
            checked += 1
            if r.tool not in templates:
                templates[r.tool] = _review_template(r.tool)
            template = f"{templates[r.tool]}#row"
        rows.append(
            {
                "r": r,
                "sla": sla_state(r, now),
                "lease": _lease(r, now),
                "review": review,
                "review_row": template,
                "arguments": r.approved_arguments or r.arguments,
            }
        )
    return rows


def _lease(r: ApprovalRequest, now) -> dict | None:
    if not r.claimed_by_id or not r.claim_expires_at:
        return None
    return {
        "by": r.claimed_by.username if r.claimed_by else "?",
        "until": r.claim_expires_at,
        "live": r.claim_expires_at > now,
    }


@login_required
@require_POST
def approvals_bulk_approve(request: HttpRequest) -> HttpResponse:
    """Approve several low-risk items: never write_high; each item goes through the same
    checks and writes its own audit event (one service call per item)."""
    _require_reviewer(request)
    ids = request.POST.getlist("ids")[:BULK_MAX]
    reason = (request.POST.get("reason") or "").strip() or "bulk approved (low risk)"
    results = []
    for raw in ids:
        try:
            item = request_for_viewer(user=request.user, request_id=raw)
        except NotFound:
            results.append({"id": raw, "ok": False, "message": "not found"})
            continue
        if item.risk_tier == "write_high":
            results.append(
                {
                    "id": raw,
                    "ok": False,
                    "message": "write_high is never bulk approved; open it and decide alone.",
                }
            )
            continue
        try:
            approval_decide(actor=request.user, request=item, decision=DecisionKind.APPROVE, reason=reason)
        except DomainError as exc:
            results.append({"id": raw, "ok": False, "message": exc.message})
        else:
            results.append({"id": raw, "ok": True, "message": "approved"})
    if not ids:
        results.append({"id": "", "ok": False, "message": "Select at least one low-risk item."})
    if request.htmx:
        return render(request, "approvals/page.html#bulk_results", {"results": results})
    for r in results:
        (messages.success if r["ok"] else messages.warning)(request, f"{r['id']}: {r['message']}")
    return redirect("approvals")


# --- one item ---------------------------------------------------------------------------


def _detail_context(request: HttpRequest, item: ApprovalRequest, **extra) -> dict:
    now = timezone.now()
    decisions = request_decisions(item)
    current = item.approved_arguments or item.arguments
    digest = proposal_hash(current)
    review = request_review(item)
    template = _review_template(item.tool) if review is not None else ""
    context = {
        "item": item,
        "now": now,
        "sla": sla_state(item, now),
        "lease": _lease(item, now),
        "decisions": decisions,
        "approvals": sum(1 for d in decisions if d.decision == "approve" and d.proposal_hash == digest),
        "current": current,
        "current_json": json.dumps(current, indent=2, sort_keys=True),
        "currency": current.get("currency") or item.currency or "USD",
        "review": review,
        "pending": item.status == ApprovalStatus.PENDING,
        "review_check": f"{template}#check" if template else "",
        "review_verdict": f"{template}#verdict" if template else "",
        "may_decide": request.user.has_perm(DECIDE_PERM, item.queue),
        "mine": bool(
            item.claimed_by_id == request.user.pk and item.claim_expires_at and item.claim_expires_at > now
        ),
    }
    context.update(extra)
    return context


@login_required
@require_GET
def approval_detail(request: HttpRequest, request_id) -> HttpResponse:
    """Summary first, then the tool's check of the proposal against the evidence (read
    live), the proposal and the decision, the evidence the agent relied on; the raw trace
    on demand."""
    item = _viewable(request, request_id)
    return render(request, "approvals/detail.html", _detail_context(request, item))


@login_required
@require_GET
def approval_trace(request: HttpRequest, request_id) -> HttpResponse:
    item = _viewable(request, request_id)
    return render(request, "approvals/detail.html#trace", {"item": item, "trace": request_trace(item)})


def _act(request: HttpRequest, item: ApprovalRequest, action, ok_message: str) -> HttpResponse:
    """Run a service call; answer with the actions partial (htmx) or redirect back."""
    try:
        action()
    except DomainError as exc:
        item.refresh_from_db()
        if request.htmx:
            # 200 so htmx swaps the panel; the error is in it (data-error) with its code
            context = _detail_context(request, item, error=exc.message, error_status=exc.status)
            return render(request, "approvals/detail.html#actions", context)
        context = _detail_context(request, item, error=exc.message, error_status=exc.status)
        return render(request, "approvals/detail.html", context, status=exc.status)
    item.refresh_from_db()
    if request.htmx:
        return render(
            request, "approvals/detail.html#actions", _detail_context(request, item, notice=ok_message)
        )
    messages.success(request, ok_message)
    return redirect("approval_detail", request_id=item.id)


@login_required
@require_POST
def approval_claim_view(request: HttpRequest, request_id) -> HttpResponse:
    item = _viewable(request, request_id)
    return _act(
        request,
        item,
        lambda: approval_claim(actor=request.user, request=item),
        "You hold the lease on this request.",
    )


@login_required
@require_POST
def approval_release_view(request: HttpRequest, request_id) -> HttpResponse:
    item = _viewable(request, request_id)
    return _act(request, item, lambda: approval_release(actor=request.user, request=item), "Lease released.")


def _edited_arguments(request: HttpRequest, item: ApprovalRequest) -> dict:
    current = dict(item.approved_arguments or item.arguments)
    raw = (request.POST.get("arguments") or "").strip()
    if raw:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidInput(
                f"Edited arguments are not valid JSON: {exc.msg} (line {exc.lineno})."
            ) from None
        except RecursionError:
            raise InvalidInput("Edited arguments are nested too deeply.") from None
        if not isinstance(value, dict):
            raise InvalidInput("Edited arguments must be a JSON object.")
        current = value
    amount = (request.POST.get("amount_cents") or "").strip()
    if amount:
        try:
            current["amount_cents"] = int(amount)
        except ValueError:
            raise InvalidInput("amount_cents must be a whole number of cents, e.g. 3000 for $30.") from None
    return current


@login_required
@require_POST
def approval_decide_view(request: HttpRequest, request_id) -> HttpResponse:
    """decision=approve | reject (reason required) | edit (approve with edited arguments)."""
    item = _viewable(request, request_id)
    decision = request.POST.get("decision", "")
    reason = request.POST.get("reason", "")

    def run() -> None:
        if decision == "edit":
            approval_decide(
                actor=request.user,
                request=item,
                decision=DecisionKind.APPROVE,
                reason=reason,
                arguments=_edited_arguments(request, item),
            )
        elif decision in (DecisionKind.APPROVE, DecisionKind.REJECT):
            approval_decide(actor=request.user, request=item, decision=decision, reason=reason)
        else:
            raise InvalidInput("decision must be approve, reject or edit.")

    labels = {"approve": "Approved.", "reject": "Rejected.", "edit": "Approved with your edit."}
    return _act(request, item, run, labels.get(decision, "Done."))


# --- human handoffs ---------------------------------------------------------------------


@login_required
@require_GET
def handoffs_page(request: HttpRequest) -> HttpResponse:
    """Runs a person must finish: open and taken first (oldest first), then recently resolved."""
    if not may_work_handoffs(request.user):
        raise Http404("Not found.")
    status = request.GET.get("status", "active")
    qs = handoffs_visible_to(request.user).select_related("tenant", "taken_by", "resolved_by")
    if status == "active":
        qs = qs.filter(status__in=[HandoffStatus.OPEN, HandoffStatus.TAKEN]).order_by("created_at")
    elif status in HandoffStatus.values:
        qs = qs.filter(status=status).order_by("-created_at")
    else:
        qs = qs.order_by("-created_at")
    context = {
        "handoffs": list(qs[:200]),
        "status": status,
        "statuses": ["active", *HandoffStatus.values, "all"],
    }
    if request.htmx and request.GET.get("part") == "rows":
        return render(request, "approvals/handoffs.html#rows", context)
    return render(request, "approvals/handoffs.html", context)


def _handoff_act(request: HttpRequest, handoff_id, action, ok: str) -> HttpResponse:
    try:
        handoff = handoff_for_person(user=request.user, handoff_id=str(handoff_id))
    except NotFound as exc:
        raise Http404(exc.message) from None
    try:
        handoff = action(handoff)
    except DomainError as exc:
        handoff.refresh_from_db()
        if request.htmx:
            return render(request, "approvals/handoffs.html#row", {"h": handoff, "error": exc.message})
        messages.error(request, exc.message)
        return redirect("handoffs")
    if request.htmx:
        return render(request, "approvals/handoffs.html#row", {"h": handoff, "notice": ok})
    messages.success(request, ok)
    return redirect("handoffs")


@login_required
@require_POST
def handoff_take_view(request: HttpRequest, handoff_id) -> HttpResponse:
    return _handoff_act(
        request, handoff_id, lambda h: handoff_take(actor=request.user, handoff=h), "You took this handoff."
    )


@login_required
@require_POST
def handoff_resolve_view(request: HttpRequest, handoff_id) -> HttpResponse:
    note = request.POST.get("note", "")
    return _handoff_act(
        request,
        handoff_id,
        lambda h: handoff_resolve(actor=request.user, handoff=h, note=note),
        "Handoff resolved.",
    )
