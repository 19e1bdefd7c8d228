"""Per-tenant keys on a model: ``KeyScope`` marks the plain field whose value names a record's
scope (``tenant_id: Annotated[str, KeyScope("tenant")]``); the record's secrets are sealed under
that scope's key (``keys.scope``) and bound to the scope. ``shred_scope`` erases a scope."""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from ..errors import ConfigurationError, ScopeValueError, printable
from ..keys import KeyRing
from ..keys.scope import ScopeRing, scope_keys, scope_redis_key
from .plan import annotated_hints, plan_for

__all__ = ["KeyScope", "ScopeField", "scope_field", "scope_of", "scope_ring", "sync_client"]

_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class KeyScope:
    """Marks the plain (not encrypted) field whose value names a record's key scope:
    ``tenant_id: Annotated[str, KeyScope("tenant")] = Field(index=True)``. Every model whose
    scope field has the same ``namespace`` shares its scopes' keys."""

    __slots__ = ("namespace",)

    def __init__(self, namespace: str) -> None:
        if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
            raise ConfigurationError(
                "a KeyScope namespace is 1 to 64 letters, digits, '_', '.' or '-'"
            )
        self.namespace = namespace

    def __repr__(self) -> str:
        return f"KeyScope({self.namespace!r})"


@dataclass(frozen=True, slots=True)
class ScopeField:
    """A model's scope field: its name and namespace."""

    name: str
    namespace: str


def scope_field(cls: Any, encrypted: typing.Collection[str] = ()) -> ScopeField | None:
    """The ``KeyScope`` field of a model class, if any; ``TypeError`` for two of them, or for
    one on an encrypted field (``encrypted``: the class's encrypted fields)."""
    hints = annotated_hints(cls)
    found = []
    for name, info in cls.model_fields.items():
        hint = hints.get(name)
        extra = typing.get_args(hint)[1:] if typing.get_origin(hint) is typing.Annotated else ()
        # redis-om drops a field's Annotated metadata unless it is declared with Field(...).
        marker = next((m for m in (*info.metadata, *extra) if isinstance(m, KeyScope)), None)
        if marker is not None:
            found.append((name, marker))
    if not found:
        return None
    if len(found) > 1:
        names = ", ".join(name for name, _ in found)
        raise TypeError(f"{cls.__name__} has more than one KeyScope field ({names}): at most one")
    name, marker = found[0]
    if name in encrypted:
        raise TypeError(
            f"{cls.__name__}.{name} is encrypted: a KeyScope field must be a plain field"
        )
    return ScopeField(name, marker.namespace)


def scope_of(cls: Any) -> ScopeField | None:
    """``scope_field`` of a model class from its plan (for tools: any model, completed by
    redis-om or not)."""
    return scope_field(cls, plan_for(cls))


# Each model database's sync client: itself, or for an asyncio client a sync twin (scope keys
# are read inside validation, which is not async: one Redis call per scope and cache lifetime).
# By the client object: a model's database is one object for the life of the process.
_clients: dict[Any, Any] = {}


def sync_client(db: Any) -> Any:
    """``db`` if it is a sync client, else a sync client of the same server or cluster."""
    client = _clients.get(db)
    if client is None:
        client = _clients[db] = _twin(db)
    return client


def _twin(db: Any) -> Any:
    if isinstance(db, redis.asyncio.cluster.RedisCluster):
        # Before its first command an asyncio cluster client knows only its startup nodes.
        nodes = db.get_nodes() or list(db.nodes_manager.startup_nodes.values())
        kwargs = db.get_connection_kwargs()
        return redis.cluster.RedisCluster(
            host=nodes[0].host,
            port=int(nodes[0].port),
            password=kwargs.get("password"),
            username=kwargs.get("username"),
        )
    if isinstance(db, redis.asyncio.Redis):
        allowed = (
            "host",
            "port",
            "db",
            "username",
            "password",
            "socket_timeout",
            "socket_connect_timeout",
            "path",
        )
        kwargs = db.connection_pool.connection_kwargs
        return redis.Redis(**{k: v for k, v in kwargs.items() if k in allowed})
    return db


def scope_ring(
    model: Any,
    scope: ScopeField,
    value: Any,
    master: KeyRing,
    record_key: str | None,
    *,
    create: bool,
) -> KeyRing:
    """The key ring of a record of ``model`` whose scope field holds ``value``: the scope's
    (made on a save, ``create``). A record read without a scope value gets ``master``; a save
    without one is refused (``ScopeValueError``)."""
    if type(value) is int:
        value = str(value)  # an int scope field: a hash stores it as its text, JSON as a number
    if type(value) is not str or not value:
        if not create:
            return master
        where = printable(
            f"{model.__name__}.{scope.name}" + (f" of {record_key}" if record_key else "")
        )
        raise ScopeValueError(
            f"Encryption failed: {where} is empty: it names the key scope ({scope.namespace}) "
            "its secrets are sealed under, so it must be set before they are saved",
            model=model.__name__,
            record=record_key,
            field=scope.name,
        )
    client = sync_client(model.db())
    ring: ScopeRing = scope_keys.ring(client, master, scope.namespace, value, create=create)
    return ring


def scope_key_name(namespace: str, value: str) -> str:
    """The Redis key of a scope's keys (what the audit events name)."""
    return scope_redis_key(namespace, value)
