"""A ``find()`` query as a tree: blind-indexed conditions (``Blind``) apart from those RediSearch
answers itself (``Plain``), parsed from redis-om's expressions (``Parser``), rendered back with
companion lookups (``render``), and settled once the blind conditions' exact truth is known
(``settle``). ``query`` runs them.
"""

from __future__ import annotations

import functools
import operator
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pydantic.fields import FieldInfo as PydanticFieldInfo

from ..errors import ValueTypeError
from ..keys import KeyRing
from .blind_index import BlindIndex, SearchSpec, companion_name, domain
from .errors import UnsupportedQueryError
from .typed import TypeCodec

__all__ = [
    "Blind",
    "Join",
    "Node",
    "Not",
    "Parser",
    "Plain",
    "blind_leaves",
    "has_blind",
    "render",
    "scope_equality",
    "settle",
]


# --- a query as a tree: blind-indexed conditions apart from the rest ---------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Blind:
    """``field == v`` / ``field << [v, ...]`` on a blind-indexed field."""

    field: str
    index: BlindIndex
    values: frozenset[str]  # normalized
    codec: TypeCodec | None = None  # an Encrypted[T] field's: values are its texts

    def __repr__(self) -> str:  # the values are what the application searches for
        return f"Blind({self.field})"


@dataclass(frozen=True, slots=True, eq=False)
class Plain:
    """A condition RediSearch answers itself (redis-om renders it)."""

    expression: Any


@dataclass(frozen=True, slots=True, eq=False)
class Not:
    child: Node


@dataclass(frozen=True, slots=True, eq=False)
class Join:
    both: bool  # True: & (all of them); False: | (any of them)
    children: tuple[Node, ...]


Node = Blind | Plain | Not | Join

# The operators a blind index cannot answer exactly, as the user writes them.
_SYMBOLS = {
    "NE": "!=",
    "NOT_IN": ">>",
    "LT": "<",
    "LE": "<=",
    "GT": ">",
    "GE": ">=",
    "LIKE": "% (full-text search)",
    "STARTSWITH": "startswith()",
    "ENDSWITH": "endswith()",
    "CONTAINS": "contains()",
}


class Parser:
    def __init__(self, om: ModuleType, model: Any, spec: SearchSpec) -> None:
        self.om, self.model, self.spec = om, model, spec

    def parse(self, expression: Any, negated: bool = False) -> Node:
        om = self.om
        if isinstance(expression, om.NegatedExpression):
            return Not(self.parse(expression.expression, not negated))
        left = expression.left
        if isinstance(left, (om.Expression, om.NegatedExpression)) and expression.op.name in (
            "AND",
            "OR",
        ):
            right = self.parse(expression.right, negated)
            return Join(expression.op.name == "AND", (self.parse(left, negated), right))
        name = getattr(left, "name", None) if isinstance(left, PydanticFieldInfo) else None
        if name not in self.spec.encrypted or expression.parents:
            return Plain(expression)
        return self.blind(expression, typing.cast(str, name), negated)

    def blind(self, expression: Any, name: str, negated: bool) -> Blind:
        where = f"{self.model.__name__}.{name}"
        index = self.spec.blind.get(name)
        if index is None:
            raise UnsupportedQueryError(
                f"{where} is encrypted and has no blind index, so it cannot be searched; "
                "declare it as Annotated[EncryptedStr, BlindIndex()] to find records by equality",
                model=self.model.__name__,
                field=name,
            )
        op = expression.op.name
        refused = "~ (negation)" if negated and op in ("EQ", "IN") else _SYMBOLS.get(op, op)
        if negated or op not in ("EQ", "IN"):
            raise UnsupportedQueryError(
                f"{where} is searched through a blind index, which answers only == and << (in) "
                f"exactly; {refused} is not supported (a truncated digest cannot tell which "
                "records it leaves out without decrypting them all)",
                model=self.model.__name__,
                field=name,
            )
        right = expression.right
        codec = self.spec.codecs.get(name)
        if codec is None:
            values = [right] if op == "EQ" or isinstance(right, str) else list(right)
            for value in values:
                if not isinstance(value, str):
                    raise UnsupportedQueryError(
                        f"{where} is compared with a {type(value).__name__}; compare it with a str",
                        model=self.model.__name__,
                        field=name,
                    )
        else:
            # An Encrypted[T] field: each value as the field validates it, then its text.
            many = op == "IN" and isinstance(right, (list, tuple, set, frozenset))
            try:
                values = [codec.encode(v) for v in (right if many else [right])]
            except ValueTypeError as exc:
                raise UnsupportedQueryError(
                    f"{where} holds {codec.name} values; a value compared with it is not one "
                    f"({exc})",
                    model=self.model.__name__,
                    field=name,
                ) from None
        return Blind(name, index, frozenset(index.normalized(v, where) for v in values), codec)


def has_blind(node: Node) -> bool:
    if isinstance(node, Blind):
        return True
    if isinstance(node, Not):
        return has_blind(node.child)
    if isinstance(node, Join):
        return any(has_blind(child) for child in node.children)
    return False


def scope_equality(node: Node, name: str) -> str | None:
    """The value the query requires of field ``name`` (``M.name == value``, joined to the rest
    by ``&``), or ``None``: what names the key scope of a scoped model's blind-index query."""
    if isinstance(node, Plain):
        expression = node.expression
        left = getattr(expression, "left", None)
        if (
            isinstance(left, PydanticFieldInfo)
            and getattr(left, "name", None) == name
            and expression.op.name == "EQ"
            and not expression.parents
            and isinstance(expression.right, str)
        ):
            return expression.right
        return None
    if isinstance(node, Join) and node.both:
        for child in node.children:
            found = scope_equality(child, name)
            if found is not None:
                return found
    return None


def blind_leaves(node: Node) -> list[Blind]:
    if isinstance(node, Blind):
        return [node]
    if isinstance(node, Join):
        return [leaf for child in node.children for leaf in blind_leaves(child)]
    return []  # under Not there are none (refused by the parser)


@functools.cache
def _companion_field(om: ModuleType, name: str) -> Any:
    """The redis-om field a query on ``name``'s companion is rendered from."""
    field = om.FieldInfo(index=True)
    field.name = companion_name(name)
    field.annotation = str
    return field


def render(node: Node, om: ModuleType, ring: KeyRing | None, prefix: str) -> Any:
    """The redis-om expression RediSearch runs: blind conditions become companion lookups."""
    if isinstance(node, Plain):
        return node.expression
    if isinstance(node, Not):
        return ~render(node.child, om, ring, prefix)
    if isinstance(node, Join):
        join = operator.and_ if node.both else operator.or_
        parts = [render(child, om, ring, prefix) for child in node.children]
        return functools.reduce(join, parts)
    assert ring is not None
    info = domain(prefix, node.field, node.index.definition)
    tags = sorted({c for v in node.values for c in node.index.companions(ring, info, v)})
    # An empty << matches nothing: a tag no companion has (companions are hex).
    return om.Expression(
        left=_companion_field(om, node.field),
        op=om.Operators.IN,
        right=tags or ["none"],
        parents=[],
    )


def settle(node: Node, truth: Mapping[Blind, bool]) -> bool | Node:
    """``node`` with its blind conditions replaced by their exact truth: ``True``, ``False``, or
    what is left for RediSearch to decide."""
    if isinstance(node, Blind):
        return truth[node]
    if isinstance(node, Plain):
        return node
    if isinstance(node, Not):
        inner = settle(node.child, truth)
        return (not inner) if isinstance(inner, bool) else Not(inner)
    left: list[Node] = []
    for child in node.children:
        result = settle(child, truth)
        if result is (not node.both):  # False in an &, True in an |: decided
            return result
        if not isinstance(result, bool):
            left.append(result)
    if not left:
        return node.both
    return left[0] if len(left) == 1 else Join(node.both, tuple(left))
