"""Scope keys (per-tenant keys): one random 256-bit key per (namespace, value), kept in Redis
wrapped by the current master key; the per-process cache of unwrapped ones; shredding.

The hierarchy under a ``KeyScope`` (see docs/keys.md, "Per-tenant keys and erasure")::

    master key (env key ring or key store)
      └─ wraps scope keys: one Redis hash per scope (namespace, value)
           └─ wrap data keys: one per secret, in each scoped envelope (docs/format.md)

The scope's hash, ``redis-encrypted-fields:scope:<namespace>:<value>``, holds:

- ``active``: the hex id of the scope key that seals new values;
- ``k:<id>``: a scope key, JSON ``{"wrapped": ..., "created_at": ...}``; ``wrapped`` is the
  base64 of master key id (8) ‖ nonce (12) ‖ AES-256-GCM(master key, scope key) (48), its
  associated data binding it to the scope and its id; a key other than the active one is
  decrypt-only (left by ``rotate --scope`` until the scope's values are re-wrapped);
- ``x:<id>``: a shredded key's tombstone (when it was shredded): the key itself is gone.

A scope key's id is derived from it as a master key's is (``MasterKey``).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag

from ..audit import track
from ..errors import (
    ConfigurationError,
    DecryptionError,
    KeyStoreError,
    KmsError,
    ShreddedKeyError,
    printable,
)
from ..forks import SingleFlight, reset_in_children
from ..switches import EnvSwitch
from .kms import KmsProvider, WrappedKey
from .ring import KEY_ID_SIZE, KeyRing, MasterKey
from .store import cache_ttl
from .store_ring import StoreKeyRing

__all__ = [
    "DEFAULT_SCOPE_CACHE_SIZE",
    "ENV_SCOPE_KEY_WRAP",
    "SCOPE_KEY_PREFIX",
    "ScopeKeys",
    "ScopeRing",
    "kms_context",
    "rewrap_scope_keys",
    "scope_binding",
    "scope_hashes",
    "scope_keys",
    "scope_redis_key",
    "wraps_by_kms",
]

SCOPE_KEY_PREFIX = "redis-encrypted-fields:scope:"
ENV_SCOPE_KEY_WRAP = "REDIS_SRE_SCOPE_KEY_WRAP"
SCOPE_PURPOSE = "redis-encrypted-fields scope key"
DEFAULT_SCOPE_CACHE_SIZE = 100_000
_WRAP_LABEL = b"redis-encrypted-fields/scope-key/v1"
_NONCE = 12
_LENGTH = struct.Struct(">I").pack
_ACTIVE = "active"

# Sets the active key unless another process has just done so (the first save of a tenant in
# two processes at once): the loser re-reads and uses the winner's key.
_CREATE = """
if redis.call('HEXISTS', KEYS[1], 'active') == 1 and ARGV[3] == '0' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], 'active', ARGV[4])
return 1
"""
# Every key of the scope replaced by its tombstone, in one step.
_SHRED = """
local ids = {}
for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(name, 1, 2) == 'k:' then
    local id = string.sub(name, 3)
    redis.call('HSET', KEYS[1], 'x:' .. id, ARGV[1])
    redis.call('HDEL', KEYS[1], name)
    table.insert(ids, id)
  end
end
redis.call('HDEL', KEYS[1], 'active')
return ids
"""
# Compare-and-set of one field: a re-wrap never writes over a key changed (or shredded)
# meanwhile.
_SWAP = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"""
_DROP = """
if redis.call('HGET', KEYS[1], 'active') == ARGV[1] then return 0 end
return redis.call('HDEL', KEYS[1], 'k:' .. ARGV[1])
"""


def _parse_wrap(text: str) -> bool:
    flag = text.strip().lower()
    if flag in ("", "master"):
        return False
    if flag == "kms":
        return True
    raise ConfigurationError(
        f"{ENV_SCOPE_KEY_WRAP}={text[:40]!r} is not valid: use master (the default: scope keys "
        "wrapped by the master key) or kms (each wrapped by the key store's KMS key directly)"
    )


# Whether new scope keys are wrapped by the key store's KMS key directly, with the scope as
# encryption context (an IAM condition can then confine a service to some scopes), rather than
# by the master key (no KMS call per scope).
wraps_by_kms = EnvSwitch(ENV_SCOPE_KEY_WRAP, _parse_wrap)


def kms_context(namespace: str, value: str, key_id_hex: str) -> dict[str, str]:
    """The KMS encryption context of a scope key wrapped by the KMS directly."""
    return {
        "purpose": SCOPE_PURPOSE,
        "namespace": namespace,
        "value": value,
        "key_id": key_id_hex,
    }


def _kms_of(master: KeyRing) -> KmsProvider:
    kms = master.store.kms if isinstance(master, StoreKeyRing) else None
    if kms is None:
        raise KeyStoreError(
            f"a scope key wrapped by the KMS needs the KMS key store ({ENV_SCOPE_KEY_WRAP}=kms "
            "with REDIS_SRE_KMS_KEY_ID set)"
        )
    return kms


def scope_binding(namespace: str, value: str) -> bytes:
    """What binds a value (and its scope key's wrap) to its scope: both parts length-prefixed,
    as the record's binding is (docs/format.md)."""
    ns = namespace.encode("utf-8", "surrogatepass")
    v = value.encode("utf-8", "surrogatepass")
    return _LENGTH(len(ns)) + ns + _LENGTH(len(v)) + v


def scope_redis_key(namespace: str, value: str) -> str:
    """The Redis key of a scope's hash (a namespace is a name without ``:``)."""
    return f"{SCOPE_KEY_PREFIX}{namespace}:{value}"


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else str(value)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def _where(namespace: str, value: str) -> str:
    return printable(f"{namespace} {value!r}")


@dataclass(slots=True)
class Scope:
    """One scope's keys as this process knows them: unwrapped, with the ids of shredded ones."""

    namespace: str
    value: str
    part: bytes  # scope_binding(namespace, value)
    keys: dict[bytes, MasterKey]
    active: MasterKey | None
    shredded: frozenset[bytes]
    expires: float
    wrapped_by: dict[bytes, bytes]  # scope key id -> master key id
    # Decrypt-only keys that did not unwrap (a master key the ring lacks): why, by id. The
    # scope's other keys still work.
    failed: dict[bytes, str]


class ScopeRing(KeyRing):
    """The key ring of one scope's records: the master ring's keys (for values sealed before
    the model had a scope: ``get``, ``current``) and the scope's keys (``scope_key``,
    ``scope_current``), with the scope's binding (``scope_part``)."""

    __slots__ = ("master", "scope", "scope_part")

    def __init__(self, master: KeyRing, scope: Scope) -> None:
        self.master = master
        self.scope = scope
        self.scope_part = scope.part

    @property
    def current(self) -> MasterKey:
        return self.master.current

    @property
    def keys(self) -> tuple[MasterKey, ...]:
        return self.master.keys

    @property
    def previous_ids(self) -> tuple[str, ...]:
        return self.master.previous_ids

    def get(self, key_id: bytes) -> MasterKey:
        return self.master.get(key_id)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self.master

    def scope_current(self) -> MasterKey:
        active = self.scope.active
        if active is None:
            scope = self.scope
            raise KeyStoreError(
                f"the scope {_where(scope.namespace, scope.value)} has no active scope key"
            )
        return active

    def scope_key(self, key_id: bytes) -> MasterKey:
        scope = self.scope
        key = scope.keys.get(key_id)
        if key is not None:
            return key
        where = _where(scope.namespace, scope.value)
        failed = scope.failed.get(key_id)
        if failed is not None:
            raise DecryptionError(failed)
        if key_id in scope.shredded:
            raise ShreddedKeyError(
                f"Decryption failed: the value was sealed under the scope key {key_id.hex()} of "
                f"{where}, which was shredded: it is erased"
            )
        raise DecryptionError(
            f"Decryption failed: the scope {where} has no scope key with id {key_id.hex()} (a "
            "value moved from another scope, or the scope field changed)"
        )

    def scope_binding(self) -> bytes:
        return self.scope.part

    def scope_keys(self) -> tuple[MasterKey, ...]:
        scope = self.scope
        active = scope.active
        rest = tuple(k for k in scope.keys.values() if k is not active)
        return rest if active is None else (active, *rest)

    def __repr__(self) -> str:
        scope = self.scope
        active = scope.active.key_id_hex if scope.active is not None else "-"
        return f"ScopeRing({_where(scope.namespace, scope.value)}, active={active})"


def _wrap(master: MasterKey, key: MasterKey, part: bytes) -> str:
    nonce = os.urandom(_NONCE)
    material = base64.b64decode(key.to_base64())
    sealed = master.aead.encrypt(nonce, material, _WRAP_LABEL + master.key_id + part + key.key_id)
    return base64.b64encode(master.key_id + nonce + sealed).decode("ascii")


def _unwrap(master: KeyRing, wrapped: str, part: bytes, key_id: bytes) -> tuple[MasterKey, bytes]:
    """The scope key ``key_id`` and the id of the master key that wrapped it."""
    try:
        blob = base64.b64decode(wrapped, validate=True)
    except (binascii.Error, ValueError):
        blob = b""
    master_id, nonce, sealed = blob[:KEY_ID_SIZE], blob[KEY_ID_SIZE:20], blob[20:]
    if len(sealed) != 48:
        raise DecryptionError(f"Decryption failed: scope key {key_id.hex()} is malformed")
    try:
        material = master.get(master_id).aead.decrypt(
            nonce, sealed, _WRAP_LABEL + master_id + part + key_id
        )
    except InvalidTag:
        raise DecryptionError(
            f"Decryption failed: scope key {key_id.hex()} does not unwrap under master key "
            f"{master_id.hex()} (tampered, or moved from another scope)"
        ) from None
    key = MasterKey(material)
    if key.key_id != key_id:
        raise DecryptionError(f"Decryption failed: scope key {key_id.hex()} is not its own")
    return key, master_id


def _record(text: str) -> dict[str, str]:
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict) or not (
        isinstance(record.get("wrapped"), str) or isinstance(record.get("kms"), str)
    ):
        raise DecryptionError("Decryption failed: a scope key record is malformed")
    return record


def _open_record(
    master: KeyRing, record: dict[str, str], namespace: str, value: str, key_id: bytes
) -> tuple[MasterKey, bytes]:
    """A scope key from its record: unwrapped by a master key (and that key's id), or by the
    KMS (one call; ``b""`` for the master key id)."""
    if "wrapped" in record:
        return _unwrap(master, record["wrapped"], scope_binding(namespace, value), key_id)
    wrapped = WrappedKey(base64.b64decode(record["kms"]), record.get("kms_key_id", ""))
    context = kms_context(namespace, value, key_id.hex())
    try:
        material = _kms_of(master).unwrap(wrapped, context)
    except KmsError as exc:
        track("kms_decrypt", key_id=key_id, kms_key_id=wrapped.kms_key_id, error=exc)
        raise
    track("kms_decrypt", key_id=key_id, kms_key_id=wrapped.kms_key_id)
    key = MasterKey(material)
    if key.key_id != key_id:
        raise DecryptionError(f"Decryption failed: scope key {key_id.hex()} is not its own")
    return key, b""


class ScopeKeys:
    """The scope keys of this process: read from Redis, unwrapped and cached per scope, with a
    lifetime (``REDIS_SRE_KEY_CACHE_TTL``) and a size bound (least recently used dropped); one
    load per scope at a time across threads (a load is one Redis read: no KMS call while the
    master key is in hand)."""

    def __init__(self, size: int = DEFAULT_SCOPE_CACHE_SIZE, ttl: float | None = None) -> None:
        self.size = size
        self.ttl = ttl
        self._entries: OrderedDict[tuple[Any, str, str], Scope] = OrderedDict()
        self._lock = threading.Lock()
        self._flights: SingleFlight[tuple[Any, str, str], Scope] = SingleFlight()
        self._last: Scope | None = None  # the entry used last
        reset_in_children(self)

    def __len__(self) -> int:
        return len(self._entries)

    def ring(
        self, client: Any, master: KeyRing, namespace: str, value: str, *, create: bool = False
    ) -> ScopeRing:
        """The ring of scope (``namespace``, ``value``) in the Redis of ``client`` (a sync
        client); ``create``: make its scope key if it has no active one (a save)."""
        slot = (client, namespace, value)
        entry = self._entries.get(slot)
        if entry is None or entry.expires <= time.monotonic() or (create and entry.active is None):
            entry = self._flights.run(slot, lambda: self._load(slot, master, create))
        elif entry is not self._last:
            # Most recently used last (the same scope again, the common case, moves nothing).
            self._last = entry
            try:  # noqa: SIM105 (a read's path: suppress() costs more)
                self._entries.move_to_end(slot)
            except KeyError:
                pass  # dropped meanwhile by another thread: still valid for this call
        return ScopeRing(master, entry)

    def _load(self, slot: tuple[Any, str, str], master: KeyRing, create: bool) -> Scope:
        client, namespace, value = slot
        entry = self.read(client, master, namespace, value)
        if create and entry.active is None:
            self.create(client, master, namespace, value)
            entry = self.read(client, master, namespace, value)
        with self._lock:
            self._entries[slot] = entry
            self._entries.move_to_end(slot)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return entry

    def read(self, client: Any, master: KeyRing, namespace: str, value: str) -> Scope:
        """The scope's keys as Redis holds them now, unwrapped (not cached)."""
        part = scope_binding(namespace, value)
        fields = {
            _text(k): _text(v) for k, v in client.hgetall(scope_redis_key(namespace, value)).items()
        }
        keys: dict[bytes, MasterKey] = {}
        wrapped_by: dict[bytes, bytes] = {}
        failed: dict[bytes, str] = {}
        shredded = set()
        active_hex = fields.get(_ACTIVE)
        for name, text in fields.items():
            if name.startswith(("k:", "x:")):
                try:
                    key_id = bytes.fromhex(name[2:])
                except ValueError:
                    continue
                if name[0] == "x":
                    shredded.add(key_id)
                    continue
                try:
                    key, master_id = _open_record(master, _record(text), namespace, value, key_id)
                except DecryptionError as exc:
                    if name[2:] == active_hex:
                        raise
                    failed[key_id] = str(exc)
                    continue
                keys[key_id] = key
                wrapped_by[key_id] = master_id
        active = None
        if active_hex is not None:
            try:
                active = keys.get(bytes.fromhex(active_hex))
            except ValueError:
                active = None
        ttl = self.ttl if self.ttl is not None else cache_ttl()
        return Scope(
            namespace,
            value,
            part,
            keys,
            active,
            frozenset(shredded),
            time.monotonic() + ttl,
            wrapped_by,
            failed,
        )

    def create(
        self, client: Any, master: KeyRing, namespace: str, value: str, *, replace: bool = False
    ) -> MasterKey | None:
        """A new scope key made active, unless the scope has one already (``replace``: made
        active even so, the old one left decrypt-only). ``None`` if another process won."""
        key = MasterKey.generate()
        part = scope_binding(namespace, value)
        if wraps_by_kms():
            kms = _kms_of(master)
            material = base64.b64decode(key.to_base64())
            wrapped = kms.wrap(material, kms_context(namespace, value, key.key_id_hex))
            fields: dict[str, str] = {
                "kms": base64.b64encode(wrapped.blob).decode("ascii"),
                "kms_key_id": wrapped.kms_key_id,
            }
        else:
            fields = {"wrapped": _wrap(master.current, key, part)}
        record = json.dumps({**fields, "created_at": _now()})
        redis_key = scope_redis_key(namespace, value)
        made = client.eval(
            _CREATE,
            1,
            redis_key,
            f"k:{key.key_id_hex}",
            record,
            "1" if replace else "0",
            key.key_id_hex,
        )
        self.forget(namespace, value)
        if not int(made):
            return None
        track("scope_key_created", record=redis_key, key_id=key.key_id)
        return key

    def drop(self, client: Any, namespace: str, value: str, key_id: bytes) -> bool:
        """Delete a decrypt-only scope key (its values all re-wrapped), if still not active."""
        redis_key = scope_redis_key(namespace, value)
        done = int(client.eval(_DROP, 1, redis_key, key_id.hex()) or 0)
        self.forget(namespace, value)
        if done:
            track("scope_key_retired", record=redis_key, key_id=key_id)
        return bool(done)

    def shred(self, client: Any, namespace: str, value: str) -> list[str]:
        """Destroy every key of the scope (a tombstone kept per key id); the ids shredded."""
        redis_key = scope_redis_key(namespace, value)
        ids = [_text(i) for i in client.eval(_SHRED, 1, redis_key, _now()) or []]
        self.forget(namespace, value)
        for key_id in ids:
            track("scope_key_shredded", record=redis_key, key_id=key_id)
        return ids

    def rewrap(self, client: Any, master: KeyRing, redis_key: str) -> tuple[int, int]:
        """Re-wrap under the current master key the keys of one scope's hash that another
        wraps, compare-and-set; (re-wrapped, failed)."""
        namespace, _, value = redis_key[len(SCOPE_KEY_PREFIX) :].partition(":")
        part = scope_binding(namespace, value)
        current = master.current
        done = failed = 0
        for name, text in client.hgetall(redis_key).items():
            name, text = _text(name), _text(text)
            if not name.startswith("k:"):
                continue
            try:
                key_id = bytes.fromhex(name[2:])
                record = _record(text)
                if "wrapped" not in record:
                    continue  # wrapped by the KMS directly: not by a master key
                key, master_id = _unwrap(master, record["wrapped"], part, key_id)
            except (DecryptionError, ValueError) as exc:
                failed += 1
                track("scope_key_rewrapped", record=redis_key, key_id=name[2:], error=exc)
                continue
            if master_id == current.key_id:
                continue
            new = json.dumps({**record, "wrapped": _wrap(current, key, part)})
            if int(client.eval(_SWAP, 1, redis_key, name, text, new)):
                done += 1
                track("scope_key_rewrapped", record=redis_key, key_id=key_id)
        self.forget(namespace, value)
        return done, failed

    def forget(self, namespace: str, value: str) -> None:
        """Drop the scope from this process's cache (other processes keep it one lifetime)."""
        with self._lock:
            for slot in [s for s in self._entries if s[1] == namespace and s[2] == value]:
                del self._entries[slot]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def after_fork(self) -> None:
        self._lock = threading.Lock()  # the flights reset themselves (SingleFlight)


def rewrap_scope_keys(client: Any, master: KeyRing) -> tuple[int, int, list[str]]:
    """Every scope key in the Redis of ``client`` wrapped under the current master key:
    (re-wrapped, failed, the hashes where some failed)."""
    done = failed = 0
    where: list[str] = []
    for redis_key in scope_hashes(client):
        ok, bad = scope_keys.rewrap(client, master, redis_key)
        done, failed = done + ok, failed + bad
        if bad:
            where.append(redis_key)
    return done, failed, where


def scope_hashes(client: Any) -> Iterator[str]:
    """The Redis keys of every scope's hash (every node of a cluster)."""
    for key in client.scan_iter(match=f"{SCOPE_KEY_PREFIX}*", count=1000):
        yield _text(key)


# The process's scope keys.
scope_keys = ScopeKeys()
