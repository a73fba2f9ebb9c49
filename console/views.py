"""The operator console: dashboard, kill switches, runs.

Views are thin: parse, check access (404 for who may not see a page), call a service or a
selector, render. htmx requests get the page's named partial.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from agents.models import ACTIVE_RUN_STATUSES, Agent, KillSwitch, RunStatus, SwitchScope, Tier
from console.errors import DomainError, NotFound
from console.heartbeat import live_workers
from console.roles import ADMIN, OPERATOR, has_role
from console.selectors import (
    RUN_FILTERS,
    dashboard_data,
    run_list,
    run_timeline,
    switch_history,
    visible_tenants,
)


def _require_operator(request: HttpRequest) -> None:
    """Operator pages answer 404 to everyone else (existence is not advertised)."""
    user = request.user
    if getattr(user, "service_account", None) is not None or not has_role(user, OPERATOR, ADMIN):
        raise Http404("No such page.")


# --- dashboard --------------------------------------------------------------------------


@login_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    """Runs by status, outcomes by task type, spend, approvals, handoffs, switches; live."""
    context = dashboard_data(user=request.user)
    context["workers"] = list(live_workers().order_by("hostname"))
    context["poll_seconds"] = settings.CONSOLE_POLL_SECONDS
    template = "console/dashboard.html#live" if request.htmx else "console/dashboard.html"
    return render(request, template, context)


# --- kill switches ----------------------------------------------------------------------


def _catalogue() -> list[dict]:
    """Every switch an operator may flip, with its current row (if it was ever flipped)."""
    from agents.planner import INTENTS
    from agents.tools import REGISTRY
    from agents.tools.registry import known_tool_names

    rows = {(s.scope, s.target): s for s in KillSwitch.objects.all()}
    # tools in code with their tier; tools registered as data (integrations) by name
    tools = [(n, f"{n} ({REGISTRY[n].tier})" if n in REGISTRY else f"{n} (registered tool)")
             for n in sorted(known_tool_names())]
    agents = sorted(set(Agent.objects.filter(is_active=True).values_list("slug", flat=True)))
    declared = Agent.objects.values_list("intents", flat=True)
    intents = sorted(set(INTENTS) | {i for a in declared for i in a or []})
    groups = [
        (SwitchScope.GLOBAL, "Stop everything: running runs stop, nothing new starts.", [("", "everything")]),
        (
            SwitchScope.TOOL,
            "Disable one tool: calls are refused before execution; other tools keep working.",
            tools,
        ),
        (
            SwitchScope.INTENT,
            "Route an intent to humans: new and running runs of it hand off.",
            [(i, i) for i in intents],
        ),
        (
            SwitchScope.APPROVAL,
            "Force approval: actions policy would allow now need a reviewer.",
            [(t, f"tier {t}") for t in Tier.values] + [(n, n) for n, _ in tools],
        ),
        (
            SwitchScope.AGENT,
            "Pause an agent: new runs queue, running ones park; release resumes them.",
            [(a, a) for a in agents],
        ),
        (
            SwitchScope.MEMORY,
            "Freeze memory refresh: reads serve the frozen state; writes are refused.",
            [("*", "all memory")] + [(a, f"agent {a}") for a in agents],
        ),
    ]
    now = timezone.now()
    out = []
    for scope, help_text, targets in groups:
        # a switch still engaged on a tool, intent or agent a deploy removed: listed so it
        # can be released
        known = {target for target, _ in targets}
        targets = targets + [
            (s.target, f"{s.target} (no longer defined)")
            for (row_scope, _), s in sorted(rows.items())
            if row_scope == scope.value and s.engaged and s.target not in known
        ]
        items = []
        for target, label in targets:
            row = rows.get((scope.value, target))
            effective = bool(row and row.engaged and (row.expires_at is None or row.expires_at > now))
            items.append(
                {
                    "scope": scope.value,
                    "target": target,
                    "label": label,
                    "row": row,
                    "engaged": effective,
                    "key": f"{scope.value}:{target or '-'}",
                    "url_target": target or "-",
                }
            )
        out.append({"scope": scope.value, "title": scope.label, "help": help_text, "items": items})
    return out


def _switch_context(**extra) -> dict:
    from console.selectors import engaged_switches

    return {"groups": _catalogue(), "engaged": engaged_switches(), "history": switch_history(), **extra}


@login_required
@require_GET
def switches_page(request: HttpRequest) -> HttpResponse:
    _require_operator(request)
    template = "console/switches.html#panel" if request.htmx else "console/switches.html"
    return render(request, template, _switch_context())


def _scope_target(scope: str, target: str) -> tuple[str, str]:
    from agents.services.switches import GLOBAL_TARGETS

    if scope not in SwitchScope.values:
        raise Http404("No such switch.")
    if scope == SwitchScope.GLOBAL and target in GLOBAL_TARGETS:
        target = ""
    return scope, target


@login_required
@require_GET
def switch_confirm(request: HttpRequest, scope: str, target: str) -> HttpResponse:
    """The confirmation: what the flip would affect now, and the reason it needs."""
    from agents.services.switches import switch_target_normalize, switch_target_validate
    from agents.switches import blast_radius

    _require_operator(request)
    scope, target = _scope_target(scope, target)
    try:
        target = switch_target_normalize(scope, target)
        row = KillSwitch.objects.filter(scope=scope, target=target).first()
        engaged = bool(row and row.engaged)
        if not engaged:  # engaging needs a target that exists; releasing does not
            target = switch_target_validate(scope, target)
    except DomainError as exc:
        raise Http404(exc.message) from None
    context = {
        "scope": scope,
        "target": target,
        "url_target": target or "-",
        "key": f"{scope}:{target or '-'}",
        "engaging": not engaged,
        "row": row,
        "radius": blast_radius(scope=scope, target=target) if not engaged else None,
        "embedded": bool(request.htmx),
    }
    template = "console/switch_confirm.html#confirm" if request.htmx else "console/switch_confirm.html"
    return render(request, template, context)


@login_required
@require_POST
def switch_flip(request: HttpRequest, scope: str, target: str) -> HttpResponse:
    from agents.services.switches import switch_set

    _require_operator(request)
    scope, target = _scope_target(scope, target)
    engaged = request.POST.get("engaged") == "1"
    reason = request.POST.get("reason", "")
    expires_at = None
    minutes = (request.POST.get("expires_in_minutes") or "").strip()
    error = ""
    if minutes:
        try:
            value = int(minutes)
            if value <= 0 or value > 60 * 24 * 30:
                raise ValueError
            expires_at = timezone.now() + timedelta(minutes=value)
        except ValueError:
            error = "Expiry must be a whole number of minutes between 1 and 43200 (30 days), or empty."
    if not error:
        try:
            switch = switch_set(
                actor=request.user,
                scope=scope,
                target=target,
                engaged=engaged,
                reason=reason,
                expires_at=expires_at,
            )
        except DomainError as exc:
            error = exc.message
    if error:
        context = {
            "scope": scope,
            "target": target,
            "url_target": target or "-",
            "key": f"{scope}:{target or '-'}",
            "engaging": engaged,
            "error": error,
            "reason": reason,
            "expires_in_minutes": minutes,
            "embedded": bool(request.htmx),
        }
        if request.htmx:  # htmx swaps 200s only: the form comes back with the message
            response = render(request, "console/switch_confirm.html#confirm", context)
            response["HX-Retarget"] = "#switch-confirm"
            return response
        return render(request, "console/switch_confirm.html", context, status=422)
    verb = "engaged" if switch.engaged else "released"
    flash = f"Switch {switch} {verb}."
    if request.htmx:
        return render(request, "console/switches.html#panel", _switch_context(flash=flash))
    from django.contrib import messages

    messages.success(request, flash)
    return redirect("switches")


# --- runs -------------------------------------------------------------------------------


def _start_form_context(request: HttpRequest, **extra) -> dict:
    from agents.planner import INTENTS

    return {
        "tenants": list(visible_tenants(request.user).order_by("slug").values_list("slug", flat=True)),
        "intents": list(INTENTS),
        **extra,
    }


@login_required
@require_http_methods(["GET", "POST"])
def runs_page(request: HttpRequest) -> HttpResponse:
    """The run list with filters; POST starts a run (operators) and opens it."""
    from agents.services.runs import run_start

    _require_operator(request)
    status = 200
    form_error, form = "", {}
    if request.method == "POST":
        form = {k: request.POST.get(k, "").strip() for k in ("tenant", "message", "intent")}
        try:
            run, _ = run_start(
                actor=request.user,
                tenant=form["tenant"],
                message=form["message"],
                intent=form["intent"] or None,
            )
        except DomainError as exc:
            form_error, status = exc.message, exc.status
        else:
            return redirect("run_detail", public_id=run.public_id)
    params = {name: request.GET.get(name, "") for name in RUN_FILTERS}
    context = {
        **run_list(user=request.user, params=params),
        "params": params,
        "statuses": RunStatus.choices,
        "form": form,
        "form_error": form_error,
        "poll_seconds": settings.CONSOLE_POLL_SECONDS,
        **_start_form_context(request),
    }
    template = "console/runs.html#rows" if request.htmx and request.method == "GET" else "console/runs.html"
    return render(request, template, context, status=status)


@login_required
@require_GET
def run_detail(request: HttpRequest, public_id: str) -> HttpResponse:
    from agents.access import run_for_viewer
    from agents.selectors import run_summary

    _require_operator(request)
    try:
        run = run_for_viewer(user=request.user, public_id=str(public_id))
    except NotFound:
        raise Http404("No such run.") from None
    context = {
        "run": run,
        "summary": run_summary(run),
        "timeline": run_timeline(run),
        "active": run.status in ACTIVE_RUN_STATUSES,
        "parked": (run.state or {}).get("parked"),
        "poll_seconds": min(2, settings.CONSOLE_POLL_SECONDS),
    }
    template = "console/run_detail.html#live" if request.htmx else "console/run_detail.html"
    return render(request, template, context)
