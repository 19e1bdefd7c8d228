"""Master keys and key rings: the ``KeyRing`` interface every ring implements, the static ring,
and how an envelope's key id selects a key. The environment factory (``get_keyring``) is
``env``, the key store's ring ``store``."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import DecryptionError, MasterKeyError, UnknownKeyError

__all__ = [
    "ENV_MASTER_KEY",
    "ENV_PREVIOUS_MASTER_KEYS",
    "KEY_ID_SIZE",
    "KeyRing",
    "MasterKey",
    "StaticKeyRing",
    "env_keys",
    "generate_master_key",
    "parse_env",
]

ENV_MASTER_KEY = "REDIS_SRE_MASTER_KEY"
ENV_PREVIOUS_MASTER_KEYS = "REDIS_SRE_PREVIOUS_MASTER_KEYS"

KEY_SIZE = 32
KEY_ID_SIZE = 8
_KEY_ID_LABEL = b"redis-encrypted-fields/key-id/v1"

T = TypeVar("T")

_MISSING_MESSAGE = (
    f"{ENV_MASTER_KEY} environment variable not set. Generate a key with "
    "`redis-encrypted-fields keygen` (or python -c 'import os, base64; "
    "print(base64.b64encode(os.urandom(32)).decode())') and export it."
)


_NEW_KEY_ADVICE = "Generate a new one with `redis-encrypted-fields keygen`."
_CURRENT_ADVICE = (
    "Data already encrypted needs the key it was encrypted with (a new key cannot read it); "
    "for a new deployment, generate one with `redis-encrypted-fields keygen`."
)
_PREVIOUS_ADVICE = (
    "Fix that entry or remove it: a previous key is one that data was encrypted with, so a newly "
    "generated key cannot stand in for it."
)


def _length_message(where: str, problem: str = "", advice: str = _NEW_KEY_ADVICE) -> str:
    found = f": {problem}" if problem else ""
    return (
        f"Master key must be 32 bytes (256 bits), given as standard base64, in {where}{found}. "
        f"{advice}"
    )


class MasterKey:
    """A 256-bit key-encryption key with a public id derived from it.

    The id is the first 8 bytes of HMAC-SHA256(key, label): it names the key in every envelope
    without revealing anything about it, and needs no configuration.
    """

    __slots__ = ("__weakref__", "_made", "_material", "aead", "key_id")

    def __init__(
        self, material: bytes, *, where: str = "the given key", advice: str = _NEW_KEY_ADVICE
    ) -> None:
        if not isinstance(material, bytes):
            raise MasterKeyError(_length_message(where, "it is not bytes", advice))
        if len(material) != KEY_SIZE:
            raise MasterKeyError(_length_message(where, f"it is {len(material)} bytes", advice))
        self._material = material
        # The AES-256-GCM instance for this key, built once (construction is not free).
        self.aead = AESGCM(material)
        self.key_id = hmac.digest(material, _KEY_ID_LABEL, hashlib.sha256)[:KEY_ID_SIZE]
        self._made: dict[bytes, object] = {}  # see made_once

    @classmethod
    def from_base64(
        cls, text: str, *, where: str = "the given key", advice: str = _NEW_KEY_ADVICE
    ) -> MasterKey:
        """Parse standard base64 of exactly 32 bytes."""
        try:
            material = base64.b64decode(text.strip().encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError, AttributeError):
            raise MasterKeyError(
                _length_message(where, "it is not standard base64", advice)
            ) from None
        if len(material) != KEY_SIZE:
            problem = f"it decodes to {len(material)} bytes"
            raise MasterKeyError(_length_message(where, problem, advice))
        return cls(material, where=where, advice=advice)

    @classmethod
    def generate(cls) -> MasterKey:
        """A new random key."""
        return cls(os.urandom(KEY_SIZE))

    @property
    def key_id_hex(self) -> str:
        return self.key_id.hex()

    def derive(self, info: bytes) -> bytes:
        """A 32-byte subkey for the purpose ``info`` names (HKDF-SHA256), independent of this key
        and of every other purpose's subkey: for uses other than wrapping data keys."""
        return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(
            self._material
        )

    def made_once(self, info: bytes, make: Callable[[MasterKey, bytes], T]) -> T:
        """``make(self, info)``, made on first use and kept by this key object.

        For what is derived from the key (the blind index's keys, ``info`` naming the purpose as
        for ``derive``): it lives and dies with this object, and so with the ring holding it
        (a key store ring drops its keys when their cache lifetime ends), never in a cache of
        its own that would keep key material, or the key, past that.
        """
        made = self._made.get(info)
        if made is None:
            made = self._made.setdefault(info, make(self, info))
        return made  # type: ignore[return-value]  # only make() stores under its info

    def to_base64(self) -> str:
        """The key in the form ``REDIS_SRE_MASTER_KEY`` takes. Handle with care."""
        return base64.b64encode(self._material).decode("ascii")

    def __repr__(self) -> str:
        return f"MasterKey(id={self.key_id_hex})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MasterKey) and hmac.compare_digest(self._material, other._material)

    def __hash__(self) -> int:
        return hash(self.key_id)

    def __reduce__(self) -> None:  # type: ignore[override]
        # Pickling would write the raw key wherever the pickle goes.
        raise TypeError("MasterKey cannot be pickled")


class KeyRing:
    """What every key ring does: ``current`` encrypts, ``get(key_id)`` finds the key an envelope
    names, ``keys`` lists them all (current first). ``StaticKeyRing`` (keys given once) and
    ``StoreKeyRing`` (keys from the key store, cached) implement it; callers never know which
    they hold.

    ``KeyRing(current, previous)``, ``KeyRing.from_base64`` and ``KeyRing.from_env`` build a
    ``StaticKeyRing``, as ``pathlib.Path(...)`` builds the running system's path: the documented
    way to build a ring in code, and ``isinstance(ring, KeyRing)`` holds for every ring.
    """

    __slots__ = ()

    # A scope's ring (``keys.scope.ScopeRing``) seals under its scope key, bound to the scope
    # (these bytes); every other ring has none.
    scope_part: bytes | None = None

    if TYPE_CHECKING:
        # What type checkers see of ``KeyRing(...)``: the static ring's arguments (a subclass's
        # own __init__ is checked for it).
        def __new__(cls, current: MasterKey, previous: Iterable[MasterKey] = ()) -> KeyRing: ...

    else:

        def __new__(cls, *args, **kwargs):
            # object.__new__ of the class to build; Python then runs that class's __init__.
            return object.__new__(StaticKeyRing if cls is KeyRing else cls)

    @classmethod
    def from_base64(cls, current: str, previous: Iterable[str] = ()) -> KeyRing:
        """A static ring from base64 keys, as ``REDIS_SRE_MASTER_KEY`` holds them."""
        entries = list(previous)
        where = "previous key {n} of {count} given to KeyRing.from_base64"
        return StaticKeyRing(
            MasterKey.from_base64(
                current,
                where="the current key given to KeyRing.from_base64",
                advice=_CURRENT_ADVICE,
            ),
            [
                MasterKey.from_base64(
                    text, where=where.format(n=n, count=len(entries)), advice=_PREVIOUS_ADVICE
                )
                for n, text in enumerate(entries, 1)
            ],
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KeyRing:
        """A static ring of the current and previous master keys in the environment."""
        env = os.environ if environ is None else environ
        return parse_env(env.get(ENV_MASTER_KEY), env.get(ENV_PREVIOUS_MASTER_KEYS))

    @property
    def current(self) -> MasterKey:
        """The key that encrypts (it also decrypts)."""
        raise NotImplementedError

    @property
    def keys(self) -> tuple[MasterKey, ...]:
        """Every key, current first: what a blind-index query looks under, and what origin v1
        values (which name no key) are tried with."""
        raise NotImplementedError

    @property
    def previous_ids(self) -> tuple[str, ...]:
        """The hex ids of the decrypt-only keys (what ``status`` calls previous keys)."""
        raise NotImplementedError

    def get(self, key_id: bytes) -> MasterKey:
        """The key with this id (``UnknownKeyError``, a ``DecryptionError``, if none); no trial
        decryption."""
        raise NotImplementedError

    def __contains__(self, key_id: object) -> bool:
        raise NotImplementedError

    def scope_current(self) -> MasterKey:
        """The scope key that seals (a scope's ring only)."""
        raise DecryptionError(_UNSCOPED)

    def scope_key(self, key_id: bytes) -> MasterKey:
        """The scope key with this id (a scope's ring only)."""
        raise DecryptionError(_UNSCOPED)

    def scope_binding(self) -> bytes:
        """What binds a value to its scope (a scope's ring only)."""
        raise DecryptionError(_UNSCOPED)

    def scope_keys(self) -> tuple[MasterKey, ...]:
        """The scope's keys, active first (a scope's ring only; none for another)."""
        return ()


_UNSCOPED = (
    "Decryption failed: the value was sealed under a scope key (a model with a KeyScope field), "
    "and is read without its scope"
)


class StaticKeyRing(KeyRing):
    """The current key (encrypts and decrypts) and previous keys (decrypt only), given once:
    what ``KeyRing(current, previous)`` and the environment's master keys make."""

    __slots__ = ("_by_id", "current", "previous")

    # An attribute here (one slot read per secret sealed), the interface's property above.
    current: MasterKey

    def __init__(self, current: MasterKey, previous: Iterable[MasterKey] = ()) -> None:
        self.current = current
        self.previous = tuple(k for k in previous if k.key_id != current.key_id)
        self._by_id = {k.key_id: k for k in (*reversed(self.previous), current)}

    @property
    def keys(self) -> tuple[MasterKey, ...]:
        return (self.current, *self.previous)

    @property
    def previous_ids(self) -> tuple[str, ...]:
        return tuple(k.key_id_hex for k in self.previous)

    def get(self, key_id: bytes) -> MasterKey:
        key = self._by_id.get(key_id)
        if key is None:
            raise UnknownKeyError(
                f"Decryption failed: no configured master key has id {key_id.hex()} "
                f"(set it as {ENV_MASTER_KEY} or in {ENV_PREVIOUS_MASTER_KEYS})"
            )
        return key

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._by_id

    def __repr__(self) -> str:
        prev = ", ".join(k.key_id_hex for k in self.previous)
        return f"KeyRing(current={self.current.key_id_hex}, previous=[{prev}])"


def parse_env(current: str | None, previous: str | None) -> KeyRing:
    """The static ring the two variables' text describes (``MasterKeyError`` without a current
    key)."""
    if not current or not current.strip():
        raise MasterKeyError(_MISSING_MESSAGE)
    return StaticKeyRing(_parse_current(current), _parse_previous(previous))


def _parse_current(current: str) -> MasterKey:
    return MasterKey.from_base64(current, where=ENV_MASTER_KEY, advice=_CURRENT_ADVICE)


def _parse_previous(previous: str | None) -> list[MasterKey]:
    # Empty entries (a trailing comma, ",," left by an edit) are skipped but still counted, so
    # that "entry 3" is the third comma-separated entry the operator sees.
    entries = (previous or "").split(",")
    return [
        MasterKey.from_base64(
            text,
            where=f"entry {n} (of {len(entries)}, comma-separated) of {ENV_PREVIOUS_MASTER_KEYS}",
            advice=_PREVIOUS_ADVICE,
        )
        for n, text in enumerate(entries, 1)
        if text.strip()
    ]


def env_keys(environ: Mapping[str, str] | None = None) -> list[MasterKey]:
    """``REDIS_SRE_MASTER_KEY`` then ``REDIS_SRE_PREVIOUS_MASTER_KEYS``, those that are set (the
    decrypt-only keys of a key store's ring)."""
    env = os.environ if environ is None else environ
    current = env.get(ENV_MASTER_KEY) or ""
    first = [_parse_current(current)] if current.strip() else []
    return [*first, *_parse_previous(env.get(ENV_PREVIOUS_MASTER_KEYS))]


def generate_master_key() -> str:
    """A new master key as standard base64 of 32 random bytes."""
    return MasterKey.generate().to_base64()
