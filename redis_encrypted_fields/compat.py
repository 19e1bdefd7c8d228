"""The origin project's module API, so that this library can be dropped in where it was used.

These functions encrypt without record binding (they do not know the record); models declared
with ``EncryptedStr`` and ``EncryptedModel`` bind every value to its record and field.
"""

from __future__ import annotations

import logging

from .audit import audit_enabled, track
from .crypto.envelope import PREFIX, decode, is_envelope, looks_like_envelope, open_blob, seal
from .crypto.legacy import is_legacy_envelope, open_legacy, parse_legacy
from .errors import DecryptionError, located
from .keys import get_keyring

__all__ = ["decrypt_secret", "encrypt_secret", "get_secret_value", "is_encrypted"]

log = logging.getLogger("redis_encrypted_fields")


def encrypt_secret(plaintext: str) -> str:
    """Encrypt ``plaintext`` under the current master key (current envelope format)."""
    keyring = get_keyring()
    envelope = seal(plaintext, keyring)
    if audit_enabled():
        track("encrypt", key_id=keyring.current.key_id)
    return envelope


def decrypt_secret(value: str) -> str:
    """Decrypt a current envelope or an origin v1 value. Raises ``DecryptionError``."""
    return decrypt_stored(value)


def decrypt_stored(
    value: str,
    *,
    context: bytes = b"",
    model: str | None = None,
    field: str | None = None,
    record: str | None = None,
) -> str:
    """Decrypt a stored value in either format, bound to ``context`` if v2, and audit it."""
    keyring = get_keyring()
    try:
        if value.startswith(PREFIX):
            plaintext = open_blob(decode(value), keyring, context)
        else:
            plaintext = open_legacy(value, keyring)
    except DecryptionError as exc:
        track("decrypt", model=model, field=field, record=record, envelope=value, error=exc)
        if model is None and field is None and record is None:
            raise
        raise located(exc, model, field, record) from None
    if audit_enabled():
        track("decrypt", model=model, field=field, record=record, envelope=value)
    return plaintext


def is_encrypted(value: object) -> bool:
    """Whether ``value`` is an envelope (current or origin v1), judged by prefix and structure."""
    return is_envelope(value) or is_legacy_envelope(value)


def get_secret_value(value: str) -> str:
    """Decrypt an envelope; plaintext (not yet migrated) passes through with a warning."""
    if looks_like_envelope(value) or parse_legacy(value) is not None:
        return decrypt_secret(value)
    log.warning("a secret is stored as plaintext; run `redis-encrypted-fields migrate`")
    return value
