"""The origin project's module API, so that this library can be dropped in where it was used.

These functions encrypt without record binding (they do not know the record); models declared
with ``EncryptedStr`` and ``EncryptedModel`` bind every value to its record and field. Built on
the stored-value codec (``crypto.stored``); nothing in the package imports this module but its
``__init__``.
"""

from __future__ import annotations

import logging

from .crypto import Kind, classify, is_sealed, open_value, seal_value
from .keys import get_keyring

__all__ = ["decrypt_secret", "encrypt_secret", "get_secret_value", "is_encrypted"]

log = logging.getLogger("redis_encrypted_fields")


def encrypt_secret(plaintext: str) -> str:
    """Encrypt ``plaintext`` under the current master key (current envelope format)."""
    return seal_value(plaintext, get_keyring())


def decrypt_secret(value: str) -> str:
    """Decrypt a current envelope or an origin v1 value. Raises ``DecryptionError``."""
    return open_value(value, get_keyring())


def is_encrypted(value: object) -> bool:
    """Whether ``value`` is an envelope (current or origin v1), judged by prefix and structure."""
    return is_sealed(value)


def get_secret_value(value: str) -> str:
    """Decrypt an envelope; plaintext (not yet migrated) passes through with a warning."""
    if classify(value) in (Kind.ENVELOPE, Kind.LEGACY):
        return decrypt_secret(value)
    log.warning("a secret is stored as plaintext; run `redis-encrypted-fields migrate`")
    return value
