"""The user's own API tokens: list, issue (the secret is shown once), revoke."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from console.access import token_for_revoke
from console.errors import DomainError
from console.models import ApiToken
from console.services import token_issue, token_revoke


def _context(request: HttpRequest, **extra) -> dict:
    tokens = ApiToken.objects.filter(user=request.user).order_by("-created_at")
    return {"tokens": tokens, **extra}


@login_required
@require_GET
def tokens_page(request: HttpRequest) -> HttpResponse:
    return render(request, "console/tokens.html", _context(request))


@login_required
@require_POST
def token_create(request: HttpRequest) -> HttpResponse:
    name = request.POST.get("name", "").strip()
    if not name or len(name) > 100:
        return render(request, "console/tokens.html",
                      _context(request, error="Give the token a name of 1 to 100 characters, "
                                              "e.g. the system that will use it."), status=422)
    token, plaintext = token_issue(actor=request.user, user=request.user, name=name)
    return render(request, "console/tokens.html",
                  _context(request, new_token=plaintext, new_prefix=token.prefix))


@login_required
@require_POST
def token_revoke_view(request: HttpRequest, prefix: str) -> HttpResponse:
    try:
        token = token_for_revoke(user=request.user, prefix=prefix)
        token_revoke(actor=request.user, token=token)
    except DomainError as exc:
        return render(request, "console/tokens.html", _context(request, error=exc.message),
                      status=exc.status)
    return render(request, "console/tokens.html",
                  _context(request, notice=f"Token {prefix} revoked; requests with it now get 401."))
