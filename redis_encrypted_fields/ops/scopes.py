"""Operations on one key scope (a tenant): ``shred_scope`` destroys its keys (``keys.scope``),
so that every value sealed under them is noise, and says how many records still hold such
values; ``rotate_scope`` gives it a new key and re-wraps its values under it."""

from __future__ import annotations

import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from ..keys import KeyRing, get_keyring
from ..keys.scope import scope_keys, scope_redis_key
from ..model.field_map import facts_for
from ..model.mixin import EncryptedModel
from ..model.scope import scope_of, sync_client
from .layout import as_text
from .report import Operation, Report, merged
from .run import rotate

__all__ = ["ShredResult", "rotate_scope", "scoped_models", "shred_scope"]


@dataclass
class ShredResult:
    """What ``shred_scope`` did: the scope key ids destroyed (in each database that held the
    scope's keys) and, per model, how many records still hold values under them."""

    namespace: str
    value: str
    key_ids: list[str] = field(default_factory=list)
    records: dict[str, int] = field(default_factory=dict)

    @property
    def remaining(self) -> int:
        """Records still holding values under the shredded keys (unreadable from now on)."""
        return sum(self.records.values())


def scoped_models(namespace: str) -> list[type]:
    """Every ``EncryptedModel`` class defined so far whose ``KeyScope`` has ``namespace``."""
    found: list[type] = []
    todo: list[type] = list(EncryptedModel.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        meta = getattr(cls, "_meta", None)
        if meta is None or getattr(meta, "embedded", False) or cls in found:
            continue
        if not cls.__dict__.get("__pydantic_complete__"):
            continue
        scope = scope_of(cls)
        if scope is not None and scope.namespace == namespace:
            found.append(cls)
    return found


def _holding(model: Any, client: Any, name: str, value: str) -> int:
    """Records of ``model`` whose scope field ``name`` holds ``value`` (a scan of its keys)."""
    prefix = str(model.make_key(""))
    is_hash = facts_for(model).is_hash
    count = 0
    keys = [as_text(k) for k in client.scan_iter(match=f"{_glob(prefix)}*", count=1000)]
    for key in keys:
        try:
            if is_hash:
                found: Any = client.hget(key, name)
            else:
                found = client.json().get(key, f"$.{name}")
                found = found[0] if isinstance(found, list) and found else found
        except redis.ResponseError:
            continue  # not a record (redis-om's index schema hash)
        if as_text(found) == value:
            count += 1
    return count


def _glob(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]\\" else c for c in text)


def shred_scope(
    namespace: str,
    value: str,
    *,
    models: Iterable[type] | None = None,
    client: Any = None,
) -> ShredResult:
    """Destroy the keys of scope (``namespace``, ``value``) — a tenant — in the database of each
    model (default: every model whose ``KeyScope`` has ``namespace``; ``client``: that database
    instead), audited (``scope_key_shredded``); count the records still holding values under
    them. Afterwards their values raise ``ShreddedKeyError``; a new save in the scope makes a
    new key (the old values stay unreadable)."""
    chosen = list(models) if models is not None else scoped_models(namespace)
    result = ShredResult(namespace, value)
    done: list[Any] = []
    if client is not None:
        done.append(sync_client(client))
        result.key_ids += scope_keys.shred(done[0], namespace, value)
    for model in chosen:
        scope = scope_of(model)
        if scope is None or scope.namespace != namespace:
            raise TypeError(f"{model.__name__} has no KeyScope({namespace!r}) field")
        db = sync_client(client if client is not None else typing.cast(Any, model).db())
        if all(db is not c for c in done):
            done.append(db)
            result.key_ids += scope_keys.shred(db, namespace, value)
        result.records[model.__name__] = _holding(model, db, scope.name, value)
    scope_keys.forget(namespace, value)
    return result


def rotate_scope(
    namespace: str,
    value: str,
    *,
    models: Iterable[type] | None = None,
    keyring: KeyRing | None = None,
    batch_size: int = 500,
    client: Any = None,
) -> Report:
    """A new key for scope (``namespace``, ``value``), and its values re-wrapped under it in
    every model (default: every model whose ``KeyScope`` has ``namespace``); resumable (a run
    again re-wraps what is left) and compare-and-set, as ``rotate``. Once every value is under
    the new key, the old keys are deleted (``scope_key_retired``)."""
    chosen = list(models) if models is not None else scoped_models(namespace)
    master = keyring or get_keyring()
    clients: list[Any] = []

    def db(model: type) -> Any:
        return sync_client(client if client is not None else typing.cast(Any, model).db())

    for model in chosen:
        if all(db(model) is not c for c in clients):
            clients.append(db(model))
            scope_keys.create(db(model), master, namespace, value, replace=True)
    reports = [
        rotate(
            model,
            client=db(model),
            keyring=master,
            batch_size=batch_size,
            scope=value,
        )
        for model in chosen
    ]
    report = merged(reports, Operation.ROTATE, False)
    if report.ok:
        for each in clients:
            scope = scope_keys.read(each, master, namespace, value)
            for key_id in list(scope.keys):
                if scope.active is None or key_id != scope.active.key_id:
                    scope_keys.drop(each, namespace, value, key_id)
    return report


def scope_key_of(namespace: str, value: str) -> str:
    """The Redis key holding a scope's keys."""
    return scope_redis_key(namespace, value)
