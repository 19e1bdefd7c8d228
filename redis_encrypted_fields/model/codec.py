"""One record's values on their way in and out of Redis: what validation opens (``Opener``,
and ``Page`` for a ``find()`` page), what ``model_dump()`` seals (``Sealer``), and the policy
for plaintext found in Redis. ``EncryptedModel`` (``mixin``) calls these at redis-om's hooks,
with the class's facts (``field_map``).
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from redis_om.search_reply import string_keyed, to_string

from ..audit import audit_enabled
from ..crypto import (
    PREFIX,
    Kind,
    binding_part,
    classify,
    open_value,
    seal_value,
    writes_v1,
)
from ..errors import (
    DecryptionError,
    EncryptionError,
    MaskedSecretError,
    StoredMaskError,
    StoredTypeError,
    ValueTypeError,
    printable,
)
from ..keys import KeyRing
from .field_map import Facts
from .fields import (
    EncryptedStr,
    KeepExisting,
    Mask,
    Pending,
    is_star_mask,
)
from .plan import (
    FieldPath,
    Leaf,
    Many,
    Node,
    Plan,
    dotted,
    plan_for,
)
from .policy import (
    check_input,
    check_unbound,
    checked_keyring,
    plaintext_allowed,
)
from .scope import ScopeField, scope_ring
from .typed import TAG, Opened, stored_type

__all__ = [
    "Opener",
    "Page",
    "Sealer",
    "check_stored_key",
    "open_stored",
    "opened",
]

log = logging.getLogger("redis_encrypted_fields")

# Plaintexts that search has just decrypted (and audited) to filter candidates, by (record key,
# field, envelope): the records it returns are built without opening those values again.
opened: contextvars.ContextVar[Mapping[tuple[str, str, str], str] | None] = contextvars.ContextVar(
    "ref_opened", default=None
)


class Opener:
    """Turns raw input at encrypted paths into ``EncryptedStr`` values, record by record.

    One serves a whole read from Redis (a ``get``, a page of ``find`` results): the key ring,
    the audit switch and the class's key prefix are looked up once per read, not per record or
    value. Outside reads, one serves one record.
    """

    __slots__ = (
        "_auditing",
        "_first",
        "_keyring",
        "_name",
        "_prefix",
        "_record_part",
        "_scope",
        "_scope_value",
        "_seen",
        "known",
        "model",
        "reading",
        "record_key",
    )

    def __init__(self, model: Any, reading: bool) -> None:
        self.model = model
        self._name: str = model.__name__
        self.reading = reading
        self.known = opened.get()  # plaintexts that search has decrypted already
        self._prefix: str | None = model._ref_key_prefix()
        self._keyring: KeyRing | None = None  # looked up when the first value is opened
        self._auditing: bool | None = None
        self.record_key: str | None = None
        self._record_part: bytes | None = None  # the record's half of every binding
        self._scope: ScopeField | None = None  # a scoped model's: the ring is per record
        self._scope_value: Any = None
        # Records of this read seen already, and whether the one in hand is new: values of an
        # Encrypted[T] field that are not text (a JSON number) are plaintext found in Redis only
        # at a record's first validation; at the next (redis-om validates twice) they are the
        # values this opener decoded.
        self._seen: set[str] = set()
        self._first = True

    def record(
        self, raw: dict[str, Any], facts: Facts, *, own: bool = False, key: str | None = None
    ) -> dict[str, Any]:
        """A record's input with the values at its encrypted paths opened: in a new dict, or in
        ``raw`` itself when it is the opener's ``own`` (a document it has just parsed).

        ``key``: the Redis key the record was read from (a search reply names it), which its
        values are bound to; its stored primary key must agree (``check_stored_key``).
        """
        pk = raw.get(facts.pk_name) if facts.pk_name is not None else None
        record_key = None
        if key is not None:
            record_key = self.key_of(key, pk)
        elif pk not in (None, ""):
            prefix = self._prefix
            record_key = f"{prefix}{pk}" if prefix is not None else self.model._ref_key(pk)
        self.record_key, self._record_part = record_key, None
        scope = facts.scope
        if scope is not None:
            # The record's scope names its ring: looked up per record (cached per scope).
            self._scope, self._scope_value, self._keyring = scope, raw.get(scope.name), None
        if record_key is not None:
            seen = self._seen
            self._first = record_key not in seen
            seen.add(record_key)
        else:
            self._first = True
        out = raw if own else dict(raw)
        known, name_of_model = self.known, self._name
        reader: tuple[KeyRing, bool, bytes] | None = None  # at the record's first envelope
        for name, node, part in facts.opening:
            value = out.get(name)
            if value is None:
                continue
            if (
                type(value) is str
                and record_key is not None
                and type(node) is Leaf
                and value.startswith(PREFIX)
            ):
                # A current envelope in a top-level field: every read's common case, opened
                # here with one call per value (the prefix is what ``classify`` tells an
                # envelope by; ``open_current`` does the same for the other paths).
                plaintext = None if known is None else known.get((record_key, name, value))
                if plaintext is None:
                    if reader is None:
                        reader = self.reader(record_key)
                    keyring, auditing, record_part = reader
                    context = record_part + part
                    plaintext = open_value(
                        value, keyring, context, auditing, name_of_model, name, record_key
                    )
                if node.typed is None and not plaintext.startswith(TAG):
                    out[name] = EncryptedStr(plaintext)
                else:
                    out[name] = self.text_value(plaintext, node, (name,))
            else:
                out[name] = self.value(value, node, (name,))
        if facts.is_hash:
            # A cleared secret is stored as "" in a hash; redis-om maps "" back to None only for
            # typing.Optional, not for `X | None`.
            for name in facts.nullable:
                if out.get(name) == "":
                    out[name] = None
        return out

    def unseen(self, raw: dict[str, Any], facts: Facts) -> bool:
        """Whether the record ``raw`` has not been opened by this read yet (see ``record``)."""
        pk = raw.get(facts.pk_name) if facts.pk_name is not None else None
        prefix = self._prefix
        if pk in (None, "") or prefix is None:
            return True
        return f"{prefix}{pk}" not in self._seen

    def key_of(self, key: str, pk: Any) -> str:
        """``key``, the Redis key a record was read from, once its stored primary key is
        checked against it (``check_stored_key``)."""
        prefix = self._prefix
        if prefix is not None and type(pk) is str and pk and key == f"{prefix}{pk}":
            return key  # the common case, without a method call
        return check_stored_key(self.model, key, pk)

    def item(self, item: Any, facts: Facts, knn: Any) -> Any:
        """One result of an FT.SEARCH reply (redis-py's dict form) with its record's values
        opened and bound to the key the reply names, in the form redis-om's ``from_redis``
        reads: a JSON document is given parsed, as a hash's fields are, which redis-om builds
        the same way (a KNN query's score beside it, as redis-om adds it)."""
        if type(item) is not dict or type(fields := item.get("extra_attributes")) is not dict:
            item = string_keyed(item)
            fields = item.get("extra_attributes")
            if not isinstance(fields, Mapping):
                return item  # no content (expired meanwhile): redis-om skips it
            fields = {to_string(k): to_string(v) for k, v in fields.items()}
        key = to_string(item.get("id"))
        if type(key) is not str:
            key = ""  # a reply without the key: refused as a key that does not match
        document = fields.get("$")
        if not document or type(document) is not str:
            return {
                "id": key,
                "extra_attributes": self.boxed(self.record(fields, facts, key=key), facts),
            }
        parsed = json.loads(document)
        if type(parsed) is not dict:
            raise DecryptionError(
                f"Decryption failed: {key!r} holds a JSON document that is not an object",
                model=self.model.__name__,
                record=key,
            )
        if knn is not None:
            parsed[knn.score_field_name] = fields.get(knn.score_field_name)
        opened = self.record(parsed, facts, own=True, key=key)
        return {"id": key, "extra_attributes": self.boxed(opened, facts)}

    @staticmethod
    def boxed(record: dict[str, Any], facts: Facts) -> dict[str, Any]:
        """``record`` with its decrypted ``Encrypted[T]`` values boxed (``Opened``): redis-om
        converts a reply's values before it builds the record (bytes to text)."""
        for name in facts.typed:
            value = record.get(name)
            if value is not None and type(value) is not str:
                record[name] = Opened(value)
        return record

    def open_current(
        self, raw: str, field: str, record_key: str, field_part: bytes | None = None
    ) -> str:
        """Decrypt a current envelope at ``field`` (a dotted path) of this record, audited;
        ``field_part``: the field's half of the binding, if the caller has it."""
        known = self.known
        if known is not None:
            plaintext = known.get((record_key, field, raw))
            if plaintext is not None:
                return plaintext
        keyring, auditing, record_part = self.reader(record_key)
        if field_part is None:
            field_part = _field_binding(field)
        return open_value(
            raw, keyring, record_part + field_part, auditing, self._name, field, record_key
        )

    def reader(self, record_key: str) -> tuple[KeyRing, bool, bytes]:
        """What opening this record's values needs: the key ring and the audit switch (looked
        up once per read) and the record's half of every binding (once per record)."""
        record_part = self._record_part
        if record_part is None:
            record_part = self._record_part = binding_part(record_key)
        keyring = self._keyring
        if keyring is None:
            keyring = checked_keyring()
            scope = self._scope
            if scope is not None:
                keyring = scope_ring(
                    self.model, scope, self._scope_value, keyring, record_key, create=False
                )
            self._keyring = keyring
        auditing = self._auditing
        if auditing is None:
            auditing = self._auditing = audit_enabled()
        return keyring, auditing, record_part

    def text_value(self, text: str, leaf: Leaf, path: FieldPath) -> Any:
        """The application's value of a decrypted plaintext at ``path``: an ``EncryptedStr``, or
        the ``T`` of an ``Encrypted[T]`` field; ``StoredTypeError`` if it holds another type."""
        typed = leaf.typed
        if typed is None:
            found = stored_type(text)
            if found == "str":
                return EncryptedStr(text)
            why = f"holds a value of type {found}, not str"
        else:
            try:
                return typed.decode(text)
            except ValueTypeError as exc:
                why = str(exc)
        raise self.error(
            StoredTypeError,
            path,
            f"Decryption failed: {{where}} {why}, the type its field declares: the field's type "
            "changed since the value was written. Read it through a model with the old type and "
            "save it through the new one",
        )

    def value(self, raw: Any, node: Node, path: FieldPath) -> Any:
        if isinstance(node, Leaf):
            if type(raw) is str:
                return self.leaf(raw, node, path)
            if node.typed is not None and raw is not None and self.reading and self._first:
                # Not text: plaintext left by older code (a JSON number), as a read finds it.
                self.plain_read(raw, path)
            return raw
        if isinstance(node, Many):
            if isinstance(raw, list):
                return [self.value(item, node.item, (*path, i)) for i, item in enumerate(raw)]
            return raw
        if isinstance(raw, dict):
            return self.fields(raw, plan_for(node.model), path)
        return raw

    def fields(self, raw: dict[str, Any], plan: Plan, path: FieldPath) -> dict[str, Any]:
        out = dict(raw)
        for name, node in plan.items():
            if name in out:
                out[name] = self.value(out[name], node, (*path, name))
        return out

    def leaf(self, raw: str, leaf: Leaf, path: FieldPath) -> Any:
        kind = classify(raw)
        if kind is Kind.EMPTY:
            # How a hash stores a cleared secret: no secret, nothing to decrypt or warn about.
            return raw
        record_key = self.record_key
        if kind is Kind.ENVELOPE and record_key is not None:
            return self.text_value(self.open_current(raw, dotted(path), record_key), leaf, path)
        model, field = self.model.__name__, dotted(path)
        if kind is Kind.LEGACY:
            if not self.reading:
                check_input(raw, model, field, record_key)
            check_unbound(raw, model, field, record_key)
            return self.text_value(open_stored(raw, model, path, record_key), leaf, path)
        if kind is Kind.ENVELOPE:  # without the record's key
            raise self.error(
                DecryptionError,
                path,
                f"Decryption failed: {{where}} was given a value starting with {PREFIX!r}, the "
                "prefix of this library's envelopes, without the primary key of the record it "
                "was encrypted for, so it cannot be checked against it. Pass the pk with it "
                f"(a secret itself cannot start with {PREFIX!r})",
            )
        if leaf.mask.could_be_mask(raw):
            if self.reading:
                self.stored_mask(raw, leaf, path)
            return KeepExisting(raw)
        if self.reading:
            self.plain_read(raw, path)
        # A T's text ("5000") is validated as the field's type by the field itself.
        return EncryptedStr(raw) if leaf.typed is None else raw

    def plain_read(self, raw: Any, path: FieldPath) -> None:
        """Plaintext read from Redis at ``path``: refused while plaintext reads are, else taken
        with a warning (it is encrypted on the next save)."""
        check_unbound(raw, self.model.__name__, dotted(path), self.record_key)
        log.warning(
            "%s is stored as plaintext; it will be encrypted on the next save",
            self.located(path),
        )

    def stored_mask(self, raw: str, leaf: Leaf, path: FieldPath) -> None:
        """A mask read from Redis: the origin's bug stored masks as secrets, which are lost."""
        # A star mask is shown as is; anything else (a URL) only as rendered, credential-free.
        shown = raw if is_star_mask(raw) else leaf.mask.render(raw)
        message = (
            f"{{where}} holds a mask ({shown!r}), not a secret: the secret was lost when the "
            "mask was stored in its place. Set the real secret on this record"
        )
        if not plaintext_allowed():
            raise self.error(StoredMaskError, path, f"Decryption failed: {message}")
        log.warning(message.format(where=self.located(path)))

    def error(self, kind: type[EncryptionError], path: FieldPath, message: str) -> EncryptionError:
        """An error about the value at ``path`` of this record, naming it."""
        model, field, record = self.model.__name__, dotted(path), self.record_key
        return kind(
            message.format(where=self.located(path)), model=model, record=record, field=field
        )

    def located(self, path: FieldPath) -> str:
        """The value named for a message or a log line: the record key is chosen by whoever
        writes to Redis, so it is shown ``printable`` (a newline in it must not start a line)."""
        where = self.where(path)
        return printable(f"{where} of {self.record_key}" if self.record_key else where)

    def where(self, path: FieldPath) -> str:
        return f"{self.model.__name__}.{dotted(path)}"


class Page(Sequence[Any]):
    """The results of an FT.SEARCH reply, as ``from_redis`` reads them: each record's values
    opened when it is read.

    redis-om collects a page's documents before it builds any record, so the page's envelopes
    are opened back to back (the cipher's code and data stay in the processor's caches), and
    each opened copy is dropped as soon as redis-om has copied it: no second copy of the page
    is kept alive for the garbage collector to scan.
    """

    __slots__ = ("_facts", "_knn", "_opener", "_results")

    def __init__(self, results: list[Any], opener: Opener, facts: Facts, knn: Any) -> None:
        self._results, self._opener, self._facts, self._knn = results, opener, facts, knn

    def __len__(self) -> int:
        return len(self._results)

    @typing.overload
    def __getitem__(self, index: int) -> Any: ...
    @typing.overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._results)))]
        return self._opener.item(self._results[index], self._facts, self._knn)


def check_stored_key(model: Any, key: str, pk: Any) -> str:
    """``key``, the Redis key a search reply names for a record of ``model``, if the primary key
    stored in the record makes that key; else ``DecryptionError`` naming the key.

    redis-om builds a search result from its stored fields, ``pk`` included, and ignores the key
    it came from: a record copied to another key (with a victim's envelopes and ``pk``) would
    otherwise be opened under the victim's binding, and saved or deleted at the victim's key.
    """
    if pk not in (None, "") and model._ref_key(pk) == key:
        return key
    stored = "no primary key" if pk in (None, "") else "the primary key of another record"
    raise DecryptionError(
        f"Decryption failed: the record at {key!r} holds {stored}, so its values are not "
        "bound to it (a record copied to another key is refused)",
        model=model.__name__,
        record=key,
    )


def open_stored(
    raw: str,
    model: str,
    path: FieldPath,
    record_key: str | None,
    keyring: KeyRing | None = None,
) -> str:
    """Decrypt a stored value (current or origin v1) of one record's field, audited.

    ``record_key`` is ``None`` only for an origin v1 value, which is not bound to a record.
    ``keyring``: the record's scope's ring, for a model with a ``KeyScope``.
    """
    field = dotted(path)
    context = _bound(record_key, field) if record_key is not None else b""
    ring = checked_keyring() if keyring is None else keyring
    return open_value(raw, ring, context, model=model, field=field, record=record_key)


@functools.lru_cache(maxsize=1024)
def _field_binding(field: str) -> bytes:
    return binding_part(field)


def _bound(record_key: str, field: str) -> bytes:
    """``binding(record_key, field)``, with the field's half computed once per field."""
    return binding_part(record_key) + _field_binding(field)


class Sealer:
    """Seals the values of one record, bound to it; the record's half of the binding and the
    key ring are looked up once per record, not per value."""

    __slots__ = ("_auditing", "_keyring", "_record_part", "_scoped", "_v1", "model", "record_key")

    def __init__(
        self, model: str, record_key: str, scoped: tuple[Any, ScopeField, Any] | None = None
    ) -> None:
        self.model = model
        self.record_key = record_key
        # A scoped model's record: (its class, its scope field, the field's value).
        self._scoped = scoped
        self._record_part: bytes | None = None
        self._keyring: KeyRing | None = None
        self._auditing: bool | None = None
        self._v1 = False  # REDIS_SRE_WRITE_FORMAT=v1, looked up with the key ring

    def seal(self, value: str, mask: Mask, field: str) -> str:
        """``value`` sealed bound to this record and ``field`` (a dotted path)."""
        if type(value) is not EncryptedStr and (
            isinstance(value, KeepExisting)
            or (not isinstance(value, EncryptedStr) and mask.could_be_mask(value))
        ):
            raise MaskedSecretError(
                f"{printable(f'{field} of {self.record_key}')} holds a mask, not a secret; "
                "save() keeps the stored secret for a mask, model_dump() cannot"
            )
        record_part = self._record_part
        if record_part is None:
            record_part = self._record_part = binding_part(self.record_key)
        keyring = self._keyring
        if keyring is None:
            keyring = checked_keyring()  # also refuses the switches' conflict
            scoped = self._scoped
            if scoped is not None:
                cls, scope, scope_value = scoped
                keyring = scope_ring(cls, scope, scope_value, keyring, self.record_key, create=True)
                self._v1 = False  # a scope key has no v1 format
            else:
                self._v1 = writes_v1()
            self._keyring = keyring
        auditing = self._auditing
        if auditing is None:
            auditing = self._auditing = audit_enabled()
        context = record_part + _field_binding(field)
        record_key = self.record_key
        return seal_value(
            value, keyring, context, auditing, self.model, field, record_key, self._v1
        )

    def tree(self, obj: Any, path: FieldPath) -> None:
        """Replace every ``Pending`` in a dumped tree by an envelope bound to its path."""
        items: Any = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for slot, value in list(items):
            if isinstance(value, Pending):
                obj[slot] = self.seal(value.value, value.mask, dotted((*path, slot)))
            elif isinstance(value, (dict, list)):
                self.tree(value, (*path, slot))
