"""``EncryptedModel.save()``: masks replaced by the stored secrets they stand for, before anything
is written; without the caller's pipeline, in one transaction with the write (``WATCH`` /
``MULTI`` / ``EXEC`` on the record key), read again while another writer changes the record
meanwhile. The mixin (``mixin``) calls ``save_sync`` or ``save_async`` from its ``save``.
"""

from __future__ import annotations

import contextvars
import json
import typing
from collections.abc import Callable, Generator
from typing import Any

import aredis_om.model.model as async_om
import redis_om.model.model as sync_om
from pydantic import BaseModel
from redis.asyncio.cluster import ClusterPipeline as AsyncClusterPipeline
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import WatchError

from ..errors import ConcurrentChangeError
from ..steps import Steps, run_async, run_sync
from .codec import open_stored
from .field_map import facts_cache, facts_for
from .fields import EncryptedStr
from .keep import has_masks, resolve_masks
from .plan import FieldPath, Leaf, Many, Node, plan_for
from .policy import checked_keyring
from .scope import scope_ring

__all__ = ["save_async", "save_sync", "saving"]

# How many times a save that keeps stored secrets (masks) reads and writes its record when another
# writer keeps changing it in between; then ConcurrentChangeError.
_KEEP_ATTEMPTS = 5

# The instance whose save() is running: its model_dump() then writes what a save must write.
saving: contextvars.ContextVar[object] = contextvars.ContextVar("ref_saving", default=None)


def save_sync(model: Any, parent: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """redis-om's ``save`` (``parent``) of ``model``, after its masks are resolved.

    With masks and no ``pipeline``, the record is read, the masks resolved and redis-om's
    writes sent in one transaction on the record key, so that a secret changed meanwhile is
    never written over (see ``_keep_sync``)."""
    masked = _masked(model)
    if masked:
        options = _transactable(args, kwargs)
        if options is not None:
            return _keep_sync(model, parent, masked, options)
        run_sync(_resolve_masks(model, masked), model._ref_db())
    token = saving.set(model)
    try:
        return parent.save(*args, **kwargs)
    finally:
        saving.reset(token)


async def save_async(model: Any, parent: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``save_sync`` with an asyncio client."""
    masked = _masked(model)
    if masked:
        options = _transactable(args, kwargs)
        if options is not None:
            return await _keep_async(model, parent, masked, options)
        await run_async(_resolve_masks(model, masked), model._ref_db())
    token = saving.set(model)
    try:
        return await parent.save(*args, **kwargs)
    finally:
        saving.reset(token)


def _keep_sync(model: Any, parent: Any, masked: list[str], options: dict[str, Any]) -> Any:
    """A save that keeps stored secrets, as one transaction, retried while another writer
    changes the record between the read and the write."""
    undo = _undo(model, masked)
    with model._ref_db().pipeline(transaction=True) as pipe:
        for _ in range(_KEEP_ATTEMPTS):
            token = saving.set(model)
            try:
                return run_sync(_keep_and_save(model, parent, masked, options), pipe)
            except WatchError:
                # The masks stand for what is stored now: put them back and read again.
                undo()
            finally:
                saving.reset(token)
    raise _conflict(model)


async def _keep_async(model: Any, parent: Any, masked: list[str], options: dict[str, Any]) -> Any:
    """``_keep_sync`` with an asyncio client."""
    undo = _undo(model, masked)
    db = model._ref_db()
    if isinstance(db, AsyncRedisCluster):
        pipe = _AsyncClusterTransaction(db, True)  # type: ignore[call-arg]
    else:
        pipe = db.pipeline(transaction=True)
    async with pipe:
        for _ in range(_KEEP_ATTEMPTS):
            token = saving.set(model)
            try:
                return await run_async(_keep_and_save(model, parent, masked, options), pipe)
            except WatchError:
                undo()
            finally:
                saving.reset(token)
    raise _conflict(model)


def _keep_and_save(
    model: Any, parent: Any, masked: list[str], options: dict[str, Any]
) -> Steps[Any]:
    """One attempt, driven with a transaction pipeline: the record key watched, the stored
    values read, the masks resolved, redis-om's writes queued in ``MULTI`` and sent with
    ``EXEC``, which raises ``WatchError`` if the record changed since the ``WATCH``."""
    cls = type(model)
    facts = facts_cache.get(cls) or facts_for(cls)
    record_key = cls._ref_key(model._ref_pk())
    yield lambda p: p.watch(record_key)
    stored = yield from _read_stored(model, masked, record_key)
    _resolve(model, stored, record_key)
    rest = dict(options)
    nx, xx = rest.pop("nx", False), rest.pop("xx", False)
    if nx or xx:
        # Decided here, under the WATCH (redis-om's HashModel refuses nx/xx in a pipeline,
        # and in one its JsonModel would report a save that did not happen).
        exists = yield lambda p: p.exists(record_key)
        if (nx and exists) or (xx and not exists):
            return None
    expiring: list[tuple[str, int]] = []
    if facts.is_hash:
        expiring = yield from _field_expiry(model, record_key)
    yield lambda p: p.multi()
    saved = yield lambda p: parent.save(pipeline=p, **rest)
    if expiring:
        yield lambda p: _queue_expiry(p, record_key, expiring)
    yield lambda p: p.execute()
    return saved


def _field_expiry(model: Any, record_key: str) -> Steps[list[tuple[str, int]]]:
    """The record's hash fields that expire, with when (ms), read under the WATCH: HSET drops
    a field's TTL, and redis-om keeps them only when it sends the write itself."""
    cls: Any = type(model)
    db = model._ref_db()
    check = (
        async_om.supports_hash_field_expiration
        if cls.__ref_async__
        else sync_om.supports_hash_field_expiration
    )
    supported = yield lambda p: check(db)
    if not supported:
        return []
    facts = facts_cache.get(cls) or facts_for(cls)
    fields = [n for n in cls.model_fields if n != facts.pk_name]
    fields += sorted(facts.search.companions)
    at = yield lambda p: p.execute_command(
        "HPEXPIRETIME", record_key, "FIELDS", len(fields), *fields
    )
    return [(f, int(t)) for f, t in zip(fields, at or (), strict=False) if int(t) > 0]


def _masked(model: Any) -> list[str]:
    """The encrypted fields that hold a mask somewhere; no I/O."""
    if not _may_hold_masks(model):
        return []
    values = model.__dict__
    plan = plan_for(type(model))
    return [name for name, node in plan.items() if has_masks(values.get(name), node)]


def _may_hold_masks(model: Any) -> bool:
    # The common case, told at once: top-level fields that hold secrets (EncryptedStr, which
    # a mask never is: validation makes masks KeepExisting) or None.
    cls = type(model)
    facts = facts_cache.get(cls) or facts_for(cls)
    if not facts.flat:
        return True
    values = model.__dict__
    for name in facts.plan:
        value = values.get(name)
        if value is not None and type(value) is not EncryptedStr:
            if name in facts.typed and not isinstance(value, str):
                continue  # an Encrypted[T] value: a mask is always a str
            return True
    return False


def _undo(model: Any, masked: list[str]) -> Callable[[], None]:
    """A function that puts back every value at the encrypted paths of ``masked`` as it is
    now (resolving a mask replaces it where it stands)."""
    plan = plan_for(type(model))
    leaves: list[tuple[Any, Any, Any]] = []
    for name in masked:
        _leaves(model, name, model.__dict__.get(name), plan[name], leaves)

    def undo() -> None:
        for holder, key, value in leaves:
            if isinstance(holder, list):
                holder[key] = value
            else:
                holder.__dict__[key] = value

    return undo


def _conflict(model: Any) -> ConcurrentChangeError:
    cls = type(model)
    record_key = cls._ref_key(model._ref_pk())
    return ConcurrentChangeError(
        f"{cls.__name__} {record_key}: the record changed between the read and the write "
        f"of a save that keeps its stored secrets (masks), {_KEEP_ATTEMPTS} times in a row; "
        "nothing was saved. Save again, or send the real values",
        model=cls.__name__,
        record=record_key,
    )


def _resolve_masks(model: Any, masked: list[str]) -> Steps[None]:
    """The masks resolved against the record as stored now (a save into the caller's
    pipeline, which the caller sends when it chooses)."""
    record_key = type(model)._ref_key(model._ref_pk())
    stored = yield from _read_stored(model, masked, record_key)
    _resolve(model, stored, record_key)


def _read_stored(model: Any, masked: list[str], record_key: str) -> Steps[Any]:
    """The stored record as ``resolve_masks`` takes it: the masked fields of a hash, the
    whole document of a JSON model."""
    if (facts_cache.get(type(model)) or facts_for(type(model))).is_hash:
        found = yield lambda r: r.hmget(record_key, masked)
        return dict(zip(masked, found, strict=True))
    doc = yield lambda r: r.json().get(record_key)
    # A watched cluster pipeline returns JSON.GET's reply as text.
    return json.loads(doc) if isinstance(doc, (str, bytes)) else doc


def _resolve(model: Any, stored: Any, record_key: str) -> None:
    cls = type(model)
    plan = plan_for(cls)
    name = cls.__name__

    facts = facts_cache.get(cls) or facts_for(cls)
    keyring = None
    if facts.scope is not None:
        # The stored secret a mask keeps is opened under the record's scope.
        value = model.__dict__.get(facts.scope.name)
        keyring = scope_ring(cls, facts.scope, value, checked_keyring(), record_key, create=False)

    def opener(raw: str, path: FieldPath) -> str:
        return open_stored(raw, name, path, record_key, keyring)

    resolve_masks(typing.cast(BaseModel, model), plan, stored, name, record_key, opener)


# The installed stubs describe an older redis-py: generic, no transaction argument, another
# __await__.
class _AsyncClusterTransaction(AsyncClusterPipeline):  # type: ignore[type-arg]
    """A transaction of an asyncio cluster client that redis-om's save() can queue into.

    redis-om awaits each command it queues; other pipelines then give themselves back, but
    redis-py's asyncio ``ClusterPipeline`` starts afresh, its queue emptied, and the transaction
    would send nothing."""

    def __await__(self) -> Generator[Any, None, Any]:  # type: ignore[override]
        return self._queued().__await__()

    async def _queued(self) -> Any:
        return self


# redis-om's save() parameters, in order (HashModel's; JsonModel has the first three).
_SAVE_PARAMETERS = ("pipeline", "nx", "xx", "field_expirations")


def _transactable(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """save()'s arguments by name, when a save that keeps stored secrets can be its own
    transaction; ``None`` for a save into the caller's pipeline (the caller sends the write when
    it chooses, so no transaction of ours can cover it) or arguments redis-om refuses (it then
    raises them as before)."""
    if len(args) > len(_SAVE_PARAMETERS) or any(n in kwargs for n in _SAVE_PARAMETERS[: len(args)]):
        return None
    options = {**dict(zip(_SAVE_PARAMETERS, args, strict=False)), **kwargs}
    if options.get("pipeline") is not None or (options.get("nx") and options.get("xx")):
        return None
    options.pop("pipeline", None)
    return options


def _leaves(holder: Any, key: Any, value: Any, node: Node, out: list[tuple[Any, Any, Any]]) -> None:
    """Every value at the encrypted paths ``node`` describes, with where it is held."""
    if isinstance(node, Leaf):
        out.append((holder, key, value))
    elif isinstance(node, Many):
        if isinstance(value, list):
            for i, item in enumerate(value):
                _leaves(value, i, item, node.item, out)
    elif isinstance(value, BaseModel):
        for name, sub in plan_for(type(value)).items():
            _leaves(value, name, value.__dict__.get(name), sub, out)


def _queue_expiry(pipe: Any, record_key: str, expiring: list[tuple[str, int]]) -> None:
    """Queue the expiry times read before the write, after it (HSET dropped them)."""
    for field, at in expiring:
        pipe.execute_command("HPEXPIREAT", record_key, at, "FIELDS", 1, field)
