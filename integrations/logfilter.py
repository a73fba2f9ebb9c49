"""httpx logs every request's URL at INFO ("HTTP Request: GET https://...?api_key=..."). A
credential placed in the query string (``CredentialPlacement.QUERY``) would reach the logs
that way, so the query values of the URLs httpx and httpx2 (the MCP SDK's client) log are
masked before any handler sees the record."""

from __future__ import annotations

import logging
import re

_QUERY_VALUE = re.compile(r"([?&][^=&#\s\"']+=)[^&#\s\"']*")
MASK = "[REDACTED]"


def mask_query_values(text: str) -> str:
    return _QUERY_VALUE.sub(lambda m: m.group(1) + MASK, text)


class QueryStringFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        if "?" in message:
            masked = mask_query_values(message)
            if masked != message:
                record.msg, record.args = masked, ()
        return True


_FILTER = QueryStringFilter()


def mask_logged_query_strings() -> None:
    for name in ("httpx", "httpx2"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
