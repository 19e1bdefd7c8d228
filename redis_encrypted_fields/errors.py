"""The library's exceptions: one base, a few precise subclasses, no secret in any message."""

from __future__ import annotations

from aredis_om.model.model import QueryNotSupportedError as _AsyncQueryNotSupportedError
from redis_om.model.model import QueryNotSupportedError as _QueryNotSupportedError

__all__ = [
    "BlindIndexError",
    "ConcurrentChangeError",
    "ConfigurationError",
    "DecryptionError",
    "EncryptionError",
    "KeyStoreError",
    "KmsError",
    "MaskedSecretError",
    "MasterKeyError",
    "PlaintextSecretError",
    "StoredMaskError",
    "UnsupportedQueryError",
]


class EncryptionError(Exception):
    """Base class of every error this library raises.

    Deliberately not a ``ValueError``: pydantic turns ``ValueError``s raised in validators into
    ``ValidationError``s, and callers must be able to catch these by their own type.

    An error about one stored value names it in its message and in three attributes: ``model``
    (the class name), ``record`` (the record's Redis key) and ``field`` (the field's dotted path,
    list items by index: ``replicas.0.password``); ``None`` where not known.
    """

    def __init__(
        self,
        message: str = "",
        *,
        model: str | None = None,
        record: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.model = model
        self.record = record
        self.field = field

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only attributes survive pickling (multiprocessing, task queues).
        return (_rebuild, (type(self), str(self), self.model, self.record, self.field))


def located(
    exc: EncryptionError, model: str | None, field: str | None, record: str | None
) -> EncryptionError:
    """``exc`` again, of the same type, naming the value it is about in message and attributes."""
    where = ".".join(p for p in (model, field) if p) or "a value"
    if record:
        where += f" of {record}"
    return type(exc)(f"{exc} ({where})", model=model, record=record, field=field)


def _rebuild(
    cls: type[EncryptionError],
    message: str,
    model: str | None,
    record: str | None,
    field: str | None,
) -> EncryptionError:
    return cls(message, model=model, record=record, field=field)


class MasterKeyError(EncryptionError):
    """The master key is missing or malformed."""


class KeyStoreError(MasterKeyError):
    """The key store cannot supply or change a master key (no active key, a record that does not
    match its key id, a retirement refused). Names the key id."""


class KmsError(KeyStoreError):
    """A KMS call failed or was refused (unreachable, key disabled, access denied, a wrapped key
    that does not unwrap). Names the key id and the KMS's error."""


class ConfigurationError(EncryptionError):
    """A setting of the library (an environment switch, an argument) has an invalid value."""


class DecryptionError(EncryptionError):
    """A stored value could not be decrypted: wrong key, tampered, truncated or misplaced."""


class PlaintextSecretError(DecryptionError):
    """A plaintext value was read from Redis while plaintext reads are disabled."""


class MaskedSecretError(EncryptionError):
    """A mask (such as ``***``) would have been stored in place of a secret."""


class StoredMaskError(PlaintextSecretError, MaskedSecretError):
    """A mask was read from Redis where a secret belongs (the origin's bug stored masks): the
    secret is lost. Raised on reads while plaintext reads are disabled; a warning otherwise."""


class ConcurrentChangeError(EncryptionError):
    """A save that keeps stored secrets (masks sent back) found its record changed by another
    writer between its read and its write, on every attempt; nothing was saved. Names the
    record."""


class BlindIndexError(ConfigurationError):
    """A ``BlindIndex`` argument or normalize function is unusable, or the planner was given a
    population it cannot plan for."""


class UnsupportedQueryError(
    EncryptionError,
    _QueryNotSupportedError,  # type: ignore[misc]  # redis_om (sync) is untyped
    _AsyncQueryNotSupportedError,
):
    """A query on an encrypted field that cannot be answered exactly (``!=``, ranges, prefixes,
    full text, a field without a blind index); ``model`` and ``field`` name it. Also a
    redis-om ``QueryNotSupportedError``, of both flavours."""
