"""The library's exceptions: one base, a few precise subclasses, no secret in any message; and
``printable``, which every message, log line and report line naming a record key goes through.

Imports nothing from redis-om (the bottom layer, imported by every other). The one exception that
must also be redis-om's own, ``UnsupportedQueryError`` (a ``QueryNotSupportedError`` of both
flavours), lives with search in ``model/errors.py``; the package exports it with the others."""

from __future__ import annotations

__all__ = [
    "BlindIndexError",
    "ConcurrentChangeError",
    "ConfigurationError",
    "DecryptionError",
    "EncryptionError",
    "IndexKeyError",
    "KeyStoreError",
    "KmsError",
    "MaskedSecretError",
    "MasterKeyError",
    "PlaintextSecretError",
    "ScopeValueError",
    "ShreddedKeyError",
    "StoredMaskError",
    "StoredTypeError",
    "UnknownKeyError",
    "ValueTypeError",
    "printable",
]

# Shorter escapes for the commonest control characters, as Python writes them.
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` safe to show in one line of a log, the audit trail, an error or a report.

    Every character ``str.isprintable()`` refuses is written as a Python escape (``\\n``,
    ``\\x1b``, ``\\u2028``): C0 and C1 controls, DEL, the line and paragraph separators (all
    that ``str.splitlines()`` splits on), and the format characters that reorder or hide text
    (bidi overrides, zero-width characters). Record keys are chosen by whoever writes to Redis:
    unescaped, a key holding a newline would show as a line of its own (a forged audit event).
    Backslashes are kept as they are, so that escaping twice (a key in an error message, the
    message in an audit line) changes nothing; the exact key is in the error's ``record``
    attribute, the hooks' events and the JSON reports.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    short = _SHORT.get(char)
    if short is not None:
        return short
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


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
    """``exc`` again, of the same type, naming the value it is about in message and attributes
    (the message shows the names ``printable``; the attributes hold them as they are)."""
    where = ".".join(p for p in (model, field) if p) or "a value"
    if record:
        where += f" of {record}"
    return type(exc)(f"{exc} ({printable(where)})", model=model, record=record, field=field)


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


class ValueTypeError(EncryptionError):
    """A value given for an ``Encrypted[T]`` field is not a ``T`` and does not coerce to one.
    The message says why (pydantic's reason), never the value."""


class StoredTypeError(DecryptionError):
    """A stored value decrypted, but does not hold the type its field declares (the field's type
    changed since it was written, e.g. ``Encrypted[int]`` where a string was stored). Names the
    record, the field and both types, never the value."""


class UnknownKeyError(DecryptionError):
    """A stored value names a master key the key ring does not hold: an unknown key id, or one
    the key store has retired (a value restored from a backup, or planted)."""


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


class IndexKeyError(DecryptionError):
    """A blind-index query found nothing while records carry companions made under master keys
    the key ring does not hold (a wrong master key, a previous key missing): it cannot be
    answered. Names those key ids. A ``DecryptionError``, as reading those records would be."""


class ShreddedKeyError(DecryptionError):
    """A value was sealed under a scope key that has been shredded (``shred_scope``): it is
    erased for good. Names the scope (namespace and value) and the record, never a plaintext."""


class ScopeValueError(EncryptionError):
    """A record of a model with a ``KeyScope`` field has no value (or an empty one) in that
    field, so its secrets have no scope key to be sealed under; nothing was written."""
