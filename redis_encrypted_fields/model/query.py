"""Search on encrypted fields through redis-om's own ``find()``: query rewriting, exact results.

``EncryptedModel.find`` returns a redis-om ``FindQuery`` of the model's flavour (sync or asyncio)
that differs in three ways:

- ``Model.email == v`` and ``Model.email << [v, w]`` on a field with a ``BlindIndex`` become a
  TAG query on its companion (``email__bidx``), for the companions of the values under every
  key of the ring (see ``blind_index``); what a truncated digest cannot answer exactly (``!=``,
  ``>>``, negation, ranges, prefixes, full text) raises ``UnsupportedQueryError``.
- Such a query finds *candidates*. They are decrypted and compared (after normalization)
  before anything is returned, counted or deleted: ``all``, ``first``, ``page``, ``count``,
  ``delete``, ``update`` and iteration see the true matches only, and ``page(offset, limit)``
  counts offsets in true matches. Combined through ``|`` with other conditions, a candidate
  whose encrypted field is a false positive is kept only if RediSearch confirms the rest of
  the condition for it (one extra query per page, only then).
- A blind query that finds nothing makes sure the key ring could have found something: one more
  RediSearch query looks for companions made under master keys the ring does not hold (a wrong
  master key, a previous key missing) and raises ``IndexKeyError`` naming those keys, where the
  answer would otherwise be a silent ``[]`` or ``0``.
- ``values()`` and ``only()`` return what ``all()`` shows (``EncryptedStr`` plaintext), not the
  stored envelopes.

Queries that involve no blind index and no projection run exactly as redis-om runs them.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import aredis_om.model.model as _async_om
import redis_om.model.model as _sync_om
from pydantic import BaseModel
from redis_om.search_reply import (
    search_document_keys,
    search_total,
)

from ..crypto import Kind, binding, classify, open_value
from ..errors import IndexKeyError, ValueTypeError, printable
from ..keys import KeyRing, MasterKey, StaticKeyRing, get_keyring
from ..steps import Steps, run_async, run_sync
from .blind_index import (
    COMPANION_SUFFIX,
    KEY_ID_HEX,
    SearchSpec,
    companion_name,
    foreign_prefixes,
)
from .codec import check_stored_key, opened
from .conditions import (
    Blind,
    Node,
    Parser,
    blind_leaves,
    has_blind,
    render,
    scope_equality,
    settle,
)
from .errors import UnsupportedQueryError
from .field_map import facts_for
from .fields import DEFER, EncryptedStr, Pending
from .policy import check_unbound, checked_keyring
from .replies import Doc, documents, only_results, reply_keys
from .scope import scope_ring
from .typed import TypeCodec

__all__ = ["AsyncSearchQuery", "SearchQuery", "find_query", "plaintext_dump"]


# --- values() and only(): plaintext -------------------------------------------------------------


def plaintext_dump(record: BaseModel) -> dict[str, Any]:
    """``record.model_dump()`` with the application's view of encrypted values: the plaintext
    (``EncryptedStr``), where redis-om's storage dump holds envelopes."""
    data: dict[str, Any] = BaseModel.model_dump(record, context={DEFER: True})
    return typing.cast(dict[str, Any], _reveal(data))


def _text_or_empty(codec: TypeCodec, value: str) -> str:
    """The text of an ``Encrypted[T]`` value stored as plaintext, or "" (matches nothing) if it
    is not a ``T``: its record's build says so."""
    try:
        return codec.encode(value)
    except ValueTypeError:
        return ""


def _reveal(value: Any) -> Any:
    if isinstance(value, Pending):
        if value.plain is not None:
            return value.plain  # an Encrypted[T] value
        secret = value.value
        return secret if isinstance(secret, EncryptedStr) else EncryptedStr(secret)
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(v) for v in value]
    return value


# --- the query --------------------------------------------------------------------------------


# How many records the key check reads per query (their companions' key ids), and at most how
# many foreign key ids it names.
_FOREIGN_SAMPLE = 10
_FOREIGN_NAMED = 8


@functools.lru_cache(maxsize=64)
def _foreign_query(fields: tuple[str, ...], key_ids: tuple[str, ...]) -> str:
    """The RediSearch query for companions in ``fields`` made under none of ``key_ids``
    (public ids; kept, since building it costs more than running it)."""
    prefixes = "|".join(f"{p}*" for p in foreign_prefixes(key_ids))
    return "|".join(f"@{name}:{{{prefixes}}}" for name in fields)


def _companions_of(model: Any, query: str, fields: Sequence[str]) -> Callable[[Any], Any]:
    """A request for ``steps``: FT.SEARCH ``query`` on the model's index, returning ``fields``
    of the first few records (the client is the model's: sync or asyncio)."""
    db = model.db()
    index, sample = model.Meta.index_name, _FOREIGN_SAMPLE
    return lambda _client: db.execute_command(
        "FT.SEARCH", index, query, "LIMIT", 0, sample, "RETURN", len(fields), *fields
    )


def _call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
    """A request for ``steps``: redis-om's own call, awaited in the asyncio flavour."""
    return lambda _client: function(*args, **kwargs)


class _Search:
    """What both flavours share; each flavour adds its FindQuery and its sync/async entry points.

    (Attributes of redis-om's FindQuery are reached through ``self`` typed as ``Any``.)
    """

    _om: ModuleType
    _base: Any  # the flavour's FindQuery

    def copy(self, **kwargs: Any) -> Any:
        """redis-om's ``copy``, keeping this class (redis-om's makes a plain FindQuery)."""
        q: Any = self
        original = q.dict()
        original.update(**kwargs)
        return type(self)(**original)

    @property
    def expression(self) -> Any:
        """The expression RediSearch runs: with companion lookups for blind conditions."""
        q: Any = self
        rendered = q.__dict__.get("_ref_rendered")
        if rendered is None:
            tree = self._ref_tree()
            if has_blind(tree):
                rendered = render(tree, self._om, self._ref_index_ring(), q.model._ref_key(""))
            else:
                rendered = self._ref_original()
            q._ref_rendered = rendered
        return rendered

    def _ref_ring(self) -> KeyRing:
        """The ring the query's values are opened with: the master keys, or for a scoped model
        the ring of the scope its query names (``UnsupportedQueryError`` if it names none)."""
        q: Any = self
        ring: KeyRing | None = q.__dict__.get("_ref_ring_")
        if ring is None:
            model = q.model
            scope = facts_for(model).scope
            if scope is None:
                ring = get_keyring()
            else:
                value = scope_equality(self._ref_tree(), scope.name)
                if value is None or not value:
                    field = next(iter(leaf.field for leaf in blind_leaves(self._ref_tree())))
                    name = model.__name__
                    raise UnsupportedQueryError(
                        f"{name}.{field} is blind-indexed per key scope ({scope.namespace}): a "
                        f"query on it must also require {name}.{scope.name} == <value>, joined "
                        f"by & (find(({name}.{scope.name} == ...) & ({name}.{field} == ...)))",
                        model=name,
                        field=field,
                    )
                ring = scope_ring(model, scope, value, checked_keyring(), None, create=False)
            q._ref_ring_ = ring
        return ring

    def _ref_index_ring(self) -> KeyRing:
        """The keys the query's companions are computed under: the master keys, or the scope
        keys of a scoped model's scope."""
        ring = self._ref_ring()
        if ring.scope_part is None:
            return ring
        keys = ring.scope_keys()
        if not keys:
            # A scope without keys has no records to find: a fresh key's companions match none.
            return StaticKeyRing(MasterKey.generate())
        return StaticKeyRing(keys[0], keys[1:])

    def _ref_original(self) -> Any:
        # redis-om's own: the expressions joined by &, or "everything".
        return self._base.expression.fget(self)

    def _ref_tree(self) -> Node:
        q: Any = self
        tree: Node | None = q.__dict__.get("_ref_parsed")
        if tree is None:
            spec: SearchSpec = q.model._ref_search_spec()
            tree = Parser(self._om, q.model, spec).parse(self._ref_original())
            q._ref_parsed = tree
        return tree

    def _ref_special(self) -> bool:
        """Whether redis-om's own execution would be wrong: a blind condition to filter, or
        encrypted values to project."""
        q: Any = self
        if has_blind(self._ref_tree()):
            return True
        if q.return_as_dict and not q.projected_fields:
            return True
        encrypted = q.model._ref_search_spec().encrypted
        return any(f.split("__", 1)[0] in encrypted for f in q.projected_fields)

    def _ref_execute(self, exhaust: bool) -> Steps[list[Any]]:
        q: Any = self
        if has_blind(self._ref_tree()):
            want = None if exhaust else q.limit
            records = yield from self._ref_matches(q.offset, want)
            if not records:
                yield from self._ref_check_keys()
        else:
            # Projections: whole records (decrypted by the model), projected below.
            whole = q.copy(projected_fields=[], return_as_dict=False)
            records = yield _call(self._base.execute, whole, exhaust_results=exhaust)
        q._model_cache = self._ref_shape(list(records))
        return typing.cast(list[Any], q._model_cache)

    def _ref_count(self) -> Steps[int]:
        """The number of records ``all()`` returns, with the same refusals: each match's stored
        pk is checked against its key (and, under a blind condition, its value decrypted)."""
        matches = yield from self._ref_matches(0, None, build=False)
        if not matches and has_blind(self._ref_tree()):
            yield from self._ref_check_keys()
        return len(matches)

    def _ref_check_keys(self) -> Steps[None]:
        """Raise ``IndexKeyError`` when records of the model carry, in a companion the query
        searched, the id of a master key the ring does not hold: the query could not have found
        them, so its empty answer would be a guess.

        One FT.SEARCH of TAG prefixes (``foreign_prefixes``) over the companions, which matches
        no record while the ring holds every key in use; then one per foreign key id, only to
        name them all.
        """
        q: Any = self
        if self._ref_ring().scope_part is not None:
            # Companions of other scopes carry their own scope keys' ids: not foreign.
            return
        fields = sorted({companion_name(leaf.field) for leaf in blind_leaves(self._ref_tree())})
        ring = [key.key_id_hex for key in get_keyring().keys]
        foreign: list[str] = []
        example = ""
        while len(foreign) < _FOREIGN_NAMED:
            query = _foreign_query(tuple(fields), (*ring, *foreign))
            raw = yield _companions_of(q.model, query, fields)
            ids = {
                str(value)[:KEY_ID_HEX]
                for doc in documents(raw, fields)
                for value in doc.fields.values()
                if isinstance(value, str) and len(value) > KEY_ID_HEX
            } - {*ring, *foreign}
            if not ids:
                break
            example = example or documents(raw, fields)[0].key
            foreign += sorted(ids)
        if foreign:
            name = q.model.__name__
            searched = ", ".join(f"{name}.{f.removesuffix(COMPANION_SUFFIX)}" for f in fields)
            raise IndexKeyError(
                f"{searched}: the query found nothing, but records (such as "
                f"{printable(example)}) carry a blind index made under master key "
                f"{', '.join(foreign)}, which the key ring "
                f"(key {', '.join(ring)}) does not hold, so the query cannot tell whether they "
                "match. Configure that master key (REDIS_SRE_MASTER_KEY, or "
                "REDIS_SRE_PREVIOUS_MASTER_KEYS after a rotation), or re-index the records "
                "with migrate under a ring that holds it",
                model=name,
                record=example,
            )

    def _ref_matches(self, skip: int, want: int | None, build: bool = True) -> Steps[list[Any]]:
        """The true matches from the ``skip``-th on (at most ``want``), in RediSearch's order:
        candidates are fetched a page at a time and filtered until enough are found. Records are
        built only for those (``build``; else their documents are returned, to be counted)."""
        q: Any = self
        if q.knn is not None:
            raise UnsupportedQueryError(
                f"{q.model.__name__}: a KNN query cannot be combined with a blind-indexed "
                "condition (false positives would take places among the nearest)",
                model=q.model.__name__,
            )
        tree = self._ref_tree()
        rendered = self.expression  # one ring, one rendering, for every page of this run
        pk_name = q.model._meta.primary_key.name
        names = [*{leaf.field for leaf in blind_leaves(tree)}, pk_name]
        # Without a blind condition, only counting reads the pages: their keys and stored pks.
        projected = [] if build or has_blind(tree) else [pk_name]
        found: list[Any] = []
        position = 0
        size = q.page_size if want is None else min(q.page_size, max(16, 2 * (skip + want)))
        while True:
            page = q.copy(
                offset=position,
                limit=size,
                projected_fields=projected,
                return_as_dict=False,
                nocontent=False,
            )
            page._ref_parsed, page._ref_rendered = tree, rendered
            raw = yield _call(
                self._base.execute, page, exhaust_results=False, return_raw_result=True
            )
            plaintexts: dict[tuple[str, str, str], str] = {}
            docs = documents(raw, names)
            matches = yield from self._ref_exact(tree, docs, plaintexts)
            wanted = matches[skip:] if want is None else matches[skip : skip + want - len(found)]
            skip = max(0, skip - len(matches))
            if wanted and not build:
                # Counted as all() would build them: each bound to the key the reply names.
                for doc in wanted:
                    check_stored_key(q.model, doc.key, doc.fields.get(pk_name))
                found += wanted
            elif wanted:
                # Only the matches are built, with the values the filter has decrypted.
                token = opened.set(plaintexts)
                try:
                    found += q.model.from_redis(
                        only_results(raw, [d.position for d in wanted]), None
                    )
                finally:
                    opened.reset(token)
            position += size
            if (want is not None and len(found) >= want) or position >= search_total(raw):
                return found
            if not search_document_keys(raw):  # the index shrank meanwhile
                return found
            size = min(2 * size, q.page_size)

    def _ref_exact(
        self, tree: Node, candidates: Sequence[Doc], plaintexts: dict[tuple[str, str, str], str]
    ) -> Steps[list[Doc]]:
        """The candidates that really match, in order. Only the blind-indexed
        values are decrypted (into ``plaintexts``), not the whole records."""
        q: Any = self
        name = q.model.__name__
        leaves = blind_leaves(tree)
        keep: list[bool] = []
        # Candidates whose blind conditions leave the answer to the rest of the query, grouped
        # by what is left (one RediSearch call per group).
        undecided: dict[tuple[bool, ...], tuple[Node, list[int]]] = {}
        for i, doc in enumerate(candidates):
            truths = tuple(self._ref_holds(leaf, doc, name, plaintexts) for leaf in leaves)
            if all(truths):  # the query only has & and |: true conditions cannot undo a match
                keep.append(True)
                continue
            verdict = settle(tree, dict(zip(leaves, truths, strict=True)))
            keep.append(verdict is True)
            if not isinstance(verdict, bool):
                undecided.setdefault(truths, (verdict, []))[1].append(i)
        for rest, members in undecided.values():
            confirmed = yield from self._ref_confirm(rest, [candidates[i] for i in members])
            for i in members:
                keep[i] = candidates[i].key in confirmed
        return [doc for doc, kept in zip(candidates, keep, strict=True) if kept]

    def _ref_holds(
        self, leaf: Blind, doc: Doc, model: str, plaintexts: dict[tuple[str, str, str], str]
    ) -> bool:
        """Whether the candidate's value of ``leaf.field``, decrypted, is one of the values."""
        value = doc.fields.get(leaf.field)
        if not isinstance(value, str) or not value:
            return False
        found = plaintexts.get((doc.key, leaf.field, value))
        if found is None:
            kind = classify(value)
            if kind is not Kind.ENVELOPE:
                # Refused here as a read refuses it, so that count() (which builds no record)
                # agrees with all().
                check_unbound(value, model, leaf.field, doc.key)
            if kind is Kind.PLAINTEXT:
                # Plaintext not migrated yet (the record's build warns), as the field's text.
                found = value if leaf.codec is None else _text_or_empty(leaf.codec, value)
            else:
                context = binding(doc.key, leaf.field) if kind is Kind.ENVELOPE else b""
                found = open_value(
                    value,
                    self._ref_ring(),
                    context,
                    model=model,
                    field=leaf.field,
                    record=doc.key,
                )
            plaintexts[(doc.key, leaf.field, value)] = found
        return leaf.index.normalized(found, f"{model}.{leaf.field}") in leaf.values

    def _ref_confirm(self, rest: Node, docs: list[Doc]) -> Steps[set[str]]:
        """The keys of ``docs`` for which RediSearch finds ``rest`` true."""
        q: Any = self
        model = q.model
        pk_name = model._meta.primary_key.name
        prefix = model._ref_key("")
        # The pk the key names (the stored one may disagree: that record is refused when built).
        pks = [doc.key.removeprefix(prefix) for doc in docs]
        condition = (getattr(model, pk_name) << pks) & render(rest, self._om, None, "")
        check = self._base(expressions=[condition], model=model, limit=len(pks), nocontent=True)
        raw = yield _call(self._base.execute, check, exhaust_results=False, return_raw_result=True)
        return reply_keys(raw)

    def _ref_shape(self, records: list[Any]) -> list[Any]:
        """``records`` as the query asked for them: models, dicts (``values``) or partial models
        (``only``), with plaintext for encrypted fields."""
        q: Any = self
        fields: list[str] = q.projected_fields
        if not fields and not q.return_as_dict:
            return records
        dumps = [plaintext_dump(record) for record in records]
        if not fields:
            return dumps
        flat = [
            {f: q._extract_nested_value(d, f) if "__" in f else d.get(f) for f in fields}
            for d in dumps
        ]
        if q.return_as_dict:
            return flat
        return [
            self._om.PartialModel(
                model_class=q.model,
                data=q._construct_nested_partial_data(item),
                loaded_fields=set(fields),
            )
            for item in flat
        ]


class SearchQuery(_Search, _sync_om.FindQuery):  # type: ignore[misc]  # untyped
    """redis-om's sync ``FindQuery`` for models with encrypted fields."""

    _om = _sync_om
    _base = _sync_om.FindQuery

    def execute(
        self,
        exhaust_results: bool = True,
        return_raw_result: bool = False,
        return_query_args: bool = False,
    ) -> Any:
        if return_raw_result or return_query_args or not self._ref_special():
            parent: Any = super()
            return parent.execute(exhaust_results, return_raw_result, return_query_args)
        return run_sync(self._ref_execute(exhaust_results), None)

    def count(self) -> int:
        if self.knn is not None and not has_blind(self._ref_tree()):
            parent: Any = super()
            return typing.cast(int, parent.count())
        return run_sync(self._ref_count(), None)


class AsyncSearchQuery(_Search, _async_om.FindQuery):
    """redis-om's asyncio ``FindQuery`` for models with encrypted fields."""

    _om = _async_om
    _base = _async_om.FindQuery

    async def execute(
        self,
        exhaust_results: bool = True,
        return_raw_result: bool = False,
        return_query_args: bool = False,
    ) -> Any:
        if return_raw_result or return_query_args or not self._ref_special():
            parent: Any = super()
            return await parent.execute(exhaust_results, return_raw_result, return_query_args)
        return await run_async(self._ref_execute(exhaust_results), None)

    async def count(self) -> int:
        if self.knn is not None and not has_blind(self._ref_tree()):
            parent: Any = super()
            return typing.cast(int, await parent.count())
        return await run_async(self._ref_count(), None)


def find_query(model: Any, expressions: Sequence[Any], knn: Any, asynchronous: bool) -> Any:
    """``model.find(*expressions, knn=knn)`` for an ``EncryptedModel`` with encrypted fields."""
    cls = AsyncSearchQuery if asynchronous else SearchQuery
    return cls(expressions=expressions, knn=knn, model=model)
