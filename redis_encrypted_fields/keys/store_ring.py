"""The cached key ring over the key store: what a process encrypts and decrypts with.

``StoreKeyRing`` takes the store's active key as ``current``, re-read at most every ``ttl``
seconds; any other key id is unwrapped from the store on first use and kept for ``ttl`` seconds;
concurrent first uses share one KMS call; failed unwraps back off. It refuses an active key that
shows the store was rolled back (``store`` says how keys are made the newest). A forked child
starts with a fresh lock and no flight. ``get_keyring()`` returns one when
``REDIS_SRE_KMS_KEY_ID`` is set.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterable, Mapping

from ..audit import track
from ..errors import ConfigurationError, KeyStoreError, MasterKeyError, UnknownKeyError
from ..forks import SingleFlight, reset_in_children
from .ring import ENV_MASTER_KEY, ENV_PREVIOUS_MASTER_KEYS, KeyRing, MasterKey, env_keys
from .store import (
    DEFAULT_CACHE_TTL,
    ENV_KEY_CACHE_TTL,
    ENV_KEYSTORE_URL,
    ENV_KMS_KEY_ID,
    ENV_PREVIOUS_KMS_KEY_IDS,
    KeyRecord,
    KeyState,
    KeyStore,
    cache_ttl,
    instant,
)
from .vault import ENVIRONMENT as VAULT_ENVIRONMENT

__all__ = [
    "DEFAULT_FAILURE_BACKOFF",
    "ENVIRONMENT",
    "MAX_FAILURE_BACKOFF",
    "StoreKeyRing",
]

# The variables a store-backed ring is built from (besides the KMS key id and the env keys).
ENVIRONMENT = (
    ENV_KEYSTORE_URL,
    "REDIS_OM_URL",
    ENV_KEY_CACHE_TTL,
    ENV_PREVIOUS_KMS_KEY_IDS,
    *VAULT_ENVIRONMENT,
)
# After an unwrap fails, the key id is not sent to the KMS again for this long, doubled after each
# further failure up to MAX_FAILURE_BACKOFF: a planted record (or a KMS outage) then costs a few
# KMS calls per key id per minute and process, not one per read.
DEFAULT_FAILURE_BACKOFF = 5.0
MAX_FAILURE_BACKOFF = 60.0

_Entry = tuple[MasterKey, float]  # a key and the monotonic time its cache lifetime ends
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
        self._flights: SingleFlight[bytes, _Entry] = SingleFlight()
        # Replaced whole under _lock, like _entries.
        self._failures: dict[bytes, _Failure] = {}
        # Key ids this ring has seen listed as not active: never taken as the active key again.
        self._demoted: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        reset_in_children(self)

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
        return self._flights.run(_CURRENT, self._load_active)[0]

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
        return self._flights.run(key_id, lambda: self._load(key_id))[0]

    def __contains__(self, key_id: object) -> bool:
        entry = self._entries.get(key_id) if isinstance(key_id, bytes) else None
        return entry is not None and entry[1] > _monotonic()

    def _load(self, key_id: bytes, record: KeyRecord | None = None) -> _Entry:
        entry = self._entries.get(key_id)
        if entry is not None and entry[1] > _monotonic():
            return entry  # loaded by a flight that ended just before this one began
        self._drop_expired()
        if record is None:
            record = self.store.record(key_id)
        if record is None:
            raise UnknownKeyError(
                f"Decryption failed: no configured master key has id {key_id.hex()} (not in the "
                f"key store, nor set as {ENV_MASTER_KEY} or in {ENV_PREVIOUS_MASTER_KEYS})"
            )
        if record.state is KeyState.RETIRED:
            raise UnknownKeyError(f"Decryption failed: master key {key_id.hex()} is retired")
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
        key, expires = self._flights.run(key_id, lambda: self._load(key_id, record))
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
        created = instant(record.created_at)
        newer = [r for r in records if instant(r.created_at) > created]
        if newer:
            newest = max(newer, key=lambda r: instant(r.created_at))
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
        track(
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

    def after_fork(self) -> None:
        # A lock held by a thread of the parent would never be released in the child (the
        # flights reset themselves: SingleFlight).
        self._lock = threading.Lock()

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
