"""The base of every domain error. The API maps these to JSON in one place."""

from __future__ import annotations


class DomainError(Exception):
    """An error a caller can act on: a stable code, a message that says what to do."""

    code = "error"
    status = 400

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status


class NotFound(DomainError):
    code = "not_found"
    status = 404


class PermissionDenied(DomainError):
    code = "forbidden"
    status = 403


class Conflict(DomainError):
    code = "conflict"
    status = 409


class InvalidInput(DomainError):
    code = "invalid_request"
    status = 422


class AuthenticationFailed(DomainError):
    code = "unauthenticated"
    status = 401
