"""The root django-ninja API, mounted at /api/v1/.

Domain errors map to ``{"error": {"code", "message"}}`` here and only here.
"""

from __future__ import annotations

import logging

from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, JsonResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from console.auth import ApiAuth
from console.errors import DomainError

logger = logging.getLogger(__name__)

api = NinjaAPI(
    title="Agent control plane",
    version="1.0.0",
    urls_namespace="api-v1",
    auth=ApiAuth(),
    description="Start agent runs, work approvals, search the audit log, flip kill switches.",
)


def error_response(status: int, code: str, message: str, **extra) -> JsonResponse:
    body: dict = {"error": {"code": code, "message": message}}
    body["error"].update(extra)
    return JsonResponse(body, status=status)


def _audit_auth_failure(request: HttpRequest, exc: DomainError) -> None:
    from audit.services import Actor, audit_record

    try:
        user = getattr(request, "user", None) or AnonymousUser()
        audit_record(
            actor=Actor.of(user if user.is_authenticated else AnonymousUser()),
            action="auth.denied",
            object_type="api",
            object_id=request.path[:64],
            payload={"code": exc.code, "method": request.method, "path": request.path},
        )
    except Exception:  # auditing a refusal must never turn it into a 500
        logger.exception("could not audit an authentication failure")


@api.exception_handler(DomainError)
def _domain_error(request: HttpRequest, exc: DomainError):
    if exc.status == 401:
        _audit_auth_failure(request, exc)
    return error_response(exc.status, exc.code, exc.message)


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError):
    problems = []
    for err in exc.errors:
        where = ".".join(str(part) for part in err.get("loc", ()) if part != "body")
        problems.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    message = "Invalid request. " + "; ".join(problems[:10])
    return error_response(422, "invalid_request", message, details=problems)


@api.exception_handler(AuthenticationError)
def _authentication_error(request: HttpRequest, exc: AuthenticationError):
    return error_response(401, "not_authenticated", "Authentication required.")


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError):
    codes = {400: "bad_request", 401: "not_authenticated", 403: "forbidden", 404: "not_found",
             405: "method_not_allowed", 409: "conflict", 422: "invalid_request",
             429: "throttled"}
    return error_response(exc.status_code, codes.get(exc.status_code, "error"), str(exc))


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404):
    return error_response(404, "not_found", "Not found, or you may not see it.")


@api.exception_handler(DjangoPermissionDenied)
def _forbidden(request: HttpRequest, exc: DjangoPermissionDenied):
    return error_response(403, "forbidden", str(exc) or "You may not do this.")


@api.exception_handler(Exception)
def _unexpected(request: HttpRequest, exc: Exception):
    logger.exception("unhandled API error on %s %s", request.method, request.path)
    return error_response(500, "internal_error",
                          "Unexpected server error; it has been logged. Try again or report it.")


api.add_router("/", "console.api_health.router")
api.add_router("/runs", "agents.api.router")
api.add_router("/approvals", "approvals.api.router")
api.add_router("/audit", "audit.api.router")
api.add_router("/switches", "agents.api_switches.router")
