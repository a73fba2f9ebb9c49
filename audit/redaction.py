"""Redaction of secrets and PII, shared by the audit log, traces and log lines.

Keys that name a secret (password, token, secret, authorization, api_key, ...) have their
values replaced whatever they hold. Inside strings, card numbers (Luhn-valid runs of
13-19 digits), bearer tokens and this product's API tokens are masked everywhere; email
addresses are masked in fields the caller marks sensitive, and always in free log text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

REDACTED = "[REDACTED]"

_SECRET_KEY_RE = re.compile(
    r"(pass(word|wd)?|secret|token|authori[sz]ation|api[_-]?key|apikey|credential|"
    r"cookie|session[_-]?id|private[_-]?key|signature)",
    re.IGNORECASE,
)
# Keys that are safe although they contain a secret-looking word.
_SAFE_KEYS = frozenset({"tokens", "prompt_tokens", "completion_tokens", "total_tokens",
                        "tokens_used", "token_budget", "max_tokens", "input_tokens",
                        "output_tokens", "token_count", "idempotency_key_hash"})
DEFAULT_SENSITIVE_FIELDS = frozenset({"email", "customer_email", "contact_email"})

# A card number stands on its own: not inside a longer token such as a UUID, whose
# all-digit groups ("5039-5018-4181-89") can pass the Luhn check by chance.
_CARD_RE = re.compile(r"(?<![0-9A-Za-z-])(?:\d[ -]?){12,18}\d(?![0-9A-Za-z])")
_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_BEARER_RE = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}")
_API_TOKEN_RE = re.compile(r"\bacp_[A-Za-z0-9]{6,}_[A-Za-z0-9_-]{10,}")
_OPENAI_KEY_RE = re.compile(r"\bsk-[A-Za-z0-9_-]{16,}")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    if 13 <= len(digits) <= 19 and _luhn_ok(digits):
        return f"[CARD ****{digits[-4:]}]"
    return match.group(0)


# What every pattern above needs somewhere in the text (a bearer word, a token prefix, four
# digits in a row, an at sign): most values (codes, ids, plan names) have none of it, and
# one search is cheaper than five substitutions.
_CANDIDATE_RE = re.compile(r"(?i:bearer)|acp_|sk-|\d[ -]?\d[ -]?\d[ -]?\d|@")


def redact_text(text: str, *, emails: bool = True) -> str:
    """Mask secrets and PII patterns inside free text."""
    if _CANDIDATE_RE.search(text) is None:
        return text
    text = _BEARER_RE.sub("Bearer " + REDACTED, text)
    text = _API_TOKEN_RE.sub(REDACTED, text)
    text = _OPENAI_KEY_RE.sub(REDACTED, text)
    text = _CARD_RE.sub(_mask_card, text)
    if emails:
        text = _EMAIL_RE.sub("[EMAIL]", text)
    return text


@lru_cache(maxsize=4096)  # keys repeat (payload schemas are few)
def is_secret_key(key: str) -> bool:
    return key.lower() not in _SAFE_KEYS and bool(_SECRET_KEY_RE.search(key))


def redact(
    value: Any,
    *,
    sensitive_fields: Iterable[str] = (),
    _key: str | None = None,
    _sensitive: frozenset[str] | None = None,
) -> Any:
    """Return a redacted deep copy of a JSON-like value."""
    sensitive = _sensitive
    if sensitive is None:
        sensitive = DEFAULT_SENSITIVE_FIELDS | {f.lower() for f in sensitive_fields}
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            skey = str(key)
            if is_secret_key(skey):
                out[skey] = REDACTED if item not in (None, "") else item
            else:
                out[skey] = redact(item, _key=skey, _sensitive=sensitive)
        return out
    if isinstance(value, (list, tuple)):
        return [redact(item, _key=_key, _sensitive=sensitive) for item in value]
    if isinstance(value, str):
        marked = _key is not None and _key.lower() in sensitive
        return redact_text(value, emails=marked)
    return value
