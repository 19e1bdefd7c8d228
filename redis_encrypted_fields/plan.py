"""Where a model's encrypted values are: a plan per model class, worked out from its annotations.

A plan maps each field holding secrets to a node: ``Leaf`` (an ``EncryptedStr``, with its mask),
``Many`` (a list of nodes) or ``Nested`` (a model with encrypted fields of its own). The
integration (``models``), keep-existing (``keep``) and the maintenance tools (``ops``) all walk it.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .fields import DEFAULT_MASK, EncryptedStr, Mask

__all__ = [
    "FieldPath",
    "Leaf",
    "Many",
    "Nested",
    "Node",
    "Plan",
    "check_not_indexed",
    "dotted",
    "encrypted_paths",
    "forget",
    "plan_for",
]

FieldPath = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Leaf:
    mask: Mask


@dataclass(frozen=True, slots=True)
class Nested:
    model: type[BaseModel]


@dataclass(frozen=True, slots=True)
class Many:
    item: Node


Node = Leaf | Nested | Many
Plan = dict[str, Node]

_plans: dict[type[BaseModel], Plan] = {}
_building: set[type[BaseModel]] = set()


def _mentions_encrypted(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, EncryptedStr):
        return True
    return any(_mentions_encrypted(arg) for arg in typing.get_args(annotation))


def _node(annotation: Any, metadata: Sequence[Any], where: str) -> Node | None:
    mask = next((m for m in metadata if isinstance(m, Mask)), None)
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *extra = typing.get_args(annotation)
        return _node(inner, [*metadata, *extra], where)
    if isinstance(annotation, type) and issubclass(annotation, EncryptedStr):
        return Leaf(mask or DEFAULT_MASK)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _node(args[0], metadata, where)
    elif origin in (list, Sequence, typing.Sequence, typing.List):  # noqa: UP006
        (item,) = typing.get_args(annotation) or (Any,)
        inner = _node(item, metadata, where)
        return Many(inner) if inner is not None else None
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return Nested(annotation) if plan_for(annotation) else None
    if _mentions_encrypted(annotation):
        raise TypeError(
            f"{where}: EncryptedStr is supported as a field, Optional, in a list, or inside a "
            "nested model; not in this position"
        )
    return None


def plan_for(model: type[BaseModel]) -> Plan:
    """The encrypted fields of ``model``, by field name, including nested models and lists."""
    plan = _plans.get(model)
    if plan is not None:
        return plan
    if model in _building:  # a self-referencing model: its own entry is being made
        return {}
    _building.add(model)
    try:
        plan = {}
        for name, field in model.model_fields.items():
            node = _node(field.annotation, field.metadata, f"{model.__name__}.{name}")
            if node is not None:
                plan[name] = node
    finally:
        _building.discard(model)
    _plans[model] = plan
    return plan


def forget(model: type[BaseModel]) -> None:
    """Drop the plan worked out for ``model`` (its fields changed: a rebuild)."""
    _plans.pop(model, None)


def encrypted_paths(model: type[BaseModel]) -> list[str]:
    """Dotted paths of the encrypted fields (``[]`` marks a list), e.g. ``["creds[].password"]``."""

    def walk(node: Node, prefix: str) -> Iterator[str]:
        if isinstance(node, Leaf):
            yield prefix
        elif isinstance(node, Many):
            yield from walk(node.item, prefix + "[]")
        else:
            for name, sub in plan_for(node.model).items():
                yield from walk(sub, f"{prefix}.{name}")

    return [p for name, node in plan_for(model).items() for p in walk(node, name)]


def _index_flags(field: FieldInfo) -> list[str]:
    infos: list[Any] = [field, *field.metadata]
    flags = [
        flag
        for flag in ("index", "full_text_search", "sortable")
        if any(getattr(info, flag, None) is True for info in infos)
    ]
    if any(getattr(info, "vector_options", None) is not None for info in infos):
        flags.append("vector_options")
    return flags


def check_not_indexed(model: type[BaseModel], plan: Plan, prefix: str = "") -> None:
    for name, node in plan.items():
        while isinstance(node, Many):
            node = node.item
        where = f"{prefix}{name}"
        if isinstance(node, Nested):
            check_not_indexed(node.model, plan_for(node.model), f"{where}.")
            continue
        flags = _index_flags(model.model_fields[name])
        if flags:
            raise TypeError(
                f"{where}: an EncryptedStr field cannot be indexed ({'=, '.join(flags)}=True); "
                "an index of ciphertexts finds nothing. Remove the option from its Field()."
            )


def dotted(path: FieldPath) -> str:
    if len(path) == 1 and type(path[0]) is str:
        return path[0]  # a top-level field, the common case
    return ".".join(str(p) for p in path)
