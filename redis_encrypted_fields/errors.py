"""The library's exceptions: one base, a few precise subclasses, no secret in any message."""

from __future__ import annotations

from aredis_om.model.model import QueryNotSupportedError as _AsyncQueryNotSupportedError
from redis_om.model.model import QueryNotSupportedError as _QueryNotSupportedError

__all__ = [
    "BlindIndexError",
    "DecryptionError",
    "EncryptionError",
    "MaskedSecretError",
    "MasterKeyError",
    "PlaintextSecretError",
    "UnsupportedQueryError",
]


class EncryptionError(Exception):
    """Base class of every error this library raises.

    Deliberately not a ``ValueError``: pydantic turns ``ValueError``s raised in validators into
    ``ValidationError``s, and callers must be able to catch these by their own type.
    """


class MasterKeyError(EncryptionError):
    """The master key is missing or malformed."""


class DecryptionError(EncryptionError):
    """A stored value could not be decrypted: wrong key, tampered, truncated or misplaced."""


class PlaintextSecretError(DecryptionError):
    """A plaintext value was read from Redis while plaintext reads are disabled."""


class MaskedSecretError(EncryptionError):
    """A mask (such as ``***``) would have been stored in place of a secret."""


class BlindIndexError(EncryptionError):
    """A blind index is misconfigured, or the planner was given numbers it cannot plan for."""


class UnsupportedQueryError(
    BlindIndexError,
    _QueryNotSupportedError,  # type: ignore[misc]  # redis_om (sync) is untyped
    _AsyncQueryNotSupportedError,
):
    """A query on an encrypted field that cannot be answered exactly (``!=``, ranges, prefixes,
    full text, a field without a blind index). Also a redis-om ``QueryNotSupportedError``, sync
    and async flavour."""
