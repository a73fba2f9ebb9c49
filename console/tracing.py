"""The current trace id, carried through log lines by a context variable."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

current_trace_id: contextvars.ContextVar[str] = contextvars.ContextVar("trace_id", default="-")


@contextlib.contextmanager
def trace_context(trace_id: str) -> Iterator[None]:
    token = current_trace_id.set(trace_id)
    try:
        yield
    finally:
        current_trace_id.reset(token)
