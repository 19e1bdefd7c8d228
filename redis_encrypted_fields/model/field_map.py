"""The per-class field map: what ``EncryptedModel``'s hooks and the record codec ask of a model
class on every call (its plan, flavour, key layout, how it dumps, its blind indexes), worked out
once per class."""

from __future__ import annotations

import datetime
import enum
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import aredis_om
import redis_om
from pydantic import BaseModel

from ..crypto.envelope import binding_part
from .blind_index import BlindIndex, SearchSpec
from .fields import Mask
from .plan import Leaf, Node, Plan, plan_for
from .scope import ScopeField, scope_field
from .typed import EncryptedType

__all__ = ["Facts", "facts_cache", "facts_for", "search_spec"]


@dataclass(frozen=True, slots=True)
class Facts:
    """What the hooks ask of a model class on every call, worked out once per class."""

    plan: Plan
    flat: bool  # every encrypted field is a top-level EncryptedStr (no nesting, no lists)
    embedded: bool
    opens: bool  # validation opens values: the class has encrypted fields and is not embedded
    is_hash: bool
    # The top-level encrypted fields, each with its plan node and its half of every binding.
    opening: tuple[tuple[str, Node, bytes], ...]
    pk_name: str | None
    nullable: frozenset[str]  # encrypted fields that accept None
    typed: frozenset[str]  # top-level Encrypted[T] fields
    # Encrypted fields that model_dump() may seal straight from the instance (see there), or
    # None when the class has anything that could change how they dump.
    direct: frozenset[str] | None
    # The fields in dump order, each with its Leaf if model_dump() seals it from the instance.
    layout: tuple[tuple[str, Leaf | None], ...]
    search: SearchSpec  # blind indexes
    # redis-om's read conversions (timestamps to datetime, base64 to bytes) leave every record
    # of the class as it is: no field of those types at any depth (see _unconverted).
    unconverted: bool
    # How redis-om makes a record's key, when the class uses its default way ("{prefix}{pk}"):
    # (_meta, its global_key_prefix, model_key_prefix and primary_key_pattern, the prefix).
    keys: tuple[Any, Any, Any, Any, str] | None
    scope: ScopeField | None = None  # the KeyScope field: secrets under its scope's keys


facts_cache: dict[type, Facts] = {}


def _key_parts(cls: Any, meta: Any) -> tuple[Any, Any, Any, Any, str] | None:
    """The parts of ``_ref_key``'s fast path, or ``None`` where it does not apply."""
    if meta is None or getattr(meta, "embedded", False):
        return None
    base: Any = (
        aredis_om.RedisModel if issubclass(cls, aredis_om.RedisModel) else redis_om.RedisModel
    )
    default = all(
        getattr(cls, name).__func__ is getattr(base, name).__func__
        for name in ("make_key", "make_primary_key")
    )
    parts = (
        getattr(meta, "global_key_prefix", None),
        getattr(meta, "model_key_prefix", None),
        getattr(meta, "primary_key_pattern", None),
    )
    if not default or parts[2] != "{pk}" or not all(isinstance(p, str) for p in parts):
        return None
    prefix = str(cls.make_key(""))
    return (meta, *parts, prefix)


def facts_for(cls: Any) -> Facts:
    """The facts of ``cls``, worked out on its first call. (Hot paths read ``facts_cache``
    first, sparing the call.)"""
    facts = facts_cache.get(cls)
    if facts is None:
        # Worked out on first use, not at class creation: redis-om fills ``_meta`` after pydantic
        # has completed the class.
        plan = plan_for(cls)
        meta = getattr(cls, "_meta", None)
        embedded = bool(getattr(meta, "embedded", False))
        fields = cls.model_fields
        direct = frozenset(plan) if _dumps_plainly(cls, plan) else None
        facts = Facts(
            plan=plan,
            flat=all(isinstance(node, Leaf) for node in plan.values()),
            embedded=embedded,
            opens=bool(plan) and not embedded,
            is_hash=issubclass(cls, (aredis_om.HashModel, redis_om.HashModel)),
            opening=tuple((n, node, binding_part(n)) for n, node in plan.items()),
            pk_name=None if embedded or meta is None else str(meta.primary_key.name),
            nullable=frozenset(n for n in plan if _allows_none(fields[n].annotation)),
            typed=frozenset(
                n for n, node in plan.items() if isinstance(node, Leaf) and node.typed is not None
            ),
            direct=direct,
            layout=tuple((n, typing.cast(Leaf | None, plan.get(n))) for n in fields),
            keys=_key_parts(cls, meta),
            search=search_spec(plan),
            unconverted=all(
                _unconverted(f.annotation, set()) and getattr(f, "vector_options", None) is None
                for f in fields.values()
            ),
            scope=None if embedded else scope_field(cls, plan),
        )
        facts_cache[cls] = facts
    return facts


def search_spec(plan: Plan) -> SearchSpec:
    """The blind indexes of a plan's top-level fields."""
    blind = {n: x.blind for n, x in plan.items() if isinstance(x, Leaf) and x.blind is not None}
    codecs = {
        n: x.typed
        for n, x in plan.items()
        if isinstance(x, Leaf) and x.blind is not None and x.typed is not None
    }
    return SearchSpec.of(blind, plan, codecs)


def _dumps_plainly(cls: Any, plan: Plan) -> bool:
    """Whether every encrypted field dumps as itself: top level, under its own name, with no
    serializer or option of the user's in the way."""
    if not plan or cls.model_config.get("serialize_by_alias"):
        return False
    if (
        cls.__pydantic_decorators__.model_serializers
        or cls.__pydantic_decorators__.field_serializers
    ):
        return False
    for name, node in plan.items():
        field = cls.model_fields[name]
        if not isinstance(node, Leaf) or field.exclude or field.serialization_alias or field.alias:
            return False
        if any(not isinstance(m, (Mask, BlindIndex)) for m in field.metadata):
            return False
    return True


def _allows_none(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType) and type(None) in (
        typing.get_args(annotation)
    )


# What redis-om's read conversions never touch; datetime, date and bytes are what they convert.
_AS_STORED = (str, int, float, bool, type(None), enum.Enum, EncryptedType)
_CONTAINERS = (Annotated, Union, types.UnionType, list, dict, set, frozenset, tuple)


def _unconverted(annotation: Any, seen: set[type]) -> bool:
    """Whether redis-om's read conversions leave a value of this annotation as it is. Told by
    what is known to pass (scalars other than datetime, date and bytes, enums, literals, and
    containers and models of those), so that anything else keeps redis-om's own path."""
    origin = typing.get_origin(annotation)
    if origin is Literal or annotation is Any:
        return True
    if origin is not None:
        args = typing.get_args(annotation)
        if origin is Annotated:
            args = args[:1]  # the type; the rest is metadata
        return origin in _CONTAINERS and all(a is ... or _unconverted(a, seen) for a in args)
    if not isinstance(annotation, type) or issubclass(annotation, (datetime.date, bytes)):
        return False
    if issubclass(annotation, BaseModel):
        if annotation not in seen:
            seen.add(annotation)
            return all(_unconverted(f.annotation, seen) for f in annotation.model_fields.values())
        return True
    return issubclass(annotation, _AS_STORED)
