"""``EncryptedModel``: the redis-om integration (record binding, keep-existing, clearing, reads).

Listed first in a model's bases, the mixin hooks the points where redis-om moves data:

- validation (``get``, ``find``, construction, ``check()`` inside ``save``): envelopes at the
  encrypted paths of the input are opened with the record's key and field path as associated data;
  a mask becomes ``KeepExisting``; plaintext read from Redis is accepted with a warning (migration)
  or refused (``set_plaintext_reads(False)``);
- ``model_dump()`` in python mode (what redis-om persists): values are sealed bound to the record;
- ``save()``: masks are replaced by the stored secrets before anything is written, in one
  transaction with the write (read again when the record changed meanwhile); a ``None``
  encrypted field of a ``HashModel`` overwrites the stored secret instead of leaving it behind;
  a field with a ``BlindIndex`` gets its companion written beside it (``blind_index``); the
  transaction is in ``saving``;
- ``find()`` and ``redisearch_schema()``: search on blind-indexed fields (``query``).
"""

from __future__ import annotations

import contextvars
import logging
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

import aredis_om
import redis_om
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError
from pydantic_core.core_schema import ValidatorFunctionWrapHandler
from redis_om.search_reply import search_documents

from ..crypto.legacy import is_legacy_envelope
from ..keys import MasterKey
from .blind_index import SearchSpec, with_companions, write_companions
from .codec import Opener, Page, Sealer
from .field_map import Facts, facts_cache, facts_for, search_spec
from .fields import (
    DEFER,
    EncryptedStr,
    KeepExisting,
    model_scope,
)
from .plan import (
    FieldPath,
    Leaf,
    Many,
    Node,
    Plan,
    check_not_indexed,
    declared_index_flags,
    encrypted_paths,
    forget,
    plan_for,
)
from .policy import ENV_REJECT_PLAINTEXT, check_input, checked_keyring, set_plaintext_reads
from .query import find_query
from .replies import reply_results
from .saving import save_async, save_sync, saving
from .scope import ScopeField, scope_field, scope_ring

__all__ = [
    "ENV_REJECT_PLAINTEXT",
    "EncryptedModel",
    "FieldPath",
    "encrypted_paths",
    "set_plaintext_reads",
]

log = logging.getLogger("redis_encrypted_fields")

# --- the mixin --------------------------------------------------------------------------------

# While a model is being built from data read from Redis (get, find): the read's Opener (or
# True).
_reading: contextvars.ContextVar[Opener | bool] = contextvars.ContextVar(
    "ref_reading", default=False
)


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
        if node.typed is not None:
            hidden = value is not None and not isinstance(value, KeepExisting)
            return _Shown(f"Encrypted[{node.typed.display}]('**********')") if hidden else value
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


def _needs_opening(data: dict[str, Any], plan: Plan, reading: bool) -> bool:
    """Whether validating ``data`` has anything to open: a ``str`` (not yet an ``EncryptedStr``)
    at an encrypted field, or a container that may hold one; while ``reading``, a value of an
    ``Encrypted[T]`` field (it may be plaintext). Not so when redis-om re-validates an instance
    (``check()``, and its ``__init__`` inside every validation)."""
    for name, node in plan.items():
        value = data.get(name)
        if type(value) is str:
            return True
        if reading and value is not None and isinstance(node, Leaf) and node.typed is not None:
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
        facts_cache.pop(model, None)
        check_not_indexed(model, plan_for(model), declared=cls.__ref_index_flags__)
        scope_field(model, plan_for(model))  # TypeError for two KeyScope fields
        cls.__ref_async__ = issubclass(cls, aredis_om.RedisModel)
        typing.cast(Any, super()).__pydantic_on_complete__()

    # -- reading -------------------------------------------------------------------------------

    @model_validator(mode="wrap")
    @classmethod
    def _ref_open(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        facts = facts_cache.get(cls) or facts_for(cls)
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
                else:
                    # An Encrypted[T] value that is not text, read from Redis: plaintext left by
                    # older code (a JSON number), unless the opener decoded it (see Opener).
                    if (
                        facts.typed
                        and _reading.get()
                        and any(data.get(n) is not None for n in facts.typed)
                    ):
                        opener = cls._ref_opener()
                        if opener.unseen(data, facts):
                            data = opener.record(data, facts)
            elif facts.opens and _needs_opening(data, facts.plan, bool(_reading.get())):
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
    def _ref_opener(cls) -> Opener:
        """The opener of the read in progress, or one for a record validated outside reads."""
        read = _reading.get()
        if type(read) is Opener and read.model is cls:
            return read
        return Opener(cls, bool(read))

    def __setattr__(self, name: str, value: Any) -> None:
        # A plain str assigned to an encrypted field becomes an EncryptedStr at once, so that
        # repr() hides it before the next save; masks stay raw for save() to resolve.
        if type(value) is str:
            node = plan_for(typing.cast(Any, type(self))).get(name)
            if isinstance(node, Leaf) and node.typed is None and not node.mask.could_be_mask(value):
                if is_legacy_envelope(value):  # refused as in construction, not kept as text
                    check_input(value, type(self).__name__, name, self._ref_record_key())
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
        token = _reading.set(Opener(cls, True))
        try:
            return parent.get(pk)
        finally:
            _reading.reset(token)

    @classmethod
    async def _ref_get_async(cls, parent: Any, pk: Any) -> Any:
        token = _reading.set(Opener(cls, True))
        try:
            return await parent.get(pk)
        finally:
            _reading.reset(token)

    @classmethod
    def from_redis(cls, res: Any, knn: Any = None) -> Any:
        """redis-om's ``from_redis`` (a page of ``find()`` results), marked as a read from Redis,
        with one opener for the page (see ``Page``)."""
        opener = Opener(cls, True)
        token = _reading.set(opener)
        try:
            facts = facts_cache.get(cls) or facts_for(cls)
            results = reply_results(res) if facts.opens else None
            if results is not None:
                # Every record is opened here, bound to the key the reply names for it.
                res = {"results": Page(results, opener, facts, knn)}
                if facts.unconverted and knn is None:
                    # redis-om's from_redis without its two conversion passes, which return a
                    # record of this class as it is and cost more than building it.
                    return [cls(**fields) for fields in search_documents(res)]
            return typing.cast(Any, super()).from_redis(res, knn)
        finally:
            _reading.reset(token)

    # -- writing -------------------------------------------------------------------------------

    def model_dump(self, *, mode: str = "python", context: Any = None, **kwargs: Any) -> Any:
        """In python mode (what redis-om stores), envelopes bound to this record and field."""
        parent: Any = super()
        cls = type(self)
        facts = facts_cache.get(cls) or facts_for(cls)
        if mode != "python" or facts.embedded or not facts.plan:
            return parent.model_dump(mode=mode, context=context, **kwargs)
        if facts.direct is not None and context is None and not kwargs:
            data = self._ref_dump_direct(parent, facts)
        else:
            data = self._ref_dump_deferred(parent, mode, context, kwargs)
        if saving.get() is self:
            if facts.search.blind:
                key_prefix, clear = cls._ref_key(""), "" if facts.is_hash else None
                search = facts.search
                write_companions(
                    data,
                    self.__dict__,
                    search.blind,
                    key_prefix,
                    cls,
                    clear,
                    search.codecs,
                    self._ref_index_key(facts),
                )
            if facts.is_hash:
                # HSET skips None; an empty string overwrites the old secret, and redis-om reads
                # it back as None for an Optional field.
                for name in facts.plan:
                    if name in data and data[name] is None:
                        data[name] = ""
        return data

    def _ref_dump_direct(self, parent: Any, facts: Facts) -> dict[str, Any]:
        # redis-om's own call (save() dumps with no options): the encrypted fields are left out
        # of pydantic's dump and sealed from the instance, which spares a serializer call per
        # field; the fields keep their order.
        cls = type(self)
        rest = parent.model_dump(exclude=facts.direct)
        sealer = Sealer(
            cls.__name__,
            cls._ref_key(getattr(self, facts.pk_name)),  # type: ignore[arg-type]
            self._ref_scoped(facts),
        )
        values = self.__dict__
        data: dict[str, Any] = {}
        for name, leaf in facts.layout:
            if leaf is None:
                if name in rest:
                    data[name] = rest[name]
            else:
                value = values.get(name)
                if value is None:
                    data[name] = None
                else:
                    typed = leaf.typed
                    text = value if typed is None else typed.encode(value)
                    data[name] = sealer.seal(text, leaf.mask, name)
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
        facts = facts_cache.get(cls) or facts_for(cls)
        Sealer(cls.__name__, cls._ref_key(self._ref_pk()), self._ref_scoped(facts)).tree(data, ())
        return data

    def _ref_index_key(self, facts: Facts) -> MasterKey | None:
        """The key a scoped record's blind indexes are made under: its scope's active key."""
        scoped = self._ref_scoped(facts)
        if scoped is None:
            return None
        cls, scope, value = scoped
        ring = scope_ring(cls, scope, value, checked_keyring(), self._ref_record_key(), create=True)
        return ring.scope_current()

    def _ref_scoped(self, facts: Facts) -> tuple[Any, ScopeField, Any] | None:
        """What a scoped record's sealer needs: its class, scope field and scope value."""
        scope = facts.scope
        return None if scope is None else (type(self), scope, self.__dict__.get(scope.name))

    def save(self, *args: Any, **kwargs: Any) -> Any:
        """redis-om's ``save``, after masks are replaced by the secrets they stand for.

        With masks and no ``pipeline``, the record is read, the masks resolved and redis-om's
        writes sent in one transaction on the record key (``WATCH``/``MULTI``/``EXEC``), so that
        a secret changed meanwhile is never written over (see ``saving``)."""
        parent: Any = super()
        if type(self).__ref_async__:
            return save_async(self, parent, args, kwargs)
        return save_sync(self, parent, args, kwargs)

    def check(self) -> None:
        """redis-om's ``check()``, which ``save()`` runs: the instance's values validated again, in
        one pass (redis-om's own builds a second instance through ``__init__``, so that the
        model is validated twice)."""
        cls: Any = type(self)
        cls.__pydantic_validator__.validate_python(self.__dict__, self_instance=cls.__new__(cls))

    # -- search --------------------------------------------------------------------------------

    @classmethod
    def find(cls, *expressions: Any, knn: Any = None) -> Any:
        """redis-om's ``find``; blind-indexed fields searchable, results exact, ``values()`` and
        ``only()`` in plaintext (see ``query``)."""
        if not facts_for(cls).plan:
            return typing.cast(Any, super()).find(*expressions, knn=knn)
        return find_query(cls, expressions, knn, cls.__ref_async__)

    @classmethod
    def redisearch_schema(cls) -> str:
        """redis-om's index schema, with a TAG attribute per companion (``Migrator`` creates it)."""
        schema: str = typing.cast(Any, super()).redisearch_schema()
        if not cls.__dict__.get("__pydantic_complete__"):
            return schema  # JsonModel's check while the class is being built
        is_json = issubclass(cls, (aredis_om.JsonModel, redis_om.JsonModel))
        return with_companions(schema, facts_for(cls).search.blind, is_json)

    @classmethod
    def _ref_search_spec(cls) -> SearchSpec:
        facts = facts_cache.get(cls)
        if facts is not None:
            return facts.search
        # From the plan alone: ops also runs on models redis-om has not completed (no pk).
        return search_spec(plan_for(typing.cast(Any, cls)))

    # -- helpers -------------------------------------------------------------------------------

    def _ref_record_key(self) -> str | None:
        """This record's Redis key, if it has a primary key yet."""
        pk = self._ref_pk()
        return None if pk in (None, "") else type(self)._ref_key(pk)

    def _ref_pk(self) -> Any:
        name: Any = facts_for(type(self)).pk_name
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
        keys = (facts_cache.get(cls) or facts_for(cls)).keys
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
