"""The policy for values found in Redis that are not current envelopes (plaintext, origin v1
values): accepted with a warning during a migration, or refused once the deployment says none
is left (``REDIS_SRE_REJECT_PLAINTEXT``, ``set_plaintext_reads``). Every path that takes a stored
value for a record's secret asks here (``check_unbound``), and every read or write first checks
the switch (``checked_keyring``)."""

from __future__ import annotations

from typing import Any

from ..audit import track
from ..crypto import ENV_WRITE_FORMAT, Kind, classify, writes_v1
from ..errors import ConfigurationError, DecryptionError, PlaintextSecretError, printable
from ..keys import KeyRing, get_keyring
from ..switches import EnvSwitch

__all__ = [
    "ENV_REJECT_PLAINTEXT",
    "check_input",
    "check_unbound",
    "checked_keyring",
    "plaintext_allowed",
    "set_plaintext_reads",
]

ENV_REJECT_PLAINTEXT = "REDIS_SRE_REJECT_PLAINTEXT"


_plaintext_reads: bool | None = None


def set_plaintext_reads(allowed: bool | None) -> None:
    """Accept plaintext read from Redis (migration) or refuse it; ``None``: from the environment.

    By default plaintext is accepted with a warning unless ``REDIS_SRE_REJECT_PLAINTEXT`` is
    ``1``/``true``/``yes``/``on``; another value than those and ``0``/``false``/``no``/``off``
    raises ``ConfigurationError`` at the first read or write (``checked_keyring``).
    """
    global _plaintext_reads
    _plaintext_reads = allowed


_ON = frozenset(("1", "true", "yes", "on"))
_OFF = frozenset(("", "0", "false", "no", "off"))


def plaintext_allowed() -> bool:
    """Whether values found in Redis that are not current envelopes (plaintext, and origin v1
    values, which are bound to no record) may be taken for secrets: ``set_plaintext_reads``,
    else ``REDIS_SRE_REJECT_PLAINTEXT`` (``ConfigurationError`` for an invalid value, and for
    refusing them while ``REDIS_SRE_WRITE_FORMAT=v1`` writes origin v1 values)."""
    allowed = _plaintext_reads if _plaintext_reads is not None else _allowed_by_env()
    if not allowed and writes_v1():
        # Every value written would be refused when read back: the two switches contradict
        # each other, and saying so beats failing on the first read.
        source = (
            "set_plaintext_reads(False)"
            if _plaintext_reads is False
            else f"{ENV_REJECT_PLAINTEXT} on"
        )
        raise ConfigurationError(
            f"{ENV_WRITE_FORMAT}=v1 (write values in the origin's v1 format during a rolling "
            f"upgrade) conflicts with {source} (refuse origin v1 values read from Redis): "
            f"unset {ENV_WRITE_FORMAT} once every process runs this library, run migrate, then "
            "refuse plaintext"
        )
    return allowed


def _parse_reject_plaintext(text: str) -> bool:
    """Whether plaintext reads are allowed, by the switch's text."""
    flag = text.strip().lower()
    if flag in _ON:
        return False
    if flag not in _OFF:
        # A typo must not silently leave plaintext reads on. (The value is a switch, not a
        # secret: it may be shown.)
        raise ConfigurationError(
            f"{ENV_REJECT_PLAINTEXT}={text[:40]!r} is not a valid switch: use 1, true, yes or on "
            "to refuse plaintext read from Redis; 0, false, no, off or unset to accept it"
        )
    return True


# Consulted once per read and per record written: parsed once per change of the variable.
_allowed_by_env = EnvSwitch(ENV_REJECT_PLAINTEXT, _parse_reject_plaintext)


def checked_keyring() -> KeyRing:
    """The key ring in force, once the plaintext switch is checked: a malformed
    ``REDIS_SRE_REJECT_PLAINTEXT`` is refused when a read or write first needs the ring, not
    left unnoticed until a plaintext happens to be read. (Once per read or record written: one
    environment look-up beside the ring's.)"""
    plaintext_allowed()
    return get_keyring()


# What the switch's refusals suggest: migrate, with the switch on, reports such values as
# suspicious and leaves them (a value planted in Redis looks the same as one never migrated).
_REFUSED_HINT = (
    "a value written to Redis behind the application's back looks the same; if it is genuine, "
    "`redis-encrypted-fields migrate --accept-plaintext` encrypts it"
)


def check_unbound(raw: Any, model: str, field: str, record: str | None) -> None:
    """Refuse ``raw``, a value found in Redis at ``field`` of ``record`` that is not a current
    envelope (plaintext, or an origin v1 value), while plaintext reads are disabled.

    Every path that takes a stored value for a record's secret calls this (reads, the secret a
    mask keeps, search's filter), so that none of them lets through a value a read refuses.
    Raises ``PlaintextSecretError`` naming the value, never showing it.
    """
    if plaintext_allowed():
        return
    if isinstance(raw, str) and classify(raw) is Kind.LEGACY:
        # Origin v1 values carry no record binding: one copied from another record or restored
        # from an old backup decrypts anywhere, so once migration is declared finished they are
        # refused like plaintext.
        what = "is stored in the origin's v1 format (not bound to its record)"
    else:
        what = "is stored as plaintext"
    where = printable(f"{model}.{field}" + (f" of {record}" if record else ""))
    error = PlaintextSecretError(
        f"Decryption failed: {where} {what} and plaintext reads are disabled ({_REFUSED_HINT})",
        model=model,
        record=record,
        field=field,
    )
    # A failed decrypt in the audit trail (anomaly rule plaintext_refused): a value planted in
    # Redis behind the application's back looks like this.
    track("decrypt", model=model, field=field, record=record, error=error)
    raise error


def check_input(value: str, model: str, field: str, record: str | None) -> None:
    """Refuse ``value``, given as input (not read from Redis) for ``field`` of ``record``, if it
    is an origin v1 envelope: it is bound to no record, so it could be any record's secret (copied
    from one, or from an old backup), and opening it would seal that secret into this record as
    its own. Raises ``DecryptionError`` naming the field, never showing the value."""
    if classify(value) is not Kind.LEGACY:
        return
    where = printable(f"{model}.{field}" + (f" of {record}" if record else ""))
    raise DecryptionError(
        f"Decryption failed: {where} was given a value in the origin's v1 format, which is not "
        "bound to a record and could be any record's secret, so it is not taken for this one's; "
        "give the plaintext (decrypt_secret() reads a v1 value whose record is known)",
        model=model,
        record=record,
        field=field,
    )
