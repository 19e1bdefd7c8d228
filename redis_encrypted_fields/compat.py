"""The origin project's module API, so that this library can be dropped in where it was used.

The same names as the origin's encryption module (``encrypt_secret``, ``decrypt_secret``,
``is_encrypted``, ``migrate_plaintext_to_encrypted``, ``get_secret_value``, ``EncryptionError``,
``CURRENT_VERSION``) and the same behaviour on empty and non-string input: ``""`` is encrypted
like any string; ``get_secret_value`` returns an empty value (``None``, ``""``, ``b""``) as it
is; bytes holding an envelope's ASCII text are read as that text, as the origin's base64 decoder
reads them; other input raises an ``EncryptionError``.

These functions encrypt without record binding (they do not know the record); models declared
with ``EncryptedStr`` and ``EncryptedModel`` bind every value to its record and field. What
``encrypt_secret`` writes is the current (v2) format, or the origin's v1 format while
``REDIS_SRE_WRITE_FORMAT=v1`` (a rolling upgrade). Built on the stored-value codec
(``crypto.stored``); nothing in the package imports this module but its ``__init__``.
"""

from __future__ import annotations

import logging
from typing import overload

from .crypto import Kind, classify, is_sealed, open_value, seal_value
from .errors import ConfigurationError, DecryptionError, EncryptionError
from .keys import get_keyring

__all__ = [
    "CURRENT_VERSION",
    "EncryptionError",
    "decrypt_secret",
    "encrypt_secret",
    "get_secret_value",
    "is_encrypted",
    "migrate_plaintext_to_encrypted",
]

log = logging.getLogger("redis_encrypted_fields")

# The origin's name for the "version" tag of the format it writes; this library reads that
# format, and writes it only while REDIS_SRE_WRITE_FORMAT=v1 (its own format is v2).
CURRENT_VERSION = "v1"


def encrypt_secret(plaintext: str) -> str:
    """Encrypt ``plaintext`` (``""`` too) under the current master key. Raises
    ``EncryptionError`` (``MasterKeyError`` without a usable key, ``ConfigurationError`` for
    input that is not a ``str``)."""
    if not isinstance(plaintext, str):
        # The origin fails on .encode() and wraps that in its EncryptionError: so does this.
        raise ConfigurationError(
            f"Encryption failed: encrypt_secret() takes a str, not {type(plaintext).__name__}"
        )
    return seal_value(plaintext, get_keyring())


def decrypt_secret(encrypted_data: str | bytes) -> str:
    """Decrypt a current envelope or an origin v1 value (given as text, or its ASCII bytes).
    Raises ``DecryptionError`` (an ``EncryptionError``), for ``""`` and non-text input too."""
    text = _text(encrypted_data)
    if text is None:
        raise DecryptionError(
            "Decryption failed: decrypt_secret() takes an envelope as a str or ASCII bytes, not "
            f"{type(encrypted_data).__name__}"
        )
    return open_value(text, get_keyring())


def is_encrypted(data: object) -> bool:
    """Whether ``data`` is an envelope (current or origin v1, as text or its ASCII bytes), judged
    by prefix and structure; ``False`` for anything else, ``""`` and ``None`` included."""
    text = _text(data)
    return text is not None and is_sealed(text)


def migrate_plaintext_to_encrypted(plaintext: str) -> str:
    """``plaintext`` encrypted, or returned as it is (with a warning) if it is an envelope
    already. Raises ``EncryptionError`` as ``encrypt_secret`` does."""
    if is_encrypted(plaintext):
        log.warning("a secret is already encrypted; returned as it is")
        return plaintext
    return encrypt_secret(plaintext)


@overload
def get_secret_value(data: str) -> str: ...
@overload
def get_secret_value(data: None) -> None: ...
@overload
def get_secret_value(data: bytes) -> str | bytes: ...
def get_secret_value(data: str | bytes | None) -> str | bytes | None:
    """The secret ``data`` holds: an envelope (either format, as text or ASCII bytes) decrypted,
    plaintext (not yet migrated) returned as it is with a warning, an empty value (``None``,
    ``""``, ``b""``) returned as it is. A value with this library's envelope prefix that does not
    decrypt raises ``DecryptionError``, never comes back as if it were the secret; input of
    another type raises ``ConfigurationError``."""
    if not data:
        return data
    text = _text(data)
    if text is None and not isinstance(data, (bytes, bytearray)):
        # The origin fails here too (on len() in its warning), with a TypeError.
        raise ConfigurationError(
            f"get_secret_value() takes a str or bytes, not {type(data).__name__}"
        )
    if text is not None and classify(text) in (Kind.ENVELOPE, Kind.LEGACY):
        return decrypt_secret(text)
    log.warning("a secret is stored as plaintext; run `redis-encrypted-fields migrate`")
    return data


def _text(value: object) -> str | None:
    """``value`` as text: a ``str`` as it is, bytes if ASCII (an envelope always is)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return None
