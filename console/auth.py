"""API authentication: a bearer token, or the console session with CSRF."""

from __future__ import annotations

from django.http import HttpRequest
from django.middleware.csrf import CsrfViewMiddleware

from console.errors import AuthenticationFailed
from console.services import token_authenticate

_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def _csrf_failure(request: HttpRequest) -> str | None:
    check = CsrfViewMiddleware(lambda req: None)
    check.process_request(request)
    response = check.process_view(request, lambda req: None, (), {})
    return None if response is None else "CSRF check failed"


class ApiAuth:
    """One callable for django-ninja: bearer first, then session; errors say exactly why."""

    def __call__(self, request: HttpRequest):
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise AuthenticationFailed(
                    "Malformed Authorization header: expected 'Bearer <token>'.",
                    code="token_malformed",
                )
            user = token_authenticate(value.strip())
            request.user = user
            request.auth_method = "token"
            return user
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            if request.method in _UNSAFE and _csrf_failure(request):
                raise AuthenticationFailed(
                    "CSRF token missing or incorrect for a session request. Send the "
                    "X-CSRFToken header, or use a bearer token.",
                    code="csrf_failed",
                )
            request.auth_method = "session"
            return user
        raise AuthenticationFailed(
            "Authentication required: send 'Authorization: Bearer <token>' (see "
            "`manage.py issue_token`) or log in to the console.",
            code="not_authenticated",
        )
