"""The stored-value codec: what a value found at an encrypted field is (``classify``), opening
it (``open_value``) and sealing a plaintext (``seal_value``), each with its audit event.

Every path that reads or writes a secret (model reads and writes, keep-existing, search's
filter, the maintenance tools, the origin's module API) asks here, so that all of them judge a
value by the same rules. Masks are not decided here: what counts as one depends on the field's
``Mask``, a model concept; a mask is only ever a ``PLAINTEXT`` value (neither envelope format can
hold a ``*``), so the model asks its mask about those.

Keys are arguments: callers pass the key ring they have looked up, and the fast paths (a
record's read or write) pass the audit switch they looked up once for all its values.

``seal_value`` writes the current (v2) format, or the origin's v1 format while
``REDIS_SRE_WRITE_FORMAT=v1`` says that processes still running the origin's module must read
what is written (a rolling upgrade; such values are bound to no record).
"""

from __future__ import annotations

import enum
import time

from ..audit import audit_enabled, track
from ..errors import ConfigurationError, DecryptionError, ShreddedKeyError, located
from ..keys.ring import KEY_ID_SIZE, KeyRing
from ..switches import EnvSwitch
from .envelope import PREFIX, decode, is_envelope, open_blob, parse, rewrap_blob, seal
from .legacy import is_legacy_envelope, open_legacy, parse_legacy, seal_legacy

__all__ = [
    "ENV_WRITE_FORMAT",
    "Kind",
    "classify",
    "is_sealed",
    "key_id_of",
    "open_value",
    "rewrap_value",
    "seal_value",
    "track_open",
    "writes_v1",
]

ENV_WRITE_FORMAT = "REDIS_SRE_WRITE_FORMAT"


class Kind(enum.Enum):
    """What a stored value is."""

    EMPTY = "empty"  # "": how a hash stores a cleared secret
    ENVELOPE = "envelope"  # claims to be a current (v2) envelope: has its prefix
    LEGACY = "legacy"  # an origin v1 value (bound to no record)
    PLAINTEXT = "plaintext"  # anything else: not migrated yet, or a mask sent back


def classify(value: str) -> Kind:
    """What ``value`` is, judged without decrypting. An ``ENVELOPE`` is judged by its prefix
    only: a malformed one fails when opened (a secret cannot start with the prefix)."""
    if not value:
        return Kind.EMPTY
    if value.startswith(PREFIX):
        return Kind.ENVELOPE
    if parse_legacy(value) is not None:
        return Kind.LEGACY
    return Kind.PLAINTEXT


def is_sealed(value: object) -> bool:
    """Whether ``value`` is a well-formed envelope of either format (structure checked, not
    decrypted): stricter than ``classify``."""
    return is_envelope(value) or is_legacy_envelope(value)


def key_id_of(value: str) -> str | None:
    """The hex key id an envelope names, or ``None`` (origin v1 values name none)."""
    if not value.startswith(PREFIX):
        return None
    try:
        return parse(value).key_id.hex()
    except DecryptionError:
        return None


def track_open(
    value: str,
    error: DecryptionError | None = None,
    *,
    model: str | None = None,
    field: str | None = None,
    record: str | None = None,
    duration: float | None = None,
) -> None:
    """The audit event of opening ``value`` (its key id read only if anything listens): a value
    under a shredded scope key is ``shredded_key_read`` (failed), not a failed ``decrypt``;
    ``duration``: how long opening took, in seconds."""
    if audit_enabled():
        track(
            "shredded_key_read" if isinstance(error, ShreddedKeyError) else "decrypt",
            model=model,
            field=field,
            record=record,
            key_id=key_id_of(value),
            error=error,
            duration=duration,
        )


_clock = time.perf_counter


def open_value(
    value: str,
    keyring: KeyRing,
    context: bytes = b"",
    # Positional too: a read passes these for every value, and keywords cost more per call.
    auditing: bool | None = None,
    model: str | None = None,
    field: str | None = None,
    record: str | None = None,
    *,
    blob: bytes | None = None,
    locate: bool = True,
) -> str:
    """Decrypt a current envelope (bound to ``context``) or an origin v1 value, audited.

    ``blob``: the envelope's checked bytes, if the caller has decoded it already. ``auditing``:
    whether a success is audited (``None``: if anything listens); a failure is audited whenever
    anything listens. Raises ``DecryptionError``, naming the value (``located``) when a name is
    given, unless ``locate`` is false.
    """
    # Timed only when audited (the metrics' histogram): decided before, not after, opening.
    audited = auditing if auditing is not None else audit_enabled()
    start = _clock() if audited else 0.0
    try:
        if value.startswith(PREFIX):
            if blob is None:
                blob = decode(value)
            plaintext = open_blob(blob, keyring, context)
        else:
            plaintext = open_legacy(value, keyring)
    except DecryptionError as exc:
        track_open(value, exc, model=model, field=field, record=record)
        if not locate or (model is None and field is None and record is None):
            raise
        raise located(exc, model, field, record) from None
    if audited:
        duration = _clock() - start
        # Both envelope versions name their key right after the version byte; v1 names none.
        key_id = None if blob is None else blob[1 : 1 + KEY_ID_SIZE]
        track("decrypt", model=model, field=field, record=record, key_id=key_id, duration=duration)
    return plaintext


def _parse_write_format(text: str) -> bool:
    flag = text.strip().lower()
    if flag in ("", "v2"):
        return False
    if flag == "v1":
        return True
    # The value is a switch, not a secret: it may be shown.
    raise ConfigurationError(
        f"{ENV_WRITE_FORMAT}={text[:40]!r} is not a valid format: use v1 to write values the "
        "origin's module can read (during a rolling upgrade), v2 or unset for the current format"
    )


# Whether REDIS_SRE_WRITE_FORMAT asks for the origin's v1 format ("v1") rather than the current
# one ("v2", or unset); ConfigurationError naming the variable otherwise. Consulted for every
# value sealed: parsed once per change of the variable.
writes_v1 = EnvSwitch(ENV_WRITE_FORMAT, _parse_write_format)


def seal_value(
    plaintext: str,
    keyring: KeyRing,
    context: bytes = b"",
    # Positional too, as for open_value.
    auditing: bool | None = None,
    model: str | None = None,
    field: str | None = None,
    record: str | None = None,
    v1: bool | None = None,
) -> str:
    """``plaintext`` sealed under the current master key, bound to ``context``, audited
    (``auditing``: whether to, ``None``: if anything listens). With ``REDIS_SRE_WRITE_FORMAT=v1``
    it is written in the origin's v1 format instead, bound to nothing (``context`` unused);
    ``v1``: that switch, if the caller has looked it up (a record's writer does, once)."""
    audited = auditing if auditing is not None else audit_enabled()
    start = _clock() if audited else 0.0
    if v1 if v1 is not None else writes_v1():
        envelope = seal_legacy(plaintext, keyring)
    else:
        envelope = seal(plaintext, keyring, context)
    if audited:
        # A scope's ring seals under its scope key: the event names that key.
        key = keyring.current if keyring.scope_part is None else keyring.scope_current()
        duration = _clock() - start
        track(
            "encrypt", model=model, field=field, record=record, key_id=key.key_id, duration=duration
        )
    return envelope


def rewrap_value(
    value: str,
    blob: bytes,
    keyring: KeyRing,
    context: bytes = b"",
    *,
    auditing: bool = False,
    model: str | None = None,
    field: str | None = None,
    record: str | None = None,
) -> str:
    """A current envelope (``value``, and its checked bytes ``blob``) with its data key
    re-wrapped under the current master key, audited; a failure is audited as a failed open.
    Raises ``DecryptionError`` as it is."""
    start = _clock() if auditing else 0.0
    try:
        new = rewrap_blob(value, blob, keyring, context)
    except DecryptionError as exc:
        track_open(value, exc, model=model, field=field, record=record)
        raise
    if auditing:
        key_id = keyring.current.key_id
        duration = _clock() - start
        track("rewrap", model=model, field=field, record=record, key_id=key_id, duration=duration)
    return new
