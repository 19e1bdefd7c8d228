"""The key store: master keys kept in Redis wrapped by a KMS, and the cached key ring over it.

The hierarchy (see docs/keys.md)::

    KMS key (never leaves the KMS)
      └─ wraps master keys: one Redis hash, one field per key id, each key wrapped by the KMS
           └─ wrap data keys: one per secret, in each envelope (docs/format.md)

A master key from the store is an ordinary ``MasterKey``: 32 bytes (from KMS ``GenerateDataKey``)
whose key id, derived from them, is what envelopes carry. The store holds, per key id, the wrapped
key, its state (``active``, ``decrypt-only``, ``retired``), its creation time, when it stopped
being active, and the KMS key that wrapped it. The KMS encryption context binds the wrapped key to
its key id and purpose (and, for keys created since context version 2, its creation time), and an
unwrapped key must also have the id of the record it came from.

Rolling the store back (an old record written back as active) is refused: a ring encrypts only
under an active key that is the newest the store lists and that it has never seen demoted.

``StoreKeyRing`` is the key ring a process uses: the store's active key as ``current``, re-read at
most every ``ttl`` seconds; any other key id unwrapped from the store on first use and kept for
``ttl`` seconds; concurrent first uses share one KMS call; failed unwraps back off.
``get_keyring()`` returns one when ``REDIS_SRE_KMS_KEY_ID`` is set.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import enum
import json
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import redis

# The module, not its names: while audit imports crypto (which imports this layer), this module
# runs during audit's own import; track is looked up when called.
from .. import audit
from ..errors import ConfigurationError, DecryptionError, KeyStoreError, MasterKeyError
from .aws import AwsKms
from .kms import KmsProvider, WrappedKey
from .ring import (
    ENV_MASTER_KEY,
    ENV_PREVIOUS_MASTER_KEYS,
    KEY_ID_SIZE,
    KeyRing,
    MasterKey,
    env_keys,
)

__all__ = [
    "DEFAULT_CACHE_TTL",
    "DEFAULT_FAILURE_BACKOFF",
    "ENVIRONMENT",
    "ENV_KEYSTORE_URL",
    "ENV_KEY_CACHE_TTL",
    "ENV_KMS_KEY_ID",
    "STORE_KEY",
    "KeyRecord",
    "KeyState",
    "KeyStore",
    "KeyUsage",
    "StoreKeyRing",
    "cache_ttl",
    "deny_statement",
    "encryption_context",
]

ENV_KMS_KEY_ID = "REDIS_SRE_KMS_KEY_ID"
ENV_KEYSTORE_URL = "REDIS_SRE_KEYSTORE_URL"
ENV_KEY_CACHE_TTL = "REDIS_SRE_KEY_CACHE_TTL"
# The variables a store-backed ring is built from (besides the KMS key id and the env keys).
ENVIRONMENT = (ENV_KEYSTORE_URL, "REDIS_OM_URL", ENV_KEY_CACHE_TTL)
DEFAULT_CACHE_TTL = 300.0
# After an unwrap fails, the key id is not sent to the KMS again for this long, doubled after each
# further failure up to MAX_FAILURE_BACKOFF: a planted record (or a KMS outage) then costs a few
# KMS calls per key id per minute and process, not one per read.
DEFAULT_FAILURE_BACKOFF = 5.0
MAX_FAILURE_BACKOFF = 60.0
STORE_KEY = "redis-encrypted-fields:keystore"
PURPOSE = "redis-encrypted-fields master key"
_TIMEOUT = 5.0  # seconds, for the store's own Redis client

T = TypeVar("T")


class KeyState(enum.StrEnum):
    ACTIVE = "active"  # encrypts new values (one key) and decrypts
    DECRYPT_ONLY = "decrypt-only"
    # Wrapped key deleted from the store. A copy of its record (a backup) still unwraps until
    # the KMS key policy denies its key id (``deny_statement``).
    RETIRED = "retired"


# Context version 2 (keys created from now on) also binds the creation time: a replayed record
# cannot claim to be newer than it is without the KMS refusing to unwrap it.
CONTEXT_VERSION = 2


def encryption_context(key_id_hex: str, created_at: str | None = None) -> dict[str, str]:
    """The KMS encryption context of a master key: its key id and purpose, and its creation time
    for records of context version 2."""
    context = {"purpose": PURPOSE, "key_id": key_id_hex}
    if created_at is not None:
        context["created_at"] = created_at
    return context


def deny_statement(key_id_hex: str) -> dict[str, Any]:
    """The KMS key policy statement that denies unwrapping one master key, whatever its record
    says: what makes retiring a key irreversible (``keys retire`` prints it)."""
    return {
        "Sid": f"DenyRetiredMasterKey{key_id_hex}",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "kms:Decrypt",
        "Resource": "*",
        "Condition": {
            "StringEquals": {
                f"kms:EncryptionContext:{name}": value
                for name, value in encryption_context(key_id_hex).items()
            }
        },
    }


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat(timespec="milliseconds")


def _instant(text: str) -> datetime.datetime:
    """A record's timestamp as an aware datetime (ValueError if it is not one)."""
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("a timestamp without a time zone")
    return moment


def _server_now(client: Any) -> datetime.datetime:
    """The store's Redis clock: one clock for every machine that creates and retires keys."""
    seconds, micros = client.time()
    return datetime.datetime.fromtimestamp(int(seconds) + int(micros) / 1e6, datetime.UTC)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _parse_key_id(text: str) -> bytes:
    try:
        key_id = bytes.fromhex(text)
    except ValueError:
        key_id = b""
    if len(key_id) != KEY_ID_SIZE or len(text) != 2 * KEY_ID_SIZE:
        raise KeyStoreError(f"{text!r} is not a key id (16 hex digits, as `keys list` shows)")
    return key_id


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One master key in the store. ``wrapped`` is KMS ciphertext (empty once retired)."""

    key_id: str  # 16 hex digits, the id envelopes carry
    state: KeyState
    created_at: str  # ISO 8601, UTC
    kms_key_id: str  # the KMS key that wrapped it
    wrapped: bytes = field(default=b"", repr=False)
    deactivated_at: str | None = None  # when it stopped being active (ISO 8601, UTC)
    context_version: int = 1  # 2: created_at is in the KMS encryption context

    @property
    def is_active(self) -> bool:
        return self.state is KeyState.ACTIVE

    @property
    def context(self) -> dict[str, str]:
        """The KMS encryption context its key was wrapped with."""
        bound = self.created_at if self.context_version >= 2 else None
        return encryption_context(self.key_id, bound)

    def as_dict(self) -> dict[str, str | None]:
        """What ``keys list --json`` prints for it."""
        return {
            "key_id": self.key_id,
            "state": self.state.value,
            "created_at": self.created_at,
            "deactivated_at": self.deactivated_at,
            "kms_key_id": self.kms_key_id,
        }

    def to_json(self) -> str:
        doc: dict[str, Any] = {k: v for k, v in self.as_dict().items() if v is not None}
        del doc["key_id"]  # the hash field
        doc["wrapped"] = base64.b64encode(self.wrapped).decode("ascii")
        if self.context_version != 1:
            doc["context_version"] = self.context_version
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, key_id: str, text: str) -> KeyRecord:
        _parse_key_id(key_id)
        try:
            doc = json.loads(text)
            deactivated_at = doc.get("deactivated_at")
            record = cls(
                key_id=key_id,
                state=KeyState(doc["state"]),
                created_at=str(doc["created_at"]),
                kms_key_id=str(doc["kms_key_id"]),
                wrapped=base64.b64decode(doc["wrapped"], validate=True),
                deactivated_at=None if deactivated_at is None else str(deactivated_at),
                context_version=doc.get("context_version", 1),
            )
            # Timestamps are compared (which key is newest, how long one has been inactive).
            _instant(record.created_at)
            if record.deactivated_at is not None:
                _instant(record.deactivated_at)
            if type(record.context_version) is not int or record.context_version not in (1, 2):
                raise ValueError("unknown context version")
            return record
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise KeyStoreError(f"the key store record of {key_id} is malformed") from None


class KeyUsage(Protocol):
    """What retiring a key asks of a check of the data: the values found under the key. The
    report of ``ops.status`` is one (the check lives with the maintenance operations, above
    this layer)."""

    def values_under(self, key_id: str) -> Mapping[str, int] | None:
        """The values under master key ``key_id`` (hex), decrypted or not, per model field (only
        those with some); ``None`` if this check cannot tell (not a status report)."""
        ...


class KeyStore:
    """Master keys in one Redis hash (``key``), wrapped by ``kms``.

    ``client`` is a synchronous redis-py client. ``kms`` may be ``None`` for reading the store
    (``records``); creating and unwrapping keys need it.
    """

    def __init__(
        self, client: Any, kms: KmsProvider | None = None, *, key: str = STORE_KEY
    ) -> None:
        self.client = client
        self.kms = kms
        self.key = key

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KeyStore:
        """The store at ``REDIS_SRE_KEYSTORE_URL``, else ``REDIS_OM_URL`` (the models' Redis),
        with AWS KMS key ``REDIS_SRE_KMS_KEY_ID`` if set."""
        env = os.environ if environ is None else environ
        url = (
            env.get(ENV_KEYSTORE_URL) or env.get("REDIS_OM_URL") or "redis://localhost:6379"
        ).strip()
        try:
            client = redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_timeout=_TIMEOUT,
                socket_connect_timeout=_TIMEOUT,
            )
        except ValueError:
            # redis-py's message quotes the URL, which may hold a password.
            raise KeyStoreError(
                f"{ENV_KEYSTORE_URL} (or REDIS_OM_URL) is not a Redis URL"
            ) from None
        kms_key_id = (env.get(ENV_KMS_KEY_ID) or "").strip()
        return cls(client, AwsKms(kms_key_id) if kms_key_id else None)

    def _redis(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except redis.RedisError as exc:
            raise KeyStoreError(f"key store: {type(exc).__name__}: {exc}") from None

    def _require_kms(self) -> KmsProvider:
        if self.kms is None:
            raise KeyStoreError(f"no KMS configured: set {ENV_KMS_KEY_ID}")
        return self.kms

    # --- reading -------------------------------------------------------------------------------

    def records(self) -> list[KeyRecord]:
        """Every key, oldest first."""
        stored = self._redis(lambda: self.client.hgetall(self.key))
        records = [KeyRecord.from_json(_text(k), _text(v)) for k, v in stored.items()]
        return sorted(records, key=lambda r: (r.created_at, r.key_id))

    def record(self, key_id: bytes) -> KeyRecord | None:
        """The record of one key id, or ``None``."""
        hex_id = key_id.hex()
        raw = self._redis(lambda: self.client.hget(self.key, hex_id))
        return None if raw is None else KeyRecord.from_json(hex_id, _text(raw))

    def active(self, records: Iterable[KeyRecord] | None = None) -> KeyRecord:
        """The active key's record (of ``records``, else of the store). Raises
        ``KeyStoreError`` if there is none."""
        active = [r for r in (self.records() if records is None else records) if r.is_active]
        if not active:
            raise KeyStoreError(
                "the key store has no active master key: create one with "
                "`redis-encrypted-fields keys create`"
            )
        if len(active) > 1:
            ids = ", ".join(r.key_id for r in active)
            raise KeyStoreError(f"the key store has more than one active master key: {ids}")
        return active[0]

    # --- KMS -----------------------------------------------------------------------------------

    def unwrap(self, record: KeyRecord) -> MasterKey:
        """Unwrap a record's key with the KMS (one call, audited as ``kms_decrypt``)."""
        kms = self._require_kms()
        if record.state is KeyState.RETIRED or not record.wrapped:
            raise KeyStoreError(f"master key {record.key_id} is retired")
        key_id = bytes.fromhex(record.key_id)
        try:
            wrapped = WrappedKey(record.wrapped, record.kms_key_id)
            material = kms.unwrap(wrapped, record.context)
            key = _checked(material, record.key_id)
        except KeyStoreError as exc:
            error = type(exc)(f"master key {record.key_id}: {exc}")
            audit.track("kms_decrypt", key_id=key_id, kms_key_id=record.kms_key_id, error=error)
            raise error from None
        audit.track("kms_decrypt", key_id=key_id, kms_key_id=record.kms_key_id)
        return key

    def create(self) -> KeyRecord:
        """A new active master key; the active one becomes decrypt-only. Audited: ``kms_generate``,
        ``kms_encrypt``, ``kms_decrypt`` (the new key is unwrapped once before it becomes active,
        so a key that does not unwrap never is), ``key_created``.

        Its creation time, from the store's Redis clock, is later than every listed key's and is
        bound into its KMS encryption context: rings refuse an active key older than another.
        """
        kms = self._require_kms()
        newest = max((_instant(r.created_at) for r in self.records()), default=None)
        # To the millisecond, as stored and compared.
        moment = _instant(_iso(self._redis(lambda: _server_now(self.client))))
        if newest is not None and moment <= newest:  # a clock set back, or a store moved
            moment = newest + datetime.timedelta(milliseconds=1)
        created_at = _iso(moment)
        try:
            material = kms.generate({"purpose": PURPOSE})
            key = _checked(material, None)
        except KeyStoreError as exc:
            error = type(exc)(f"new master key: {exc}")
            audit.track("kms_generate", kms_key_id=kms.kms_key_id, error=error)
            raise error from None
        audit.track("kms_generate", key_id=key.key_id, kms_key_id=kms.kms_key_id)
        try:
            wrapped = kms.wrap(material, encryption_context(key.key_id_hex, created_at))
        except KeyStoreError as exc:
            error = type(exc)(f"master key {key.key_id_hex}: {exc}")
            audit.track("kms_encrypt", key_id=key.key_id, kms_key_id=kms.kms_key_id, error=error)
            raise error from None
        audit.track("kms_encrypt", key_id=key.key_id, kms_key_id=wrapped.kms_key_id)
        record = KeyRecord(
            key.key_id_hex,
            KeyState.ACTIVE,
            created_at,
            wrapped.kms_key_id,
            wrapped.blob,
            context_version=CONTEXT_VERSION,
        )
        self.unwrap(record)

        def activate(pipe: Any) -> None:
            stored = pipe.hgetall(self.key)
            now = _iso(_server_now(pipe))
            updates = {record.key_id: record.to_json()}
            for k, v in stored.items():
                old = KeyRecord.from_json(_text(k), _text(v))
                if _instant(old.created_at) >= moment:
                    # Made by a concurrent `keys create`: activating this one would make the
                    # active key older than a listed one, which rings refuse.
                    raise KeyStoreError(
                        f"master key {old.key_id} was created meanwhile: not activating "
                        f"{record.key_id}; run `redis-encrypted-fields keys create` again if "
                        "another new key is wanted"
                    )
                if old.is_active:
                    demoted = replace(old, state=KeyState.DECRYPT_ONLY, deactivated_at=now)
                    updates[old.key_id] = demoted.to_json()
            pipe.multi()
            pipe.hset(self.key, mapping=updates)

        self._redis(lambda: self.client.transaction(activate, self.key))
        audit.track("key_created", key_id=key.key_id, kms_key_id=record.kms_key_id)
        return record

    # --- retirement ----------------------------------------------------------------------------

    def retirable(self, key_id: str, *, ttl: float | None = None) -> KeyRecord:
        """The record of a key that may be retired once no value is under it (or is already):
        ``KeyStoreError`` for a malformed or unknown key id, the active key, or a key that
        stopped being active less than ``ttl`` seconds ago (default: ``REDIS_SRE_KEY_CACHE_TTL``)
        by the store's clock, since processes may still encrypt with it until then."""
        record = self.record(_parse_key_id(key_id))
        if record is None:
            raise KeyStoreError(f"no master key {key_id} in the key store")
        _refuse_active(record)
        if record.state is not KeyState.RETIRED:
            records = self.records()
            now = self._redis(lambda: _server_now(self.client))
            _refuse_recent(record, records, now, cache_ttl() if ttl is None else ttl)
        return record

    def retire(self, key_id: str, *reports: KeyUsage, ttl: float | None = None) -> KeyRecord:
        """Retire a decrypt-only key: its wrapped key is deleted from the store, so nothing under
        it can be decrypted with the store any more. A copy of its record (a backup) unwraps
        until the KMS key policy has ``deny_statement(key_id)``: add it to make this final.

        ``reports``: fresh ``ops.status`` (or ``astatus``) reports of every model whose values
        may be under the key. Refused (``KeyStoreError``) without one, while they count a value
        under the key (decrypted or not), if the key is active, or until it has been inactive
        for ``ttl`` seconds (default: ``REDIS_SRE_KEY_CACHE_TTL``), the longest a process may
        still encrypt with it.
        """
        ttl = cache_ttl() if ttl is None else ttl
        record = self.retirable(key_id, ttl=ttl)
        kid = bytes.fromhex(key_id)
        if record.state is KeyState.RETIRED:
            return record
        found = [report.values_under(key_id) for report in reports]
        if not found or any(values is None for values in found):
            raise KeyStoreError(
                f"not retiring master key {key_id} unchecked: give the status of every model "
                "whose values may be under it"
            )
        under: dict[str, int] = {}
        for values in found:
            for name, n in (values or {}).items():
                under[name] = under.get(name, 0) + n
        if under:
            where = ", ".join(f"{n} in {name}" for name, n in sorted(under.items()))
            raise KeyStoreError(
                f"master key {key_id} still wraps {sum(under.values())} values ({where}): run "
                "`redis-encrypted-fields rotate TARGET`, then retire it"
            )
        retired: list[KeyRecord] = []

        def retire(pipe: Any) -> None:
            stored = {_text(k): _text(v) for k, v in pipe.hgetall(self.key).items()}
            if key_id not in stored:
                raise KeyStoreError(f"no master key {key_id} in the key store")
            records = [KeyRecord.from_json(k, v) for k, v in stored.items()]
            current = next(r for r in records if r.key_id == key_id)
            _refuse_active(current)
            _refuse_recent(current, records, _server_now(pipe), ttl)
            retired[:] = [replace(current, state=KeyState.RETIRED, wrapped=b"")]
            pipe.multi()
            pipe.hset(self.key, key_id, retired[0].to_json())

        self._redis(lambda: self.client.transaction(retire, self.key))
        audit.track("key_retired", key_id=kid, kms_key_id=record.kms_key_id)
        return retired[0]

    def __repr__(self) -> str:
        # Not the client: its URL may hold a password.
        return f"KeyStore(key={self.key!r}, kms={self.kms!r})"


def _refuse_active(record: KeyRecord) -> None:
    if record.state is KeyState.ACTIVE:
        raise KeyStoreError(
            f"master key {record.key_id} is active: create a new one "
            "(`redis-encrypted-fields keys create`), rotate, then retire this one"
        )


def _refuse_recent(
    record: KeyRecord, records: Iterable[KeyRecord], now: datetime.datetime, ttl: float
) -> None:
    """Refuse to retire a key that a process may still have cached as the active one."""
    if record.state is KeyState.RETIRED:
        return
    since = record.deactivated_at
    if since is None:
        # Demoted before the time was recorded: it stopped being active when the next key was
        # created (``create`` demotes in the same step).
        created = _instant(record.created_at)
        later = [r.created_at for r in records if _instant(r.created_at) > created]
        since = min(later, key=_instant, default=None)
    if since is None:
        raise KeyStoreError(
            f"master key {record.key_id}: the key store does not say when it stopped being "
            "active, so processes may still encrypt with it: not retiring it"
        )
    until = _instant(since) + datetime.timedelta(seconds=ttl)
    if now < until:
        wait = math.ceil((until - now).total_seconds())
        raise KeyStoreError(
            f"master key {record.key_id} stopped being active at {since}: processes may encrypt "
            f"with it until their key cache lifetime ({ttl:g} s, {ENV_KEY_CACHE_TTL}) has passed; "
            f"retire it in {wait} s (after {_iso(until)}), once `status` shows no value under it"
        )


def _checked(material: bytes, key_id_hex: str | None) -> MasterKey:
    """The KMS's answer as a master key, with the id the record says it has."""
    if not isinstance(material, bytes) or len(material) != 32:
        raise KeyStoreError("the KMS returned something other than a 32-byte key")
    key = MasterKey(material, where="the key store")
    if key_id_hex is not None and key.key_id_hex != key_id_hex:
        # KMS checks the encryption context; this holds even where it does not (moto's
        # delimiter-free context encoding) and whatever the provider.
        raise KeyStoreError("the unwrapped key has another key id: the key store was altered")
    return key


def cache_ttl(environ: Mapping[str, str] | None = None) -> float:
    """``REDIS_SRE_KEY_CACHE_TTL`` in seconds (default 300)."""
    env = os.environ if environ is None else environ
    text = (env.get(ENV_KEY_CACHE_TTL) or "").strip()
    if not text:
        return DEFAULT_CACHE_TTL
    try:
        ttl = float(text)
    except ValueError:
        ttl = math.nan
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ConfigurationError(f"{ENV_KEY_CACHE_TTL} must be a number of seconds above 0")
    return ttl


_Entry = tuple[MasterKey, float]  # a key and the monotonic time its cache lifetime ends
# A failed unwrap: the error, the monotonic time the KMS may be asked again, failures in a row.
# A failed unwrap, remembered as its error's type and message (the exception itself would keep
# its traceback's frames alive, and with them the keys in their locals): (type, message,
# retry at, failures in a row).
_Failure = tuple[type[KeyStoreError], str, float, int]
_CURRENT = b"current"  # the single-flight slot of the active key (not a key id: wrong length)
_monotonic = time.monotonic


class StoreKeyRing(KeyRing):
    """A key ring over a ``KeyStore``, with keys cached for ``ttl`` seconds.

    ``current`` is the store's active key; ``get(key_id)`` also finds the store's decrypt-only
    keys and ``decrypt_only`` keys (the environment's, when built by ``from_env``). A key is
    unwrapped at most once per ``ttl`` per process, and threads that need it meanwhile wait for
    that one KMS call. Encryption never falls back to another key: without an active key, or
    once the active key's lifetime has ended and neither the store nor the KMS answers,
    ``current`` raises ``MasterKeyError`` (a ``KeyStoreError`` or ``KmsError``).

    A key id whose unwrap failed is not sent to the KMS again for ``backoff`` seconds (doubled
    after each further failure, up to a minute): meanwhile its uses raise the same error at once.

    ``current`` refuses (``KeyStoreError``, audit event ``key_refused``) an active key that is
    older than another key the store lists, or that this ring has seen demoted: the store was
    rolled back, perhaps to a key an attacker kept.
    """

    __slots__ = (
        "__weakref__",
        "_active",
        "_demoted",
        "_entries",
        "_failures",
        "_flights",
        "_lock",
        "_stored",
        "backoff",
        "previous",
        "store",
        "ttl",
    )

    def __init__(
        self,
        store: KeyStore,
        *,
        ttl: float = DEFAULT_CACHE_TTL,
        decrypt_only: Iterable[MasterKey] = (),
        backoff: float = DEFAULT_FAILURE_BACKOFF,
    ) -> None:
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ConfigurationError("the key cache lifetime must be a number of seconds above 0")
        if not (backoff > 0 and math.isfinite(backoff)):
            raise ConfigurationError("the failure back-off must be a number of seconds above 0")
        self.store = store
        self.ttl = ttl
        self.backoff = backoff
        self.previous = tuple(decrypt_only)  # the environment's keys, when built by from_env
        # Read without a lock on the hot path; replaced whole (copy on write) under _lock.
        # Reversed: of two keys with one id, the first given is kept.
        self._entries: dict[bytes, _Entry] = {
            k.key_id: (k, math.inf) for k in reversed(self.previous)
        }
        self._active: _Entry | None = None
        self._stored: tuple[bytes, ...] = ()  # the store's decrypt-only key ids, read with _active
        self._flights: dict[bytes, Future[_Entry]] = {}
        # Replaced whole under _lock, like _entries.
        self._failures: dict[bytes, _Failure] = {}
        # Key ids this ring has seen listed as not active: never taken as the active key again.
        self._demoted: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        _rings.add(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StoreKeyRing:
        """The ring ``get_keyring()`` uses when ``REDIS_SRE_KMS_KEY_ID`` is set."""
        env = os.environ if environ is None else environ
        store = KeyStore.from_env(env)
        if store.kms is None:
            raise MasterKeyError(f"{ENV_KMS_KEY_ID} is not set")
        return cls(store, ttl=cache_ttl(env), decrypt_only=env_keys(env))

    @property
    def current(self) -> MasterKey:
        """The store's active key (re-read once its cache lifetime has ended)."""
        active = self._active
        if active is not None and active[1] > _monotonic():
            return active[0]
        return self._fly(_CURRENT, self._load_active)[0]

    @property
    def keys(self) -> tuple[MasterKey, ...]:
        """Every key, current first: the store's active and decrypt-only keys (each unwrapped
        once per cache lifetime), then the ``decrypt_only`` ones. What a blind-index query looks
        under, and what origin v1 values (which name no key) are tried with."""
        current = self.current
        stored = [self.get(k) for k in self._stored if k != current.key_id]
        seen = {current.key_id, *self._stored}
        return (current, *stored, *(k for k in self.previous if k.key_id not in seen))

    @property
    def previous_ids(self) -> tuple[str, ...]:
        """The decrypt-only keys' ids: the store's and the ``decrypt_only`` ones (no KMS call)."""
        current = self.current.key_id
        ids = [k.hex() for k in self._stored if k != current]
        ids += [k.key_id_hex for k in self.previous if k.key_id_hex not in ids]
        return tuple(ids)

    def get(self, key_id: bytes) -> MasterKey:
        entry = self._entries.get(key_id)
        if entry is not None and entry[1] > _monotonic():
            return entry[0]
        return self._fly(key_id, lambda: self._load(key_id))[0]

    def __contains__(self, key_id: object) -> bool:
        entry = self._entries.get(key_id) if isinstance(key_id, bytes) else None
        return entry is not None and entry[1] > _monotonic()

    def _fly(self, slot: bytes, load: Callable[[], _Entry]) -> _Entry:
        """One load per slot at a time: the first caller loads, the others wait for its result."""
        with self._lock:
            flight = self._flights.get(slot)
            leader = flight is None
            if flight is None:
                flight = self._flights[slot] = Future()
        if not leader:
            # No timeout needed: the leader's Redis and KMS calls have theirs.
            return flight.result()
        try:
            entry = load()
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        else:
            flight.set_result(entry)
            return entry
        finally:
            with self._lock:
                del self._flights[slot]

    def _load(self, key_id: bytes, record: KeyRecord | None = None) -> _Entry:
        entry = self._entries.get(key_id)
        if entry is not None and entry[1] > _monotonic():
            return entry  # loaded by a flight that ended just before this one began
        self._drop_expired()
        if record is None:
            record = self.store.record(key_id)
        if record is None:
            raise DecryptionError(
                f"Decryption failed: no configured master key has id {key_id.hex()} (not in the "
                f"key store, nor set as {ENV_MASTER_KEY} or in {ENV_PREVIOUS_MASTER_KEYS})"
            )
        if record.state is KeyState.RETIRED:
            raise DecryptionError(f"Decryption failed: master key {key_id.hex()} is retired")
        failure = self._failures.get(key_id)
        now = _monotonic()
        if failure is not None and failure[2] > now:
            kind, message, retry_at, _ = failure
            wait = math.ceil(retry_at - now)
            raise kind(f"{message} (the KMS is not asked again for {wait} s)")
        try:
            key = self.store.unwrap(record)
        except KeyStoreError as exc:
            self._failed(key_id, exc, 1 if failure is None else failure[3] + 1)
            raise
        return self._keep(key_id, key)

    def _failed(self, key_id: bytes, error: KeyStoreError, count: int) -> None:
        delay = min(self.backoff * 2 ** min(count - 1, 16), max(self.backoff, MAX_FAILURE_BACKOFF))
        with self._lock:
            now = _monotonic()
            # A failure is kept one cache lifetime past its back-off (the count the next delay
            # doubles), then dropped: key ids that stop failing leave no trace.
            failures = {k: f for k, f in self._failures.items() if f[2] + self.ttl > now}
            failures[key_id] = (type(error), str(error), now + delay, count)
            self._failures = failures

    def _load_active(self) -> _Entry:
        active = self._active
        if active is not None and active[1] > _monotonic():
            return active
        self._drop_expired()
        listed = _monotonic()
        records = self.store.records()
        record = self.store.active(records)
        self._refuse_rollback(record, records)
        self._stored = tuple(
            bytes.fromhex(r.key_id) for r in records if r.state is KeyState.DECRYPT_ONLY
        )
        key_id = bytes.fromhex(record.key_id)
        # Through the key id's own flight: a thread decrypting with this key meanwhile shares
        # the KMS call.
        key, expires = self._fly(key_id, lambda: self._load(key_id, record))
        # The listing passed the checks and its active key unwrapped: what it demotes stays
        # demoted for this ring. (Only the _CURRENT flight's leader writes this.)
        self._demoted = self._demoted | {r.key_id for r in records if not r.is_active}
        # Which key is active is re-read one lifetime after this listing, however long the KMS
        # took: `keys retire` counts on no process encrypting with a key longer than that.
        self._active = (key, min(expires, listed + self.ttl))
        return self._active

    def _refuse_rollback(self, record: KeyRecord, records: Iterable[KeyRecord]) -> None:
        """Refuse to encrypt under an active key that is older than another the store lists, or
        that this ring has seen replaced: the sign of an old record written back (replayed) to
        make processes encrypt under a key an attacker kept. ``create`` makes each new key the
        newest, by a creation time bound into its KMS encryption context."""
        created = _instant(record.created_at)
        newer = [r for r in records if _instant(r.created_at) > created]
        if newer:
            newest = max(newer, key=lambda r: _instant(r.created_at))
            reason = (
                f"older than master key {newest.key_id} ({newest.state.value}, created "
                f"{newest.created_at})"
            )
        elif record.key_id in self._demoted:
            reason = "this process has seen it replaced by a newer key"
        else:
            return
        error = KeyStoreError(
            f"master key {record.key_id} is active but {reason}: the key store may have been "
            "rolled back (an old record written back); not encrypting under it. If the store is "
            "as it should be, make a new key active: `redis-encrypted-fields keys create`"
        )
        audit.track(
            "key_refused",
            key_id=bytes.fromhex(record.key_id),
            kms_key_id=record.kms_key_id,
            error=error,
        )
        raise error

    def _keep(self, key_id: bytes, key: MasterKey) -> _Entry:
        entry = (key, _monotonic() + self.ttl)
        with self._lock:
            now = _monotonic()
            # Expired keys are dropped, not just ignored: no key material kept past its lifetime.
            entries = {k: e for k, e in self._entries.items() if e[1] > now}
            entries[key_id] = entry
            self._entries = entries
            if key_id in self._failures:
                self._failures = {k: f for k, f in self._failures.items() if k != key_id}
        return entry

    def _drop_expired(self) -> None:
        """Forget every key whose cache lifetime has ended, before asking for it again: if the
        store or the KMS does not answer, no expired key (nor what was derived from it) stays."""
        with self._lock:
            now = _monotonic()
            active = self._active
            if active is not None and active[1] <= now:
                self._active = None
            self._entries = {k: e for k, e in self._entries.items() if e[1] > now}

    def _after_fork(self) -> None:
        # A flight led by a thread of the parent would never end in the child: its waiters
        # would wait forever. The child starts with no flight and a free lock.
        self._lock = threading.Lock()
        self._flights = {}

    def __repr__(self) -> str:
        now = _monotonic()
        cached = ", ".join(
            k.hex() for k, e in self._entries.items() if e[1] > now and e[1] != math.inf
        )
        env = ", ".join(k.key_id_hex for k in self.previous)
        return (
            f"StoreKeyRing({self.store!r}, ttl={self.ttl:g}, cached=[{cached}], "
            f"decrypt_only=[{env}])"
        )


_rings: weakref.WeakSet[StoreKeyRing] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for ring in list(_rings):
        ring._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
