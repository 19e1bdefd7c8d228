"""``EncryptedModel``: the redis-om integration (record binding, keep-existing, clearing, reads).

Listed first in a model's bases, the mixin hooks the points where redis-om moves data:

- validation (``get``, ``find``, construction, ``check()`` inside ``save``): envelopes at the
  encrypted paths of the input are opened with the record's key and field path as associated data;
  a mask becomes ``KeepExisting``; plaintext read from Redis is accepted with a warning (migration)
  or refused (``set_plaintext_reads(False)``);
- ``model_dump()`` in python mode (what redis-om persists): values are sealed bound to the record;
- ``save()``: masks are replaced by the stored secrets before anything is written; a ``None``
  encrypted field of a ``HashModel`` overwrites the stored secret instead of leaving it behind;
  a field with a ``BlindIndex`` gets its companion written beside it (``blind_index``);
- ``find()`` and ``redisearch_schema()``: search on blind-indexed fields (``search``).
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import aredis_om
import redis_om
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError
from pydantic_core.core_schema import ValidatorFunctionWrapHandler

from ._driver import Steps, run_async, run_sync
from .api import decrypt_stored
from .audit import audit_enabled, track
from .blind_index import BlindIndex, SearchSpec, with_companions, write_companions
from .envelope import PREFIX, binding_part, looks_like_envelope, open_envelope, seal
from .errors import (
    ConfigurationError,
    DecryptionError,
    EncryptionError,
    MaskedSecretError,
    PlaintextSecretError,
    StoredMaskError,
    located,
)
from .fields import (
    DEFER,
    EncryptedStr,
    KeepExisting,
    Mask,
    Pending,
    is_star_mask,
    model_scope,
)
from .keep import has_masks, resolve_masks
from .keys import KeyRing, get_keyring
from .legacy import parse_legacy
from .plan import (
    FieldPath,
    Leaf,
    Many,
    Node,
    Plan,
    check_not_indexed,
    declared_index_flags,
    dotted,
    encrypted_paths,
    forget,
    plan_for,
)

__all__ = [
    "ENV_REJECT_PLAINTEXT",
    "EncryptedModel",
    "FieldPath",
    "encrypted_paths",
    "set_plaintext_reads",
]

log = logging.getLogger("redis_encrypted_fields")

ENV_REJECT_PLAINTEXT = "REDIS_SRE_REJECT_PLAINTEXT"


# --- policy: plaintext found in Redis ---------------------------------------------------------

_plaintext_reads: bool | None = None


def set_plaintext_reads(allowed: bool | None) -> None:
    """Accept plaintext read from Redis (migration) or refuse it; ``None``: from the environment.

    By default plaintext is accepted with a warning unless ``REDIS_SRE_REJECT_PLAINTEXT`` is
    ``1``/``true``/``yes``/``on``; another value than those and ``0``/``false``/``no``/``off``
    raises ``ConfigurationError`` when the switch is consulted.
    """
    global _plaintext_reads
    _plaintext_reads = allowed


_ON = frozenset(("1", "true", "yes", "on"))
_OFF = frozenset(("", "0", "false", "no", "off"))


def _plaintext_allowed() -> bool:
    if _plaintext_reads is not None:
        return _plaintext_reads
    text = os.environ.get(ENV_REJECT_PLAINTEXT, "")
    flag = text.strip().lower()
    if flag in _ON:
        return False
    if flag not in _OFF:
        # A typo must not silently leave plaintext reads on. (The value is a switch, not a
        # secret: it may be shown.)
        raise ConfigurationError(
            f"{ENV_REJECT_PLAINTEXT}={text[:40]!r} is not a valid switch: use 1, true, yes or on "
            "to refuse plaintext read from Redis; 0, false, no, off or unset to accept it"
        )
    return True


# --- the mixin --------------------------------------------------------------------------------

# The instance whose save() is running: its model_dump() then writes what a save must write.
_saving: contextvars.ContextVar[object] = contextvars.ContextVar("ref_saving", default=None)
# Plaintexts that search has just decrypted (and audited) to filter candidates, by (record key,
# field, envelope): the records it returns are built without opening those values again.
opened: contextvars.ContextVar[Mapping[tuple[str, str, str], str] | None] = contextvars.ContextVar(
    "ref_opened", default=None
)

# While a model is being built from data read from Redis (get, find): the read's _Opener (or
# True).
_reading: contextvars.ContextVar[_Opener | bool] = contextvars.ContextVar(
    "ref_reading", default=False
)


class _Opener:
    """Turns raw input at encrypted paths into ``EncryptedStr`` values, record by record.

    One serves a whole read from Redis (a ``get``, a page of ``find`` results): the key ring,
    the audit switch and the class's key prefix are looked up once per read, not per record or
    value. Outside reads, one serves one record.
    """

    __slots__ = (
        "_auditing",
        "_keyring",
        "_prefix",
        "_record_part",
        "known",
        "model",
        "reading",
        "record_key",
    )

    def __init__(self, model: Any, reading: bool) -> None:
        self.model = model
        self.reading = reading
        self.known = opened.get()  # plaintexts that search has decrypted already
        self._prefix: str | None = model._ref_key_prefix()
        self._keyring: KeyRing | None = None  # looked up when the first value is opened
        self._auditing: bool | None = None
        self.record_key: str | None = None
        self._record_part: bytes | None = None  # the record's half of every binding

    def record(self, raw: dict[str, Any], facts: _Facts, *, own: bool = False) -> dict[str, Any]:
        """A record's input with the values at its encrypted paths opened: in a new dict, or in
        ``raw`` itself when it is the opener's ``own`` (a document it has just parsed)."""
        pk = raw.get(facts.pk_name) if facts.pk_name is not None else None
        record_key = None
        if pk not in (None, ""):
            prefix = self._prefix
            record_key = f"{prefix}{pk}" if prefix is not None else self.model._ref_key(pk)
        self.record_key, self._record_part = record_key, None
        out = raw if own else dict(raw)
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
                # A current envelope in a top-level field: every read's common case.
                out[name] = EncryptedStr(self.open_current(value, name, record_key, part))
            else:
                out[name] = self.value(value, node, (name,))
        if facts.is_hash:
            # A cleared secret is stored as "" in a hash; redis-om maps "" back to None only for
            # typing.Optional, not for `X | None`.
            for name in facts.nullable:
                if out.get(name) == "":
                    out[name] = None
        return out

    def item(self, item: Any, facts: _Facts, knn: Any) -> Any:
        """One result of an FT.SEARCH reply (redis-py's dict form) with its record's values
        opened, in the form redis-om's ``from_redis`` reads: a JSON document is given parsed,
        as a hash's fields are, which redis-om builds the same way. What this does not read is
        returned as it is, for the record's validation to open."""
        fields = item.get("extra_attributes") if type(item) is dict else None
        if type(fields) is not dict:
            return item
        document = fields.get("$")
        if document is None:
            return {**item, "extra_attributes": self.record(fields, facts)}
        if document and type(document) is str and knn is None:
            parsed = json.loads(document)
            if type(parsed) is dict:
                return {**item, "extra_attributes": self.record(parsed, facts, own=True)}
        return item

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
        record_part = self._record_part
        if record_part is None:
            record_part = self._record_part = binding_part(record_key)
        keyring = self._keyring
        if keyring is None:
            keyring = self._keyring = get_keyring()
        try:
            if field_part is None:
                field_part = _field_binding(field)
            plaintext = open_envelope(raw, keyring, record_part + field_part)
        except DecryptionError as exc:
            model = self.model.__name__
            track("decrypt", model=model, field=field, record=record_key, envelope=raw, error=exc)
            raise located(exc, model, field, record_key) from None
        auditing = self._auditing
        if auditing is None:
            auditing = self._auditing = audit_enabled()
        if auditing:
            model = self.model.__name__
            track("decrypt", model=model, field=field, record=record_key, envelope=raw)
        return plaintext

    def value(self, raw: Any, node: Node, path: FieldPath) -> Any:
        if isinstance(node, Leaf):
            return self.leaf(raw, node, path) if type(raw) is str else raw
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

    def leaf(self, raw: str, leaf: Leaf, path: FieldPath) -> EncryptedStr | str:
        if raw == "":
            # How a hash stores a cleared secret: no secret, nothing to decrypt or warn about.
            return raw
        record_key = self.record_key
        if record_key is not None and raw.startswith(PREFIX):
            return EncryptedStr(self.open_current(raw, dotted(path), record_key))
        legacy = parse_legacy(raw) is not None
        if legacy and self.reading and not _plaintext_allowed():
            # Origin v1 values carry no record binding: once migration is declared finished,
            # they are refused like plaintext (an old backup's values could be planted anywhere).
            raise self.error(
                PlaintextSecretError,
                path,
                "Decryption failed: {where} is stored in the origin's v1 format (not bound to its "
                "record) and plaintext reads are disabled; run `redis-encrypted-fields migrate`",
            )
        if legacy or looks_like_envelope(raw):
            if record_key is None and not legacy:
                raise self.error(
                    DecryptionError,
                    path,
                    f"Decryption failed: {{where}} was given a value starting with {PREFIX!r}, the "
                    "prefix of this library's envelopes, without the primary key of the record it "
                    "was encrypted for, so it cannot be checked against it. Pass the pk with it "
                    f"(a secret itself cannot start with {PREFIX!r})",
                )
            return EncryptedStr(open_stored(raw, self.model.__name__, path, record_key))
        if leaf.mask.could_be_mask(raw):
            if self.reading:
                self.stored_mask(raw, leaf, path)
            return KeepExisting(raw)
        if self.reading:
            if not _plaintext_allowed():
                raise self.error(
                    PlaintextSecretError,
                    path,
                    "Decryption failed: {where} is stored as plaintext and plaintext reads are "
                    "disabled; run `redis-encrypted-fields migrate`",
                )
            log.warning(
                "%s of %s is stored as plaintext; it will be encrypted on the next save",
                self.where(path),
                record_key,
            )
        return EncryptedStr(raw)

    def stored_mask(self, raw: str, leaf: Leaf, path: FieldPath) -> None:
        """A mask read from Redis: the origin's bug stored masks as secrets, which are lost."""
        # A star mask is shown as is; anything else (a URL) only as rendered, credential-free.
        shown = raw if is_star_mask(raw) else leaf.mask.render(raw)
        message = (
            f"{{where}} holds a mask ({shown!r}), not a secret: the secret was lost when the "
            "mask was stored in its place. Set the real secret on this record"
        )
        if not _plaintext_allowed():
            raise self.error(StoredMaskError, path, f"Decryption failed: {message}")
        log.warning(message.format(where=self.located(path)))

    def error(self, kind: type[EncryptionError], path: FieldPath, message: str) -> EncryptionError:
        """An error about the value at ``path`` of this record, naming it."""
        model, field, record = self.model.__name__, dotted(path), self.record_key
        return kind(
            message.format(where=self.located(path)), model=model, record=record, field=field
        )

    def located(self, path: FieldPath) -> str:
        where = self.where(path)
        return f"{where} of {self.record_key}" if self.record_key else where

    def where(self, path: FieldPath) -> str:
        return f"{self.model.__name__}.{dotted(path)}"


class _Page(Sequence[Any]):
    """The results of an FT.SEARCH reply, as ``from_redis`` reads them: each record's values
    opened when it is read.

    redis-om collects a page's documents before it builds any record, so the page's envelopes
    are opened back to back (the cipher's code and data stay in the processor's caches), and
    each opened copy is dropped as soon as redis-om has copied it: no second copy of the page
    is kept alive for the garbage collector to scan.
    """

    __slots__ = ("_facts", "_knn", "_opener", "_results")

    def __init__(self, results: list[Any], opener: _Opener, facts: _Facts, knn: Any) -> None:
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


def open_stored(raw: str, model: str, path: FieldPath, record_key: str | None) -> str:
    """Decrypt a stored value (current or origin v1) of one record's field, audited.

    ``record_key`` is ``None`` only for an origin v1 value, which is not bound to a record.
    """
    field = dotted(path)
    context = _bound(record_key, field) if record_key is not None else b""
    return decrypt_stored(raw, context=context, model=model, field=field, record=record_key)


@functools.lru_cache(maxsize=1024)
def _field_binding(field: str) -> bytes:
    return binding_part(field)


def _bound(record_key: str, field: str) -> bytes:
    """``binding(record_key, field)``, with the field's half computed once per field."""
    return binding_part(record_key) + _field_binding(field)


class _Shown:
    """Shows a given text as its repr."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


_MASKED = _Shown(repr(EncryptedStr()))


def _masked(value: Any, node: Node) -> Any:
    """``value`` for repr(), with every secret at an encrypted path shown masked."""
    if isinstance(node, Leaf):
        masked = isinstance(value, str) and not isinstance(value, KeepExisting)
        return _MASKED if masked else value
    if isinstance(node, Many):
        return [_masked(v, node.item) for v in value] if isinstance(value, list) else value
    if isinstance(value, BaseModel):
        plan = plan_for(type(value))
        args = ", ".join(
            repr(v) if k is None else f"{k}={_masked(v, plan[k]) if k in plan else v!r}"
            for k, v in value.__repr_args__()
        )
        return _Shown(f"{type(value).__name__}({args})")
    return value


def _without_input(exc: ValidationError) -> ValidationError:
    """The same errors without their inputs: ``errors()`` and ``json()`` would otherwise carry
    them, and for a missing field the input is the whole record, secrets included."""
    return ValidationError.from_exception_data(
        exc.title,
        [
            {
                "type": PydanticCustomError(e["type"], e["msg"]),
                "loc": e["loc"],
                "input": None,
            }
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ],
        hide_input=True,
    )


class _Sealer:
    """Seals the values of one record, bound to it; the record's half of the binding and the
    key ring are looked up once per record, not per value."""

    __slots__ = ("_auditing", "_keyring", "_record_part", "model", "record_key")

    def __init__(self, model: str, record_key: str) -> None:
        self.model = model
        self.record_key = record_key
        self._record_part: bytes | None = None
        self._keyring: KeyRing | None = None
        self._auditing: bool | None = None

    def seal(self, value: str, mask: Mask, field: str) -> str:
        """``value`` sealed bound to this record and ``field`` (a dotted path)."""
        if type(value) is not EncryptedStr and (
            isinstance(value, KeepExisting)
            or (not isinstance(value, EncryptedStr) and mask.could_be_mask(value))
        ):
            raise MaskedSecretError(
                f"{field} of {self.record_key} holds a mask, not a secret; save() keeps "
                "the stored secret for a mask, model_dump() cannot"
            )
        record_part = self._record_part
        if record_part is None:
            record_part = self._record_part = binding_part(self.record_key)
        keyring = self._keyring
        if keyring is None:
            keyring = self._keyring = get_keyring()
        envelope = seal(value, keyring, record_part + _field_binding(field))
        auditing = self._auditing
        if auditing is None:
            auditing = self._auditing = audit_enabled()
        if auditing:
            key_id = keyring.current.key_id
            track("encrypt", model=self.model, field=field, record=self.record_key, key_id=key_id)
        return envelope

    def tree(self, obj: Any, path: FieldPath) -> None:
        """Replace every ``Pending`` in a dumped tree by an envelope bound to its path."""
        items: Any = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for slot, value in list(items):
            if isinstance(value, Pending):
                obj[slot] = self.seal(value.value, value.mask, dotted((*path, slot)))
            elif isinstance(value, (dict, list)):
                self.tree(value, (*path, slot))


@dataclass(frozen=True, slots=True)
class _Facts:
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
    # Encrypted fields that model_dump() may seal straight from the instance (see there), or
    # None when the class has anything that could change how they dump.
    direct: frozenset[str] | None
    # The fields in dump order, each with its Leaf if model_dump() seals it from the instance.
    layout: tuple[tuple[str, Leaf | None], ...]
    search: SearchSpec  # blind indexes
    # How redis-om makes a record's key, when the class uses its default way ("{prefix}{pk}"):
    # (_meta, its global_key_prefix, model_key_prefix and primary_key_pattern, the prefix).
    keys: tuple[Any, Any, Any, Any, str] | None


_facts: dict[type, _Facts] = {}


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


def _facts_for(cls: Any) -> _Facts:
    facts = _facts.get(cls)
    if facts is None:
        # Worked out on first use, not at class creation: redis-om fills ``_meta`` after pydantic
        # has completed the class.
        plan = plan_for(cls)
        meta = getattr(cls, "_meta", None)
        embedded = bool(getattr(meta, "embedded", False))
        fields = cls.model_fields
        direct = frozenset(plan) if _dumps_plainly(cls, plan) else None
        facts = _Facts(
            plan=plan,
            flat=all(isinstance(node, Leaf) for node in plan.values()),
            embedded=embedded,
            opens=bool(plan) and not embedded,
            is_hash=issubclass(cls, (aredis_om.HashModel, redis_om.HashModel)),
            opening=tuple((n, node, _field_binding(n)) for n, node in plan.items()),
            pk_name=None if embedded or meta is None else str(meta.primary_key.name),
            nullable=frozenset(n for n in plan if _allows_none(fields[n].annotation)),
            direct=direct,
            layout=tuple((n, typing.cast(Leaf | None, plan.get(n))) for n in fields),
            keys=_key_parts(cls, meta),
            search=_search_spec(plan),
        )
        _facts[cls] = facts
    return facts


def _search_spec(plan: Plan) -> SearchSpec:
    blind = {n: x.blind for n, x in plan.items() if isinstance(x, Leaf) and x.blind is not None}
    return SearchSpec.of(blind, plan)


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


def _needs_opening(data: dict[str, Any], plan: Plan) -> bool:
    """Whether validating ``data`` has anything to open: a ``str`` (not yet an ``EncryptedStr``)
    at an encrypted field, or a container that may hold one. Not so when redis-om re-validates
    an instance (``check()``, and its ``__init__`` inside every validation)."""
    for name, node in plan.items():
        value = data.get(name)
        if type(value) is str:
            return True
        if not isinstance(node, Leaf) and isinstance(value, (dict, list)):
            return True
    return False


class EncryptedModel:
    """Mixin for redis-om models with ``EncryptedStr`` fields; list it first in the bases.

    ``class RedisInstance(EncryptedModel, HashModel, index=True): ...``
    """

    # Validation errors of a model that holds secrets must not echo its input.
    model_config: ClassVar[ConfigDict] = ConfigDict(hide_input_in_errors=True)

    __ref_async__: ClassVar[bool] = False
    __ref_index_flags__: ClassVar[dict[str, list[str]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        cls.__ref_index_flags__ = declared_index_flags(dict(vars(cls)))
        super().__init_subclass__(**kwargs)

    @classmethod
    def __pydantic_on_complete__(cls) -> None:
        # Called once the fields are resolved: at class definition, or at the rebuild that
        # resolves a forward reference.
        model = typing.cast(type[BaseModel], cls)
        forget(model)
        _facts.pop(model, None)
        check_not_indexed(model, plan_for(model), declared=cls.__ref_index_flags__)
        cls.__ref_async__ = issubclass(cls, aredis_om.RedisModel)
        typing.cast(Any, super()).__pydantic_on_complete__()

    # -- reading -------------------------------------------------------------------------------

    @model_validator(mode="wrap")
    @classmethod
    def _ref_open(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        facts = _facts.get(cls) or _facts_for(cls)
        scoped = True
        if isinstance(data, dict):
            companions = facts.search.companions
            if companions and any(c in data for c in companions):
                # Read beside the fields, never accepted as input.
                data = {k: v for k, v in data.items() if k not in companions}
            if facts.opens and facts.flat:
                # Top-level EncryptedStr fields only: once their text is opened here, the field
                # validators see EncryptedStr values (or no text), for which model_scope makes
                # no difference. A record's second validation (redis-om validates each record
                # twice) and check() find nothing left to open.
                scoped = False
                for name in facts.plan:
                    if type(data.get(name)) is str:
                        data = cls._ref_opener().record(data, facts)
                        break
            elif facts.opens and _needs_opening(data, facts.plan):
                data = cls._ref_opener().record(data, facts)
        token = model_scope.set(True) if scoped else None
        try:
            return handler(data)
        except ValidationError as exc:
            raise _without_input(exc) from None
        finally:
            if token is not None:
                model_scope.reset(token)

    @classmethod
    def _ref_opener(cls) -> _Opener:
        """The opener of the read in progress, or one for a record validated outside reads."""
        read = _reading.get()
        if type(read) is _Opener and read.model is cls:
            return read
        return _Opener(cls, bool(read))

    def __setattr__(self, name: str, value: Any) -> None:
        # A plain str assigned to an encrypted field becomes an EncryptedStr at once, so that
        # repr() hides it before the next save; masks stay raw for save() to resolve.
        if type(value) is str:
            node = plan_for(typing.cast(Any, type(self))).get(name)
            if isinstance(node, Leaf) and not node.mask.could_be_mask(value):
                value = EncryptedStr(value)
        typing.cast(Any, super()).__setattr__(name, value)

    def __repr_args__(self) -> Any:
        # Covers values that are not (yet) EncryptedStr: model_copy(update=...), nested models
        # changed in place, list items.
        plan = plan_for(typing.cast(Any, type(self)))
        for name, value in typing.cast(Any, super()).__repr_args__():
            node = plan.get(name) if name is not None else None
            yield name, value if node is None else _masked(value, node)

    @classmethod
    def get(cls, pk: Any) -> Any:
        """redis-om's ``get``, marked as a read from Redis (for the migration warning)."""
        parent: Any = super()
        if cls.__ref_async__:
            return cls._ref_get_async(parent, pk)
        token = _reading.set(_Opener(cls, True))
        try:
            return parent.get(pk)
        finally:
            _reading.reset(token)

    @classmethod
    async def _ref_get_async(cls, parent: Any, pk: Any) -> Any:
        token = _reading.set(_Opener(cls, True))
        try:
            return await parent.get(pk)
        finally:
            _reading.reset(token)

    @classmethod
    def from_redis(cls, res: Any, knn: Any = None) -> Any:
        """redis-om's ``from_redis`` (a page of ``find()`` results), marked as a read from Redis,
        with one opener for the page (see ``_Page``)."""
        opener = _Opener(cls, True)
        token = _reading.set(opener)
        try:
            facts = _facts.get(cls) or _facts_for(cls)
            if facts.opens and type(res) is dict and type(res.get("results")) is list:
                res = {**res, "results": _Page(res["results"], opener, facts, knn)}
            return typing.cast(Any, super()).from_redis(res, knn)
        finally:
            _reading.reset(token)

    # -- writing -------------------------------------------------------------------------------

    def model_dump(self, *, mode: str = "python", context: Any = None, **kwargs: Any) -> Any:
        """In python mode (what redis-om stores), envelopes bound to this record and field."""
        parent: Any = super()
        cls = type(self)
        facts = _facts.get(cls) or _facts_for(cls)
        if mode != "python" or facts.embedded or not facts.plan:
            return parent.model_dump(mode=mode, context=context, **kwargs)
        if facts.direct is not None and context is None and not kwargs:
            data = self._ref_dump_direct(parent, facts)
        else:
            data = self._ref_dump_deferred(parent, mode, context, kwargs)
        if _saving.get() is self:
            if facts.search.blind:
                key_prefix, clear = cls._ref_key(""), "" if facts.is_hash else None
                write_companions(data, self.__dict__, facts.search.blind, key_prefix, cls, clear)
            if facts.is_hash:
                # HSET skips None; an empty string overwrites the old secret, and redis-om reads
                # it back as None for an Optional field.
                for name in facts.plan:
                    if name in data and data[name] is None:
                        data[name] = ""
        return data

    def _ref_dump_direct(self, parent: Any, facts: _Facts) -> dict[str, Any]:
        # redis-om's own call (save() dumps with no options): the encrypted fields are left out
        # of pydantic's dump and sealed from the instance, which spares a serializer call per
        # field; the fields keep their order.
        cls = type(self)
        rest = parent.model_dump(exclude=facts.direct)
        sealer = _Sealer(cls.__name__, cls._ref_key(getattr(self, facts.pk_name)))  # type: ignore[arg-type]
        values = self.__dict__
        data: dict[str, Any] = {}
        for name, leaf in facts.layout:
            if leaf is None:
                if name in rest:
                    data[name] = rest[name]
            else:
                value = values.get(name)
                data[name] = None if value is None else sealer.seal(value, leaf.mask, name)
        if len(data) < len(rest) + len(facts.plan):
            data.update((k, v) for k, v in rest.items() if k not in data)  # computed fields
        return data

    def _ref_dump_deferred(
        self, parent: Any, mode: str, context: Any, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        cls = type(self)
        defer: dict[str, Any] = {DEFER: True}
        merged = {**context, **defer} if isinstance(context, Mapping) else defer
        data: dict[str, Any] = parent.model_dump(mode=mode, context=merged, **kwargs)
        _Sealer(cls.__name__, cls._ref_key(self._ref_pk())).tree(data, ())
        return data

    def save(self, *args: Any, **kwargs: Any) -> Any:
        """redis-om's ``save``, after masks are replaced by the secrets they stand for."""
        parent: Any = super()
        if type(self).__ref_async__:
            return self._ref_save_async(parent, *args, **kwargs)
        if self._ref_may_hold_masks():
            run_sync(self._ref_resolve_masks(), self._ref_db())
        token = _saving.set(self)
        try:
            return parent.save(*args, **kwargs)
        finally:
            _saving.reset(token)

    async def _ref_save_async(self, parent: Any, *args: Any, **kwargs: Any) -> Any:
        if self._ref_may_hold_masks():
            await run_async(self._ref_resolve_masks(), self._ref_db())
        token = _saving.set(self)
        try:
            return await parent.save(*args, **kwargs)
        finally:
            _saving.reset(token)

    def _ref_may_hold_masks(self) -> bool:
        # The common case, told at once: top-level fields that hold secrets (EncryptedStr, which
        # a mask never is: validation makes masks KeepExisting) or None.
        cls = type(self)
        facts = _facts.get(cls) or _facts_for(cls)
        if not facts.flat:
            return True
        values = self.__dict__
        for name in facts.plan:
            value = values.get(name)
            if value is not None and type(value) is not EncryptedStr:
                return True
        return False

    def check(self) -> None:
        """redis-om's ``check()``, which ``save()`` runs: the instance's values validated again, in
        one pass (redis-om's own builds a second instance through ``__init__``, so that the
        model is validated twice)."""
        cls: Any = type(self)
        cls.__pydantic_validator__.validate_python(self.__dict__, self_instance=cls.__new__(cls))

    def _ref_resolve_masks(self) -> Steps[None]:
        cls = type(self)
        plan = plan_for(typing.cast(Any, cls))
        values = self.__dict__
        masked = [name for name, node in plan.items() if has_masks(values.get(name), node)]
        if not masked:
            return
        record_key = cls._ref_key(self._ref_pk())
        if _facts_for(cls).is_hash:
            found = yield lambda r: r.hmget(record_key, masked)
            stored: Any = dict(zip(masked, found, strict=True))
        else:
            stored = yield lambda r: r.json().get(record_key)
        name = cls.__name__

        def opener(raw: str, path: FieldPath) -> str:
            return open_stored(raw, name, path, record_key)

        resolve_masks(typing.cast(BaseModel, self), plan, stored, name, record_key, opener)

    # -- search --------------------------------------------------------------------------------

    @classmethod
    def find(cls, *expressions: Any, knn: Any = None) -> Any:
        """redis-om's ``find``; blind-indexed fields searchable, results exact, ``values()`` and
        ``only()`` in plaintext (see ``search``)."""
        if not _facts_for(cls).plan:
            return typing.cast(Any, super()).find(*expressions, knn=knn)
        from .search import find_query

        return find_query(cls, expressions, knn, cls.__ref_async__)

    @classmethod
    def redisearch_schema(cls) -> str:
        """redis-om's index schema, with a TAG attribute per companion (``Migrator`` creates it)."""
        schema: str = typing.cast(Any, super()).redisearch_schema()
        if not cls.__dict__.get("__pydantic_complete__"):
            return schema  # JsonModel's check while the class is being built
        is_json = issubclass(cls, (aredis_om.JsonModel, redis_om.JsonModel))
        return with_companions(schema, _facts_for(cls).search.blind, is_json)

    @classmethod
    def _ref_search_spec(cls) -> SearchSpec:
        facts = _facts.get(cls)
        if facts is not None:
            return facts.search
        # From the plan alone: ops also runs on models redis-om has not completed (no pk).
        return _search_spec(plan_for(typing.cast(Any, cls)))

    # -- helpers -------------------------------------------------------------------------------

    def _ref_pk(self) -> Any:
        name: Any = _facts_for(type(self)).pk_name
        return getattr(self, name)

    @classmethod
    def _ref_key(cls, pk: Any) -> str:
        prefix = cls._ref_key_prefix()
        if prefix is not None:
            return f"{prefix}{pk}"
        model: Any = cls
        return str(model.make_primary_key(pk))

    @classmethod
    def _ref_key_prefix(cls) -> str | None:
        """What every record key of this class starts with, when redis-om makes its keys its own
        way (``prefix + pk``); ``None`` otherwise."""
        keys = (_facts.get(cls) or _facts_for(cls)).keys
        if keys is None:
            return None
        # Worked out once: valid while _meta still holds the same prefix and pattern objects it
        # was worked out from. (``cls._meta`` itself is not read here: on a pydantic model class
        # that read costs more than the rest.)
        meta, global_prefix, model_prefix, pattern, prefix = keys
        if (
            meta.global_key_prefix is global_prefix
            and meta.model_key_prefix is model_prefix
            and meta.primary_key_pattern is pattern
        ):
            return prefix
        return None

    def _ref_db(self) -> Any:
        return typing.cast(Any, self).db()


def _allows_none(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType) and type(None) in (
        typing.get_args(annotation)
    )
