"""Master keys and key rings: where the keys come from and how an envelope's key id selects one."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import DecryptionError, MasterKeyError

__all__ = [
    "ENV_KMS_KEY_ID",
    "ENV_MASTER_KEY",
    "ENV_PREVIOUS_MASTER_KEYS",
    "KEY_ID_SIZE",
    "KeyRing",
    "MasterKey",
    "env_keys",
    "generate_master_key",
    "get_keyring",
    "set_keyring",
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
    """The current key (encrypts and decrypts) and previous keys (decrypt only), by key id."""

    __slots__ = ("_by_id", "current", "previous")

    def __init__(self, current: MasterKey, previous: Iterable[MasterKey] = ()) -> None:
        self.current = current
        self.previous = tuple(k for k in previous if k.key_id != current.key_id)
        self._by_id = {k.key_id: k for k in (*reversed(self.previous), current)}

    @classmethod
    def from_base64(cls, current: str, previous: Iterable[str] = ()) -> KeyRing:
        """Build a ring from base64 keys, as ``REDIS_SRE_MASTER_KEY`` holds them."""
        entries = list(previous)
        where = "previous key {n} of {count} given to KeyRing.from_base64"
        return cls(
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
        """Read the current and previous master keys from the environment."""

        env = os.environ if environ is None else environ
        return _parse_env(env.get(ENV_MASTER_KEY), env.get(ENV_PREVIOUS_MASTER_KEYS))

    @property
    def keys(self) -> tuple[MasterKey, ...]:
        """Every key, current first."""
        return (self.current, *self.previous)

    @property
    def previous_ids(self) -> tuple[str, ...]:
        """The hex ids of the decrypt-only keys (what ``status`` calls previous keys)."""
        return tuple(k.key_id_hex for k in self.previous)

    def get(self, key_id: bytes) -> MasterKey:
        """The key with this id; no trial decryption with the others."""
        key = self._by_id.get(key_id)
        if key is None:
            raise DecryptionError(
                f"Decryption failed: no configured master key has id {key_id.hex()} "
                f"(set it as {ENV_MASTER_KEY} or in {ENV_PREVIOUS_MASTER_KEYS})"
            )
        return key

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._by_id

    def __repr__(self) -> str:
        prev = ", ".join(k.key_id_hex for k in self.previous)
        return f"KeyRing(current={self.current.key_id_hex}, previous=[{prev}])"


def _parse_env(current: str | None, previous: str | None) -> KeyRing:
    if not current or not current.strip():
        raise MasterKeyError(_MISSING_MESSAGE)
    return KeyRing(_parse_current(current), _parse_previous(previous))


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


# The ring in force. Set in code with set_keyring(); otherwise read from the environment at use
# time (the design note's rotation script changes os.environ in a running process) and parsed
# again only when the variables' text changes. With REDIS_SRE_KMS_KEY_ID set, the environment
# describes a key store (keystore.StoreKeyRing). Only the ring in force is kept: a ring the
# variables no longer describe is dropped with its keys (and what was derived from them), so no
# key outlives its configuration; the variables set again to the same text keep their ring.
ENV_KMS_KEY_ID = "REDIS_SRE_KMS_KEY_ID"
_lock = threading.Lock()
_configured: KeyRing | None = None


def set_keyring(keyring: KeyRing | None) -> None:
    """Use this ring (a ``KeyRing``, or a ``keystore.StoreKeyRing``) instead of the environment;
    ``None`` returns to the environment, read afresh."""
    global _configured, _env_ring, _fast
    _configured = keyring
    with _lock:
        _env_ring = None
        _fast = None


# get_keyring() runs for every secret sealed or opened, and os.environ.get() costs ~1.7 us (key
# encoding, Mapping machinery): twice that per secret. On POSIX, os.environ keeps its bytes in a
# dict (``_data``) that every os.environ write updates with new bytes objects; the cache holds
# that dict and the bytes objects it had, and is valid while they are still there (identity
# checks, ~0.1 us). The text is read through os.environ only when they changed.
_RAW_KEYS = (
    os.fsencode(ENV_MASTER_KEY),
    os.fsencode(ENV_PREVIOUS_MASTER_KEYS),
    os.fsencode(ENV_KMS_KEY_ID),
)
_POSIX = os.name == "posix"

# The ring in force, with the text of the variables that made it.
_env_ring: tuple[tuple[str | None, ...], KeyRing] | None = None
_K_CURRENT, _K_PREVIOUS, _K_KMS = _RAW_KEYS
# The fast path: (os.environ's byte dict, the three values' bytes objects in it, the key store's
# variables and their bytes objects (None without a key store), their ring).
_StoreRaw = tuple[tuple[bytes, object], ...]
_fast: tuple[dict[bytes, bytes], object, object, object, _StoreRaw | None, KeyRing] | None = None


def get_keyring() -> KeyRing:
    """The ring in force: the one set in code, else the one the environment describes."""
    configured = _configured
    if configured is not None:
        return configured
    fast = _fast
    if fast is not None:
        data, raw_current, raw_previous, raw_kms, store_raw, ring = fast
        try:
            same = os.environ._data is data  # type: ignore[attr-defined]
        except AttributeError:  # os.environ replaced by a plain mapping
            same = False
        if (
            same
            and data.get(_K_CURRENT) is raw_current
            and data.get(_K_PREVIOUS) is raw_previous
            and data.get(_K_KMS) is raw_kms
            and (store_raw is None or all(data.get(k) is v for k, v in store_raw))
        ):
            return ring
    return _read_environ()


def _read_environ() -> KeyRing:
    global _env_ring, _fast
    data = getattr(os.environ, "_data", None) if _POSIX else None
    names: tuple[str, ...] = (ENV_MASTER_KEY, ENV_PREVIOUS_MASTER_KEYS, ENV_KMS_KEY_ID)
    if (os.environ.get(ENV_KMS_KEY_ID) or "").strip():
        from .store import ENVIRONMENT

        names += ENVIRONMENT
    raw_names = [os.fsencode(n) for n in names]
    # The bytes before the text: if the environment changes in between, the cache is stale at once.
    raw = [data.get(n) for n in raw_names] if type(data) is dict else None
    texts = tuple(os.environ.get(n) for n in names)
    cached = _env_ring
    ring = cached[1] if cached is not None and cached[0] == texts else None
    if ring is None:
        if texts[2] is not None and texts[2].strip():
            from .store import StoreKeyRing

            ring = StoreKeyRing.from_env()
        else:
            ring = _parse_env(texts[0], texts[1])
    with _lock:
        _env_ring = (texts, ring)
        if raw is None:
            _fast = None
        else:
            store_raw = tuple(zip(raw_names[3:], raw[3:], strict=True)) if len(names) > 3 else None
            _fast = (data, raw[0], raw[1], raw[2], store_raw, ring)  # type: ignore[assignment]
    return ring
