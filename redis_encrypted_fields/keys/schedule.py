"""Scheduled rotation: how old the active key may get (``parse_duration``: ``1s``, ``12h``,
``90d``, ``2w``), and ``create_if_due``, which makes a new key when it is older, once, however
many runs (cron, a Kubernetes CronJob) start at the same time.

Runs at once are kept apart by a lock in the key store's Redis (``SET NX`` with a lifetime and a
token, released only by its holder); whoever holds it reads the active key again before making
one. A key made by a run whose values were not all re-wrapped yet is marked pending: the next run
re-wraps them even when no new key is due, and so does a run that began while processes may
still have encrypted under the old key (within the key cache lifetime of the new key's creation).
"""

from __future__ import annotations

import datetime
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import ConfigurationError, KeyStoreError
from .store import KeyRecord, KeyStore, instant

__all__ = [
    "Due",
    "create_if_due",
    "format_age",
    "key_age",
    "parse_duration",
    "rotation_done",
]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)([smhdw])")
LOCK_SECONDS = 600  # a run that dies holding the lock frees it after this long
# Deletes the lock only if it still holds this run's token (it may have expired and been taken).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


def parse_duration(text: str) -> datetime.timedelta:
    """``<number><unit>``, unit one of ``s``, ``m``, ``h``, ``d``, ``w`` (``90d``); above zero.
    ``ConfigurationError`` for anything else."""
    match = _DURATION.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if match is None or int(match.group(1)) == 0:
        raise ConfigurationError(
            f"{text!r} is not a duration: give a whole number above 0 and a unit, s (seconds), "
            "m (minutes), h (hours), d (days) or w (weeks), such as 90d or 12h"
        )
    return datetime.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def format_age(age: datetime.timedelta) -> str:
    """An age as ``keys list`` shows it: its largest whole unit (``91d``, ``5h``, ``12s``)."""
    seconds = max(0, int(age.total_seconds()))
    for unit in ("d", "h", "m"):
        if seconds >= _UNITS[unit]:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Due:
    """What ``create_if_due`` found or did: the active key (a new one if ``created``), its age,
    and whether the values still need re-wrapping under it (``rotate``)."""

    active: KeyRecord
    age: datetime.timedelta
    created: bool
    rotate: bool


def _pending_key(store: KeyStore) -> str:
    return f"{store.key}:rotation-pending"


@contextmanager
def _locked(store: KeyStore, wait: float) -> Iterator[None]:
    """The rotation lock, waited for up to ``wait`` seconds (another run making a key)."""
    name, token = f"{store.key}:rotation-lock", secrets.token_hex(16)
    deadline = time.monotonic() + wait
    while not store.redis_call(lambda: store.client.set(name, token, nx=True, ex=LOCK_SECONDS)):
        if time.monotonic() > deadline:
            raise KeyStoreError(
                f"another scheduled rotation has held the lock {name} for over {wait:g} s (it "
                f"expires {LOCK_SECONDS} s after it was taken): not making a key"
            )
        time.sleep(0.05)
    try:
        yield
    finally:
        store.redis_call(lambda: store.client.eval(_RELEASE, 1, name, token))


def key_age(store: KeyStore, record: KeyRecord) -> datetime.timedelta:
    """How long ago ``record`` was created, by the store's Redis clock."""
    return store.now() - instant(record.created_at)


def create_if_due(store: KeyStore, max_age: datetime.timedelta, *, wait: float = 60.0) -> Due:
    """A new active key if the active one is older than ``max_age`` (or there is none), made
    under the lock; else the active one. ``rotate`` says whether the values need re-wrapping:
    a new key, or one a run made without finishing (``rotation_done`` not called)."""
    with _locked(store, wait):
        records = store.records()
        active = next((r for r in records if r.is_active), None)
        age = key_age(store, active) if active is not None else None
        if active is not None and age is not None and age <= max_age:
            pending = store.redis_call(lambda: store.client.get(_pending_key(store)))
            pending_id = pending.decode() if isinstance(pending, bytes) else pending
            return Due(active, age, created=False, rotate=pending_id == active.key_id)
        record = store.create()
        store.redis_call(lambda: store.client.set(_pending_key(store), record.key_id))
        return Due(record, key_age(store, record), created=True, rotate=True)


def rotation_done(
    store: KeyStore, record: KeyRecord, started: datetime.datetime, ttl: float
) -> bool:
    """A run that began at ``started`` (the store's clock) re-wrapped every value under
    ``record``'s key: no run needs to again, if the run began once every process had taken the
    key as active (``ttl``, the key cache lifetime, after its creation); before that, a process
    may have written a value under the old key behind the run's scan, and the key stays pending.
    True if it is no longer pending."""
    if started < instant(record.created_at) + datetime.timedelta(seconds=ttl):
        return False
    store.redis_call(lambda: store.client.eval(_RELEASE, 1, _pending_key(store), record.key_id))
    return True
