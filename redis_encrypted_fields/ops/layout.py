"""A model's records as the maintenance tools (``ops``) see them in Redis: the stored layout
(key prefix, hash or JSON, encrypted paths, blind indexes), the names values are counted under,
and the Lua scripts that read and compare-and-set a batch of records.
"""

from __future__ import annotations

import functools
import json
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aredis_om
import redis_om
from pydantic import BaseModel

from ..crypto.envelope import binding_part
from ..errors import EncryptionError
from ..keys import KeyRing
from ..model.blind_index import INDEX_SUFFIX, BlindIndex
from ..model.mixin import EncryptedModel
from ..model.plan import FieldPath, Leaf, Many, Nested, Node, dotted, pattern, plan_for
from ..model.scope import ScopeField, scope_of, scope_ring

# Compare-and-set of a batch of records, each on its own: a record's fields are replaced only if
# every one still holds what was read. KEYS: the records. ARGV, per record: the number of fields
# n, then n triples. One call per batch: a call per record costs more than the work it does.
# Hash triples: field, expected, new; per-field TTLs are kept (HSET drops them) where the server
# has hash field expiration. JSON triples: path, expected string, new value as JSON text. A
# missing field (JSON: or null) is expected as "" (a blind index's companion not written yet);
# a value that is not a string (an Encrypted[T] field's plaintext: a number, an object) as
# "\0json:" and its JSON text in an array (``expected``), compared as Lua's cjson encodes both.
HASH_CAS = """
local done, a = {}, 1
for k = 1, #KEYS do
  local key, n, ok = KEYS[k], tonumber(ARGV[a]), 1
  local fields, pairs = {}, {}
  for j = 1, n do
    fields[j] = ARGV[a + 3 * j - 2]
    pairs[2 * j - 1], pairs[2 * j] = fields[j], ARGV[a + 3 * j]
  end
  local current = redis.call('HMGET', key, unpack(fields))
  for j = 1, n do
    if (current[j] or '') ~= ARGV[a + 3 * j - 1] then ok = 0 break end
  end
  if ok == 1 then
    local has, at = pcall(redis.call, 'HPEXPIRETIME', key, 'FIELDS', n, unpack(fields))
    redis.call('HSET', key, unpack(pairs))
    if has and type(at) == 'table' then
      for j = 1, n do
        local t = tonumber(at[j])
        if t and t > 0 then redis.call('HPEXPIREAT', key, t, 'FIELDS', 1, fields[j]) end
      end
    end
  end
  done[k], a = ok, a + 1 + 3 * n
end
return done
"""

JSON_CAS = """
local done, a = {}, 1
for k = 1, #KEYS do
  local key, n, ok = KEYS[k], tonumber(ARGV[a]), 1
  for i = a + 1, a + 3 * n, 3 do
    local current = redis.call('JSON.GET', key, ARGV[i])
    if not current then ok = 0 break end
    local value, want = cjson.decode(current)[1], ARGV[i + 1]
    if value == nil or value == cjson.null then value = '' end
    if type(value) == 'string' then
      if value ~= want then ok = 0 break end
    elseif string.sub(want, 1, 6) ~= '\\0json:'
      or cjson.encode(value) ~= cjson.encode(cjson.decode(string.sub(want, 7))[1]) then
      ok = 0 break
    end
  end
  if ok == 1 then
    for i = a + 1, a + 3 * n, 3 do redis.call('JSON.SET', key, ARGV[i], ARGV[i + 2]) end
  end
  done[k], a = ok, a + 1 + 3 * n
end
return done
"""

# Reads of a batch of records in one call, for the same reason. KEYS: the records; ARGV (hash):
# the fields. A missing record reads as nil (false keeps the reply array without holes).
HASH_READ = """
local out = {}
for k = 1, #KEYS do out[k] = redis.call('HMGET', KEYS[k], unpack(ARGV)) end
return out
"""

JSON_READ = """
local out = {}
for k = 1, #KEYS do out[k] = redis.call('JSON.GET', KEYS[k]) or false end
return out
"""


# --- the model's stored layout ----------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    model: type[BaseModel]
    name: str
    prefix: str
    is_json: bool
    bound: bool
    plan: dict[str, Node]
    blind: dict[str, BlindIndex]  # top-level fields with a blind index (bound models only)
    scope: ScopeField | None = None  # the KeyScope field: values under their scope's keys
    rekey: str | None = None  # rotate --scope: the scope value whose values get its new key

    @classmethod
    def of(cls, model: type[BaseModel]) -> Layout:
        m: Any = model
        if not issubclass(model, (redis_om.RedisModel, aredis_om.RedisModel)):
            raise EncryptionError(f"{model.__name__} is not a redis-om model")
        if getattr(m._meta, "embedded", False):
            raise EncryptionError(f"{model.__name__} is embedded; run on the model that holds it")
        plan = plan_for(model)
        if not plan:
            raise EncryptionError(f"{model.__name__} has no encrypted fields")
        return cls(
            model=model,
            name=model.__name__,
            prefix=m.make_key(m._meta.primary_key_pattern.format(pk="")),
            is_json=issubclass(model, (redis_om.JsonModel, aredis_om.JsonModel)),
            bound=issubclass(model, EncryptedModel),
            plan=plan,
            blind=m._ref_search_spec().blind if issubclass(model, EncryptedModel) else {},
            scope=scope_of(model) if issubclass(model, EncryptedModel) else None,
        )

    def ring(self, master: KeyRing, value: Any, key: str, create: bool) -> KeyRing:
        """The ring of one record of a scoped model: its scope's (made if ``create``), or the
        master ring for a record without a scope value."""
        scope = typing.cast(ScopeField, self.scope)
        value = as_text(value)
        if type(value) is not str or not value:
            return master
        return scope_ring(self.model, scope, value, master, key, create=create)

    @functools.cached_property
    def hash_paths(self) -> tuple[FieldPath, ...]:
        """A hash model's encrypted fields as paths, in the order the read script returns them."""
        return tuple((name,) for name in self.plan)

    @functools.cached_property
    def hash_leaves(self) -> tuple[Leaf, ...]:
        """The plan leaves of ``hash_paths`` (a hash holds no lists or nested models)."""
        return tuple(typing.cast(Leaf, node) for node in self.plan.values())


@functools.lru_cache(maxsize=4096)
def field_part(path: FieldPath) -> bytes:
    """The field half of a value's binding (see ``envelope.binding_part``)."""
    return binding_part(dotted(path))


@functools.lru_cache(maxsize=4096)
def counted_name(model: str, path: FieldPath) -> str:
    """What status counts a value under, e.g. ``Tenant.replicas[].password``."""
    return f"{model}.{pattern(path)}"


@functools.lru_cache(maxsize=4096)
def index_name(model: str, field: str) -> str:
    """What status counts a blind index's companions under."""
    return f"{model}.{field}{INDEX_SUFFIX}"


def json_path(path: FieldPath) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f"[{json.dumps(p)}]" for p in path)


def stored_values(
    doc: Any, plan: dict[str, Node], path: FieldPath
) -> Iterator[tuple[FieldPath, Any, Leaf]]:
    """The values at a document's encrypted paths, each with its path and plan leaf."""
    if not isinstance(doc, dict):
        return
    for name, node in plan.items():
        yield from _node_values(doc.get(name), node, (*path, name))


def _node_values(value: Any, node: Node, path: FieldPath) -> Iterator[tuple[FieldPath, Any, Leaf]]:
    if isinstance(node, Leaf):
        yield path, value, node
    elif isinstance(node, Many):
        if isinstance(value, list):
            for i, item in enumerate(value):
                yield from _node_values(item, node.item, (*path, i))
    elif isinstance(node, Nested):
        yield from stored_values(value, plan_for(node.model), path)


def expected(raw: Any) -> str:
    """A stored JSON value as the compare-and-set expects it (see ``JSON_CAS``)."""
    return raw if isinstance(raw, str) else "\0json:" + json.dumps([raw])


def as_text(value: Any) -> Any:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
