"""The key store: master keys kept in Redis wrapped by a KMS, one record per key.

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

The records themselves are in ``records``; the ring a process uses over the store,
``StoreKeyRing``, is in ``store_ring``.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, Protocol, TypeVar

import redis

from ..audit import track
from ..errors import ConfigurationError, KeyStoreError, KmsError, printable
from .kms import KmsProvider, WrappedKey
from .providers import provider_for, provider_name
from .records import (
    CONTEXT_VERSION,
    PURPOSE,
    KeyRecord,
    KeyState,
    deny_statement,
    encryption_context,
    instant,
    iso,
    parse_key_id,
)
from .ring import MasterKey

__all__ = [
    "DEFAULT_CACHE_TTL",
    "ENV_KEYSTORE_URL",
    "ENV_KEY_CACHE_TTL",
    "ENV_KMS_KEY_ID",
    "ENV_PREVIOUS_KMS_KEY_IDS",
    "STORE_KEY",
    "KeyRecord",
    "KeyState",
    "KeyStore",
    "KeyUsage",
    "cache_ttl",
    "deny_statement",
    "encryption_context",
    "instant",
]

ENV_KMS_KEY_ID = "REDIS_SRE_KMS_KEY_ID"
# KMS keys (comma-separated, as REDIS_SRE_KMS_KEY_ID takes them) that wrapped older keys of the
# store: after a move to another KMS, what unwraps the keys the old one wrapped.
ENV_PREVIOUS_KMS_KEY_IDS = "REDIS_SRE_PREVIOUS_KMS_KEY_IDS"
ENV_KEYSTORE_URL = "REDIS_SRE_KEYSTORE_URL"
ENV_KEY_CACHE_TTL = "REDIS_SRE_KEY_CACHE_TTL"
DEFAULT_CACHE_TTL = 300.0
STORE_KEY = "redis-encrypted-fields:keystore"
DEFAULT_URL = "redis://localhost:6379"  # with neither REDIS_SRE_KEYSTORE_URL nor REDIS_OM_URL
_TIMEOUT = 5.0  # seconds, for the store's own Redis client

T = TypeVar("T")


def _server_now(client: Any) -> datetime.datetime:
    """The store's Redis clock: one clock for every machine that creates and retires keys."""
    seconds, micros = client.time()
    return datetime.datetime.fromtimestamp(int(seconds) + int(micros) / 1e6, datetime.UTC)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


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
    (``records``); creating and unwrapping keys need it. ``previous_kms``: the providers of KMS
    keys that wrapped older keys, of other KMSes than ``kms`` (after a move from one to another):
    a record is unwrapped by the first of ``kms`` and these of its own provider. ``source`` says
    where its location came from (``from_env``: which variable), for messages.
    """

    def __init__(
        self,
        client: Any,
        kms: KmsProvider | None = None,
        *,
        key: str = STORE_KEY,
        source: str | None = None,
        previous_kms: Iterable[KmsProvider] = (),
    ) -> None:
        self.client = client
        self.kms = kms
        self.previous_kms = tuple(previous_kms)
        self.key = key
        self.source = source
        self.kms_key_id_empty = False  # from_env: the variable is set, but to nothing

    @property
    def location(self) -> str:
        """Which server and database the store is in, without credentials: ``host:port db N``,
        and where that came from when known."""
        pool = getattr(self.client, "connection_pool", None)
        kwargs: Mapping[str, Any] = getattr(pool, "connection_kwargs", None) or {}
        if "path" in kwargs:
            server = f"unix:{kwargs['path']}"
        else:
            server = f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
        where = f"{server} db {kwargs.get('db', 0)}"
        return f"{where} ({self.source})" if self.source else where

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KeyStore:
        """The store at ``REDIS_SRE_KEYSTORE_URL``, else ``REDIS_OM_URL`` (the models' Redis),
        with the KMS key ``REDIS_SRE_KMS_KEY_ID`` names if set (``providers.provider_for``) and
        those ``REDIS_SRE_PREVIOUS_KMS_KEY_IDS`` names."""
        env = os.environ if environ is None else environ
        if env.get(ENV_KEYSTORE_URL):
            url, source = env[ENV_KEYSTORE_URL], f"from {ENV_KEYSTORE_URL}"
        elif env.get("REDIS_OM_URL"):
            url, source = env["REDIS_OM_URL"], f"from REDIS_OM_URL, {ENV_KEYSTORE_URL} being unset"
        else:
            url, source = (
                DEFAULT_URL,
                f"the default: neither {ENV_KEYSTORE_URL} nor REDIS_OM_URL set",
            )
        url = url.strip()
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
        previous = [
            provider_for(text, env)
            for text in (env.get(ENV_PREVIOUS_KMS_KEY_IDS) or "").split(",")
            if text.strip()
        ]
        store = cls(
            client,
            provider_for(kms_key_id, env) if kms_key_id else None,
            source=source,
            previous_kms=previous,
        )
        store.kms_key_id_empty = ENV_KMS_KEY_ID in env and not kms_key_id
        return store

    def redis_call(self, call: Callable[[], T]) -> T:
        """``call()``, a Redis error as ``KeyStoreError``."""
        try:
            return call()
        except redis.RedisError as exc:
            raise KeyStoreError(f"key store: {type(exc).__name__}: {exc}") from None

    def now(self) -> datetime.datetime:
        """The store's Redis clock (what key ages are measured by)."""
        return self.redis_call(lambda: _server_now(self.client))

    def _require_kms(self) -> KmsProvider:
        if self.kms is None:
            if self.kms_key_id_empty:
                raise KeyStoreError(
                    f"no KMS configured: {ENV_KMS_KEY_ID} is set but empty; set it to the KMS "
                    "key (id, ARN or alias)"
                )
            raise KeyStoreError(f"no KMS configured: set {ENV_KMS_KEY_ID}")
        return self.kms

    def provider_of(self, record: KeyRecord) -> KmsProvider:
        """The configured provider that unwraps ``record``: the KMS of ``kms`` if the record's
        provider is its, else the first of ``previous_kms`` that is. Never one the record names:
        a record planted in Redis cannot make a process trust a KMS key of the planter's."""
        kms = self._require_kms()
        for candidate in (kms, *self.previous_kms):
            if provider_name(candidate.kms_key_id) == record.provider:
                return candidate
        raise KmsError(
            f"wrapped by {record.provider} KMS key "
            f"{printable(record.kms_key_id)}, and no {record.provider} KMS key is configured: "
            f"add it to {ENV_PREVIOUS_KMS_KEY_IDS}"
        )

    # --- reading -------------------------------------------------------------------------------

    def records(self) -> list[KeyRecord]:
        """Every key, oldest first."""
        stored = self.redis_call(lambda: self.client.hgetall(self.key))
        records = [KeyRecord.from_json(_text(k), _text(v)) for k, v in stored.items()]
        return sorted(records, key=lambda r: (r.created_at, r.key_id))

    def record(self, key_id: bytes) -> KeyRecord | None:
        """The record of one key id, or ``None``."""
        hex_id = key_id.hex()
        raw = self.redis_call(lambda: self.client.hget(self.key, hex_id))
        return None if raw is None else KeyRecord.from_json(hex_id, _text(raw))

    def active(self, records: Iterable[KeyRecord] | None = None) -> KeyRecord:
        """The active key's record (of ``records``, else of the store). Raises
        ``KeyStoreError`` if there is none."""
        active = [r for r in (self.records() if records is None else records) if r.is_active]
        if not active:
            # Where it looked: a store found empty at an unexpected place (another server or
            # database than the one its keys were created in) is otherwise a mystery.
            raise KeyStoreError(
                f"the key store at {self.location} has no active master key: create one with "
                "`redis-encrypted-fields keys create`"
            )
        if len(active) > 1:
            ids = ", ".join(r.key_id for r in active)
            raise KeyStoreError(f"the key store has more than one active master key: {ids}")
        return active[0]

    # --- KMS -----------------------------------------------------------------------------------

    def unwrap(self, record: KeyRecord) -> MasterKey:
        """Unwrap a record's key with the KMS (one call, audited as ``kms_decrypt``)."""
        if record.state is KeyState.RETIRED or not record.wrapped:
            raise KeyStoreError(f"master key {record.key_id} is retired")
        key_id = bytes.fromhex(record.key_id)
        try:
            kms = self.provider_of(record)
            wrapped = WrappedKey(record.wrapped, record.kms_key_id)
            try:
                material = kms.unwrap(wrapped, record.context)
            except KmsError as exc:
                # The KMS key that wrapped the record, which a denied or refused unwrap is about:
                # the configured one may be an alias, or another key than the record's.
                raise type(exc)(
                    f"{exc} (the record was wrapped by KMS key {printable(record.kms_key_id)})"
                ) from None
            key = _checked(material, record.key_id)
        except KeyStoreError as exc:
            error = type(exc)(f"master key {record.key_id}: {exc}")
            track("kms_decrypt", key_id=key_id, kms_key_id=record.kms_key_id, error=error)
            raise error from None
        track("kms_decrypt", key_id=key_id, kms_key_id=record.kms_key_id)
        return key

    def create(self) -> KeyRecord:
        """A new active master key; the active one becomes decrypt-only. Audited: ``kms_generate``,
        ``kms_encrypt``, ``kms_decrypt`` (the new key is unwrapped once before it becomes active,
        so a key that does not unwrap never is), ``key_created``.

        Its creation time, from the store's Redis clock, is later than every listed key's and is
        bound into its KMS encryption context: rings refuse an active key older than another.
        """
        kms = self._require_kms()
        newest = max((instant(r.created_at) for r in self.records()), default=None)
        # To the millisecond, as stored and compared.
        moment = instant(iso(self.redis_call(lambda: _server_now(self.client))))
        if newest is not None and moment <= newest:  # a clock set back, or a store moved
            moment = newest + datetime.timedelta(milliseconds=1)
        created_at = iso(moment)
        try:
            material = kms.generate({"purpose": PURPOSE})
            key = _checked(material, None)
        except KeyStoreError as exc:
            error = type(exc)(f"new master key: {exc}")
            track("kms_generate", kms_key_id=kms.kms_key_id, error=error)
            raise error from None
        track("kms_generate", key_id=key.key_id, kms_key_id=kms.kms_key_id)
        try:
            wrapped = kms.wrap(material, encryption_context(key.key_id_hex, created_at))
        except KeyStoreError as exc:
            error = type(exc)(f"master key {key.key_id_hex}: {exc}")
            track("kms_encrypt", key_id=key.key_id, kms_key_id=kms.kms_key_id, error=error)
            raise error from None
        track("kms_encrypt", key_id=key.key_id, kms_key_id=wrapped.kms_key_id)
        record = KeyRecord(
            key.key_id_hex,
            KeyState.ACTIVE,
            created_at,
            wrapped.kms_key_id,
            wrapped.blob,
            context_version=CONTEXT_VERSION,
            provider=provider_name(kms.kms_key_id),
        )
        self.unwrap(record)

        def activate(pipe: Any) -> None:
            stored = pipe.hgetall(self.key)
            now = iso(_server_now(pipe))
            updates = {record.key_id: record.to_json()}
            for k, v in stored.items():
                old = KeyRecord.from_json(_text(k), _text(v))
                if instant(old.created_at) >= moment:
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

        self.redis_call(lambda: self.client.transaction(activate, self.key))
        track("key_created", key_id=key.key_id, kms_key_id=record.kms_key_id)
        return record

    # --- retirement ----------------------------------------------------------------------------

    def retirable(self, key_id: str, *, ttl: float | None = None) -> KeyRecord:
        """The record of a key that may be retired once no value is under it (or is already):
        ``KeyStoreError`` for a malformed or unknown key id, the active key, or a key that
        stopped being active less than ``ttl`` seconds ago (default: ``REDIS_SRE_KEY_CACHE_TTL``)
        by the store's clock, since processes may still encrypt with it until then."""
        record = self.record(parse_key_id(key_id))
        if record is None:
            raise KeyStoreError(f"no master key {key_id} in the key store")
        _refuse_active(record)
        if record.state is not KeyState.RETIRED:
            records = self.records()
            now = self.redis_call(lambda: _server_now(self.client))
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

        self.redis_call(lambda: self.client.transaction(retire, self.key))
        track("key_retired", key_id=kid, kms_key_id=record.kms_key_id)
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
        created = instant(record.created_at)
        later = [r.created_at for r in records if instant(r.created_at) > created]
        since = min(later, key=instant, default=None)
    if since is None:
        raise KeyStoreError(
            f"master key {record.key_id}: the key store does not say when it stopped being "
            "active, so processes may still encrypt with it: not retiring it"
        )
    until = instant(since) + datetime.timedelta(seconds=ttl)
    if now < until:
        wait = math.ceil((until - now).total_seconds())
        raise KeyStoreError(
            f"master key {record.key_id} stopped being active at {since}: processes may encrypt "
            f"with it until their key cache lifetime ({ttl:g} s, {ENV_KEY_CACHE_TTL}) has passed; "
            f"retire it in {wait} s (after {iso(until)}), once `status` shows no value under it"
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
