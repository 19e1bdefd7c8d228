"""Keep-existing: masks sent back in place of secrets stand for the secrets stored for them.

A mask (``***``, or a ``UrlMask`` rendering) given where a secret goes means "keep the stored
secret". A field's path says which secret that is, except inside a list, where an item's index
is only a position: a client that removed, inserted or reordered items would attach a secret to
another item than the one it was stored with. So a mask in a list keeps the secret of the stored
item at its index only when that is certain:

- the list has as many items as the stored one; and
- either every item is as it was shown (masks that show the stored secret, the same plain
  values, the same non-secret fields), or each item holding a mask is told apart from the other
  stored items by what is shown of it: the non-secret fields of an embedded model, a ``UrlMask``
  rendering.

Anything else raises ``MaskedSecretError`` naming the field and index, before anything is set or
stored: the client must send the real value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aredis_om.model.encoders import jsonable_encoder
from aredis_om.model.model import convert_datetime_to_timestamp
from pydantic import BaseModel

from ..crypto import Kind, classify
from ..errors import MaskedSecretError, StoredTypeError, ValueTypeError, printable
from .fields import EncryptedStr, KeepExisting, is_star_mask
from .plan import FieldPath, Leaf, Many, Node, Plan, dotted, plan_for
from .policy import check_unbound
from .typed import stored_type

__all__ = ["Opener", "has_masks", "resolve_masks"]

# Decrypts a stored value found at a path of the record (audited, bound to the record).
Opener = Callable[[str, FieldPath], str]


def is_mask(value: Any, leaf: Leaf) -> bool:
    """Whether ``value`` (an encrypted field's value in an instance) is a mask to resolve."""
    if isinstance(value, KeepExisting):
        return True
    return (
        isinstance(value, str)
        and not isinstance(value, EncryptedStr)
        and leaf.mask.could_be_mask(value)
    )


def has_masks(value: Any, node: Node) -> bool:
    """Whether ``value`` holds a mask anywhere at the encrypted paths ``node`` describes."""
    if isinstance(node, Leaf):
        return is_mask(value, node)
    if isinstance(node, Many):
        return isinstance(value, list) and any(has_masks(item, node.item) for item in value)
    if isinstance(value, BaseModel):
        return any(
            has_masks(value.__dict__.get(name), sub) for name, sub in plan_for(type(value)).items()
        )
    return False


def resolve_masks(
    instance: BaseModel, plan: Plan, stored: Any, model: str, record_key: str, opener: Opener
) -> None:
    """Replace every mask of ``instance`` by the secret ``stored`` (the record as Redis holds
    it: a dict of raw values) keeps for it, or raise ``MaskedSecretError`` and change nothing."""
    resolver = _Resolver(model, record_key, opener)
    doc = stored if isinstance(stored, dict) else {}
    for name, node in plan.items():
        resolver.walk(instance, name, instance.__dict__.get(name), node, doc.get(name), (name,))
    for holder, key, value in resolver.assignments:
        if isinstance(holder, list):
            holder[key] = value
        else:
            # Straight into __dict__: no validate_assignment round, and not a user change.
            holder.__dict__[key] = value


@dataclass(slots=True)
class _Resolver:
    model: str
    record_key: str
    opener: Opener
    assignments: list[tuple[Any, Any, Any]]
    # Plaintexts of stored values already opened, by path: a value is decrypted (and audited)
    # once, however many checks look at it.
    opened: dict[FieldPath, str | None]

    def __init__(self, model: str, record_key: str, opener: Opener) -> None:
        self.model, self.record_key, self.opener = model, record_key, opener
        self.assignments = []
        self.opened = {}

    def walk(
        self, holder: Any, key: Any, value: Any, node: Node, stored: Any, path: FieldPath
    ) -> None:
        if isinstance(node, Leaf):
            if is_mask(value, node):
                self.assignments.append((holder, key, self.keep(value, node, stored, path)))
        elif isinstance(node, Many):
            if not isinstance(value, list) or not has_masks(value, node):
                return
            items = stored if isinstance(stored, list) else []
            if items:  # with nothing stored, each mask fails on its own ("no stored secret")
                self.check_shape(value, items, node.item, path)
            for i, item in enumerate(value):
                below = items[i] if i < len(items) else None
                self.walk(value, i, item, node.item, below, (*path, i))
        elif isinstance(value, BaseModel):
            doc = stored if isinstance(stored, dict) else {}
            for name, sub in plan_for(type(value)).items():
                self.walk(value, name, value.__dict__.get(name), sub, doc.get(name), (*path, name))

    # -- one secret ------------------------------------------------------------------------------

    def existing(self, stored: Any, leaf: Leaf, path: FieldPath) -> str | None:
        """The secret stored at ``path``, or ``None`` if there is none (or only a mask)."""
        if path in self.opened:
            return self.opened[path]
        raw = stored.decode("utf-8") if isinstance(stored, bytes) else stored
        plaintext: str | None = None
        if leaf.typed is not None and raw is not None and not isinstance(raw, str):
            # An Encrypted[T] value left as plaintext in a JSON document (a number, an object).
            check_unbound(raw, self.model, dotted(path), self.record_key)
            plaintext = self.text(raw, leaf, path)
            self.opened[path] = plaintext
            return plaintext
        kind = classify(raw) if isinstance(raw, str) else Kind.EMPTY
        if kind is not Kind.EMPTY and not (kind is Kind.PLAINTEXT and leaf.mask.could_be_mask(raw)):
            if kind is not Kind.ENVELOPE:
                # Plaintext or an origin v1 value, bound to no record: refused as a read would
                # refuse it, or a mask would seal a value planted in Redis into a genuine
                # envelope of this record.
                check_unbound(raw, self.model, dotted(path), self.record_key)
            # Plaintext not migrated yet is taken as it is (an Encrypted[T] value as its text).
            if kind is Kind.PLAINTEXT:
                plaintext = raw if leaf.typed is None else self.text(raw, leaf, path)
            else:
                plaintext = self.opener(raw, path)
                self.check_type(plaintext, leaf, path)
        self.opened[path] = plaintext
        return plaintext

    def text(self, raw: Any, leaf: Leaf, path: FieldPath) -> str:
        """The envelope plaintext of an ``Encrypted[T]`` value stored as plaintext."""
        assert leaf.typed is not None
        try:
            return leaf.typed.encode(raw)
        except ValueTypeError as exc:
            raise StoredTypeError(
                printable(
                    f"Decryption failed: {self.model}.{dotted(path)} of {self.record_key} is "
                    f"stored as plaintext that is not a {leaf.typed.name} ({exc})"
                ),
                model=self.model,
                record=self.record_key,
                field=dotted(path),
            ) from None

    def check_type(self, plaintext: str, leaf: Leaf, path: FieldPath) -> None:
        """Refuse to keep a stored value of another type than the field's."""
        found = stored_type(plaintext)
        wanted = leaf.type_name()
        if found != wanted:
            raise StoredTypeError(
                printable(
                    f"Decryption failed: {self.model}.{dotted(path)} of {self.record_key} holds "
                    f"a value of type {found}, not {wanted}, the type its field declares: the "
                    "field's type changed since the value was written"
                ),
                model=self.model,
                record=self.record_key,
                field=dotted(path),
            )

    def value_of(self, text: str, leaf: Leaf) -> Any:
        """The application's value of a plaintext: an ``EncryptedStr``, or a ``T``."""
        return EncryptedStr(text) if leaf.typed is None else leaf.typed.decode(text)

    def keep(self, value: Any, leaf: Leaf, stored: Any, path: FieldPath) -> Any:
        where = f"{self.model}.{dotted(path)}"
        existing = self.existing(stored, leaf, path)
        text = str.__str__(value)
        try:
            keep = leaf.mask.is_mask_of(text, existing)
        except MaskedSecretError as exc:
            raise self.error(f"{where} of {self.record_key}: {exc}", path) from None
        if not keep:
            # Not a mask after all (a UrlMask rendering of no stored URL): a new value.
            return EncryptedStr(text) if leaf.typed is None else leaf.typed.coerce(text)
        if existing is None:
            raw = stored.decode("utf-8") if isinstance(stored, bytes) else stored
            if isinstance(raw, str) and raw and leaf.mask.could_be_mask(raw):
                # The record read back holds a mask the origin's bug stored in place of the
                # secret: the mask being kept came from Redis, not necessarily from the client.
                raise self.error(
                    f"{where} of {self.record_key}: the stored value is a mask "
                    f"({_shown(raw, leaf)!r}), not a secret (the secret was lost when a mask was "
                    "stored in its place): there is no stored secret to keep; send the real value",
                    path,
                )
            raise self.error(
                f"{where}: a mask ({_shown(text, leaf)!r}) was given to keep the existing "
                f"secret, but {self.record_key} has no stored secret for it; send the real value",
                path,
            )
        return self.value_of(existing, leaf)

    # -- lists -----------------------------------------------------------------------------------

    def check_shape(self, sent: list[Any], items: list[Any], node: Node, path: FieldPath) -> None:
        """Refuse unless every mask in ``sent`` is certainly the stored item at its index."""
        masked = [i for i, item in enumerate(sent) if has_masks(item, node)]
        if len(sent) != len(items):
            self.refuse(
                path,
                masked[0],
                sent,
                node,
                f"the list has {_items(len(sent))}, the stored one {len(items)} (items were added "
                "or removed)",
            )
        if all(self.unchanged(sent[i], items[i], node, (*path, i)) for i in range(len(sent))):
            return
        for i in masked:
            item_path = (*path, i)
            if not self.agrees(sent[i], items[i], node, item_path):
                self.refuse(
                    path,
                    i,
                    sent,
                    node,
                    f"it does not show the stored item {i} (items were reordered or replaced)",
                )
            if any(
                self.agrees(sent[i], items[j], node, (*path, j))
                for j in range(len(items))
                if j != i
            ):
                self.refuse(
                    path,
                    i,
                    sent,
                    node,
                    "other items of the list changed, and what is shown of this item does not "
                    "tell it apart from the other stored items",
                )

    def unchanged(self, sent: Any, stored: Any, node: Node, path: FieldPath) -> bool:
        """Whether ``sent`` is exactly what the client was shown of ``stored``."""
        if isinstance(node, Leaf):
            if is_mask(sent, node):
                return self.shows(sent, node, stored, path)
            existing = self.existing(stored, node, path)
            if existing is None or sent is None:
                return False
            if node.typed is not None:
                try:
                    return node.typed.encode(sent) == existing
                except ValueTypeError:
                    return False
            return isinstance(sent, str) and str.__str__(sent) == existing
        if isinstance(node, Many):
            items = stored if isinstance(stored, list) else None
            return (
                isinstance(sent, list)
                and items is not None
                and len(sent) == len(items)
                and all(
                    self.unchanged(s, items[i], node.item, (*path, i)) for i, s in enumerate(sent)
                )
            )
        return self.agrees(sent, stored, node, path, strict=True)

    def agrees(
        self, sent: Any, stored: Any, node: Node, path: FieldPath, *, strict: bool = False
    ) -> bool:
        """Whether ``sent`` shows ``stored``: masks show its secrets, non-secret fields are the
        same. With ``strict``, new secret values count as differences too."""
        if isinstance(node, Leaf):
            if is_mask(sent, node):
                return self.shows(sent, node, stored, path)
            return not strict or self.unchanged(sent, stored, node, path)
        if isinstance(node, Many):
            return not strict or self.unchanged(sent, stored, node, path)
        if not isinstance(sent, BaseModel) or not isinstance(stored, dict):
            return False
        plan = plan_for(type(sent))
        plain = _plain_fields(sent, plan)
        if plain != {k: stored.get(k) for k in plain}:
            return False
        return all(
            self.agrees(
                sent.__dict__.get(name), stored.get(name), sub, (*path, name), strict=strict
            )
            for name, sub in plan.items()
        )

    def shows(self, mask: Any, leaf: Leaf, stored: Any, path: FieldPath) -> bool:
        """Whether ``mask`` is what the client was shown of the secret stored at ``path``."""
        existing = self.existing(stored, leaf, path)
        if existing is None:
            return False
        try:
            return leaf.mask.is_mask_of(str.__str__(mask), existing)
        except MaskedSecretError:
            return False

    def refuse(self, path: FieldPath, index: int, sent: list[Any], node: Node, why: str) -> None:
        name = dotted(path)
        mask = next((_shown(str.__str__(m), leaf) for m, leaf in _masks(sent[index], node)), "***")
        raise self.error(
            f"{self.model}.{name}[{index}] of {self.record_key}: the mask ({mask!r}) at index "
            f"{index} of the list {name} cannot be matched to its stored item with certainty: "
            f"{why}. A mask in a list keeps the secret of the stored item at the same index only "
            "while the list keeps its items in place; nothing was saved. Send the real value "
            "for this item",
            (*path, index),
        )

    def error(self, message: str, path: FieldPath) -> MaskedSecretError:
        # Shown printable: the record key is chosen by whoever writes to Redis.
        return MaskedSecretError(
            printable(message), model=self.model, record=self.record_key, field=dotted(path)
        )


def _masks(value: Any, node: Node) -> Iterator[tuple[Any, Leaf]]:
    if isinstance(node, Leaf):
        if is_mask(value, node):
            yield value, node
    elif isinstance(node, Many):
        if isinstance(value, list):
            for item in value:
                yield from _masks(item, node.item)
    elif isinstance(value, BaseModel):
        for name, sub in plan_for(type(value)).items():
            yield from _masks(value.__dict__.get(name), sub)


def _items(n: int) -> str:
    return f"{n} item" if n == 1 else f"{n} items"


def _shown(text: str, leaf: Leaf) -> str:
    """A mask as messages may show it: a star mask as is, anything else only as rendered."""
    return text if is_star_mask(text) else leaf.mask.render(text)


def _plain_fields(item: BaseModel, plan: Plan) -> dict[str, Any]:
    """The non-secret fields of an embedded model, as redis-om stores them in JSON."""
    fields = type(item).model_fields
    names = {name for name, field in fields.items() if name not in plan and not field.exclude}
    data = item.model_dump(include=names)
    converted = convert_datetime_to_timestamp(data)  # type: ignore[no-untyped-call]
    encoded: dict[str, Any] = jsonable_encoder(converted)
    return encoded
