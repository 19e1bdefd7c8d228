"""Where a model's encrypted values are: a plan per model class, worked out from its annotations.

A plan maps each field holding secrets to a node: ``Leaf`` (an ``EncryptedStr``, with its mask
and blind index), ``Many`` (a list of nodes) or ``Nested`` (a model with encrypted fields of its
own). The integration (``mixin``), keep-existing (``keep``) and the maintenance tools (``ops``) all
walk it, and name a value's path the one way written here (``dotted``, ``pattern``).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .blind_index import BlindIndex, companion_name
from .fields import DEFAULT_MASK, EncryptedStr, Mask
from .typed import EncryptedType, TypeCodec, is_typed

__all__ = [
    "FieldPath",
    "Leaf",
    "Many",
    "Nested",
    "Node",
    "Plan",
    "annotated_hints",
    "check_not_indexed",
    "declared_index_flags",
    "dotted",
    "encrypted_paths",
    "forget",
    "plan_for",
]

FieldPath = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Leaf:
    mask: Mask
    blind: BlindIndex | None = None
    typed: TypeCodec | None = None  # Encrypted[T]; None for an EncryptedStr

    def type_name(self) -> str:
        """What messages call the field's type."""
        return "str" if self.typed is None else self.typed.name


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
    if isinstance(annotation, type) and issubclass(annotation, (EncryptedStr, EncryptedType)):
        return True
    return any(_mentions_encrypted(arg) for arg in typing.get_args(annotation))


def _node(annotation: Any, metadata: Sequence[Any], where: str) -> Node | None:
    mask = next((m for m in metadata if isinstance(m, Mask)), None)
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *extra = typing.get_args(annotation)
        return _node(inner, [*metadata, *extra], where)
    typed = is_typed(annotation)
    if typed is not None or (isinstance(annotation, type) and issubclass(annotation, EncryptedStr)):
        blind = next((m for m in metadata if isinstance(m, BlindIndex)), None)
        if typed is not None:
            _check_typed(typed, where)
        return Leaf(mask or DEFAULT_MASK, blind, typed)
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
            f"{where}: EncryptedStr and Encrypted[T] are supported as a field, Optional, in a "
            "list, or inside a nested model; not in this position"
        )
    return None


def _check_typed(typed: TypeCodec, where: str) -> None:
    source = typed.source
    if isinstance(source, type) and issubclass(source, BaseModel) and plan_for(source):
        raise TypeError(
            f"{where}: Encrypted[{source.__name__}] holds the whole model as one envelope, but "
            f"{source.__name__} has encrypted fields of its own; declare it as a plain nested "
            "model instead (its secrets are then encrypted one by one)"
        )


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
        hints = _hints(model)
        for name, field in model.model_fields.items():
            annotation = hints.get(name, field.annotation)
            node = _node(annotation, field.metadata, f"{model.__name__}.{name}")
            if node is not None:
                plan[name] = node
    finally:
        _building.discard(model)
    _plans[model] = plan
    return plan


def _hints(model: type[BaseModel]) -> dict[str, Any]:
    """The fields' annotations with their ``Annotated`` metadata (``Mask``, ``BlindIndex``).

    ``model_fields`` loses that metadata once redis-om's metaclass has replaced the FieldInfo of
    a field declared without ``Field(...)``: a model whose plan is made later (an embedded model
    without the mixin) would lose it. Empty if the annotations cannot be resolved.
    """
    try:
        return typing.get_type_hints(model, include_extras=True)
    except Exception:  # unresolvable forward references: the fields' own annotations then
        return {}


def annotated_hints(model: type[BaseModel]) -> dict[str, Any]:
    """The fields' annotations with their ``Annotated`` metadata (see ``_hints``)."""
    return _hints(model)


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


def declared_index_flags(namespace: dict[str, Any]) -> dict[str, list[str]]:
    """The index options of the ``Field(...)`` values of a class body, by field name.

    Read before pydantic builds the class: for an ``Annotated`` type, the FieldInfo it merges (the
    one ``check_not_indexed`` sees) has lost redis-om's options.
    """
    declared = {n: _index_flags(v) for n, v in namespace.items() if isinstance(v, FieldInfo)}
    return {name: flags for name, flags in declared.items() if flags}


def check_not_indexed(
    model: type[BaseModel],
    plan: Plan,
    prefix: str = "",
    declared: Mapping[str, list[str]] | None = None,
) -> None:
    """Refuse index options on encrypted fields (``declared``: those read from the class body),
    and blind indexes where they cannot work."""
    for name, node in plan.items():
        top = not prefix and isinstance(node, Leaf)
        while isinstance(node, Many):
            node = node.item
        where = f"{prefix}{name}"
        if isinstance(node, Nested):
            check_not_indexed(node.model, plan_for(node.model), f"{where}.")
            continue
        flags = _index_flags(model.model_fields[name]) or (declared or {}).get(name, [])
        if flags:
            raise TypeError(
                f"{where}: an EncryptedStr field cannot be indexed ({'=, '.join(flags)}=True); "
                "an index of ciphertexts finds nothing. Remove the option from its Field() (for "
                "equality search, declare Annotated[EncryptedStr, BlindIndex()])."
            )
        if isinstance(node, Leaf) and node.blind is not None and not top:
            raise TypeError(
                f"{where}: BlindIndex is supported on top-level EncryptedStr fields of an "
                "EncryptedModel (also in Optional[...]), not in lists or nested models"
            )
        if isinstance(node, Leaf) and node.blind is not None:
            companion = companion_name(name)
            if companion in model.model_fields:
                raise TypeError(
                    f"{where}: its blind index is stored as {companion!r}, which is also a field "
                    "of the model; rename that field"
                )
    hints = _hints(model)
    for name, field in model.model_fields.items():
        if name not in plan and _mentions_blind([hints.get(name), *field.metadata]):
            raise TypeError(
                f"{prefix}{name}: BlindIndex goes on an EncryptedStr or Encrypted[T] field"
            )


def _mentions_blind(annotations: Sequence[Any]) -> bool:
    return any(
        isinstance(a, BlindIndex)
        or (typing.get_origin(a) is not None and _mentions_blind(typing.get_args(a)))
        for a in annotations
    )


def dotted(path: FieldPath) -> str:
    """A value's field path as text, list items by index: ``replicas.1.password`` (what errors,
    audit events and reports name, and what a value's binding holds)."""
    if len(path) == 1 and type(path[0]) is str:
        return path[0]  # a top-level field, the common case
    return ".".join(str(p) for p in path)


def pattern(path: FieldPath | str) -> str:
    """``replicas.1.password`` → ``replicas[].password``: the name values are counted under
    (``path`` as a tuple, or dotted)."""
    parts: Sequence[str | int] = path.split(".") if isinstance(path, str) else path
    out = ""
    for part in parts:
        if isinstance(part, int) or part.isdigit():
            out += "[]"
        else:
            out += f".{part}" if out else part
    return out
