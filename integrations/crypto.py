"""Downstream credentials at rest: Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``),
with MultiFernet for key rotation.

``settings.CREDENTIALS_KEYS`` lists the keys newest first: the first encrypts, every one
decrypts. To rotate: put a new key in front, run ``manage.py credentials_reencrypt`` (every
stored secret is re-encrypted with the new key), then drop the old key.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

# The MultiFernet for the keys in force, built once per key list (tests change the setting).
_BUILT: dict[tuple[str, ...], MultiFernet] = {}


class CredentialUnreadable(Exception):
    """A stored secret none of CREDENTIALS_KEYS decrypts (a key was dropped too early, or
    the row was tampered with)."""


def _multi() -> MultiFernet:
    keys = tuple(settings.CREDENTIALS_KEYS)
    multi = _BUILT.get(keys)
    if multi is None:
        if not keys:
            raise CredentialUnreadable("CREDENTIALS_KEYS is empty: no key to encrypt or decrypt with")
        multi = MultiFernet([Fernet(key) for key in keys])
        _BUILT.clear()
        _BUILT[keys] = multi
    return multi


def encrypt(secret: str) -> str:
    return _multi().encrypt(secret.encode()).decode("ascii")


def decrypt(ciphertext: str) -> str:
    try:
        return _multi().decrypt(ciphertext.encode("ascii")).decode()
    except (InvalidToken, UnicodeError):
        raise CredentialUnreadable(
            "a stored credential cannot be decrypted with CREDENTIALS_KEYS (was its key dropped "
            "before `manage.py credentials_reencrypt` ran?)"
        ) from None


def reencrypt(ciphertext: str) -> str:
    """The same secret encrypted with the newest key (MultiFernet.rotate)."""
    try:
        return _multi().rotate(ciphertext.encode("ascii")).decode("ascii")
    except InvalidToken:
        raise CredentialUnreadable("a stored credential cannot be decrypted with CREDENTIALS_KEYS") from None
