"""Maintenance: migrate plaintext, rotate master keys and report status, streaming and safely.

Records are found with ``SCAN`` (never ``KEYS``), read and written in pipelined batches, and every
write is a compare-and-set in a Lua script: a value is replaced only if it is still what was read,
so a record the application changes meanwhile is never overwritten with a stale value, and a run
killed at any moment can simply be run again. Nothing is ever deleted, and a value that cannot be
decrypted is left as it is and reported.

The functions work on the model's stored layout (key prefix, encrypted paths) and never build
model instances, so they run at the speed of Redis rather than of validation.
"""

from __future__ import annotations

import functools
import inspect
import json
import typing
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from ._driver import Request, Steps, Submit, Wait, run_async, run_sync
from .audit import audit_enabled, track
from .blind_index import (
    INDEX_MISSING,
    INDEX_OUTDATED,
    INDEX_SUFFIX,
    BlindIndex,
    companion_name,
    companion_state,
    domain,
)
from .envelope import (
    KEY_ID_SLICE,
    PREFIX,
    binding_part,
    decode,
    open_blob,
    rewrap_blob,
    seal,
)
from .errors import DecryptionError, EncryptionError
from .fields import is_star_mask
from .keys import KeyRing, get_keyring
from .legacy import open_legacy, parse_legacy
from .models import EncryptedModel
from .plan import FieldPath, Leaf, Many, Nested, Node, dotted, encrypted_paths, plan_for
from .report import (
    EMPTY,
    LEGACY,
    MASKED,
    PLAINTEXT,
    UNDECRYPTABLE,
    Failure,
    Group,
    Operation,
    Report,
    Scanned,
    key_state,
)
from .topology import Script, TopologyError, check, describe, evaluate, fingerprint, nodes

__all__ = [
    "Failure",
    "Group",
    "Operation",
    "Report",
    "Scanned",
    "amigrate",
    "arotate",
    "astatus",
    "migrate",
    "rotate",
    "status",
]

ProgressCallback = Callable[[int], None]

# Compare-and-set of a batch of records, each on its own: a record's fields are replaced only if
# every one still holds what was read. KEYS: the records. ARGV, per record: the number of fields
# n, then n triples. One call per batch: a call per record costs more than the work it does.
# Hash triples: field, expected, new; per-field TTLs are kept (HSET drops them) where the server
# has hash field expiration. JSON triples: path, expected string, new value as JSON text. A
# missing field (JSON: or null) is expected as "" (a blind index's companion not written yet).
_HASH_CAS = """
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

_JSON_CAS = """
local done, a = {}, 1
for k = 1, #KEYS do
  local key, n, ok = KEYS[k], tonumber(ARGV[a]), 1
  for i = a + 1, a + 3 * n, 3 do
    local current = redis.call('JSON.GET', key, ARGV[i])
    if not current then ok = 0 break end
    local value = cjson.decode(current)[1]
    if value == nil or value == cjson.null then value = '' end
    if value ~= ARGV[i + 1] then ok = 0 break end
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
_HASH_READ = """
local out = {}
for k = 1, #KEYS do out[k] = redis.call('HMGET', KEYS[k], unpack(ARGV)) end
return out
"""

_JSON_READ = """
local out = {}
for k = 1, #KEYS do out[k] = redis.call('JSON.GET', KEYS[k]) or false end
return out
"""

_RETRIES = 3


# --- the model's stored layout ----------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    model: type[BaseModel]
    name: str
    prefix: str
    is_json: bool
    bound: bool
    plan: dict[str, Node]
    blind: dict[str, BlindIndex]  # top-level fields with a blind index (bound models only)

    @classmethod
    def of(cls, model: type[BaseModel]) -> _Layout:
        import aredis_om
        import redis_om

        m: Any = model
        if not issubclass(model, (redis_om.RedisModel, aredis_om.RedisModel)):
            raise EncryptionError(f"{model.__name__} is not a redis-om model")
        if getattr(m._meta, "embedded", False):
            raise EncryptionError(f"{model.__name__} is embedded; run on the model that holds it")
        plan = plan_for(model)
        if not plan:
            raise EncryptionError(f"{model.__name__} has no EncryptedStr fields")
        return cls(
            model=model,
            name=model.__name__,
            prefix=m.make_key(m._meta.primary_key_pattern.format(pk="")),
            is_json=issubclass(model, (redis_om.JsonModel, aredis_om.JsonModel)),
            bound=issubclass(model, EncryptedModel),
            plan=plan,
            blind=m._ref_search_spec().blind if issubclass(model, EncryptedModel) else {},
        )

    @functools.cached_property
    def hash_paths(self) -> tuple[FieldPath, ...]:
        """A hash model's encrypted fields as paths, in the order the read script returns them."""
        return tuple((name,) for name in self.plan)


@functools.lru_cache(maxsize=4096)
def _field_part(path: FieldPath) -> bytes:
    """The field half of a value's binding (see ``envelope.binding_part``)."""
    return binding_part(".".join(map(str, path)))


@functools.lru_cache(maxsize=4096)
def _name(model: str, path: FieldPath) -> str:
    """What status counts a value under, e.g. ``Tenant.replicas[].password``."""
    return f"{model}.{_pattern(path)}"


def _pattern(path: FieldPath) -> str:
    """``replicas.1.password`` → ``replicas[].password``: the name status counts under."""
    out = ""
    for part in path:
        out += "[]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _json_path(path: FieldPath) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f"[{json.dumps(p)}]" for p in path)


def _values(doc: Any, plan: dict[str, Node], path: FieldPath) -> Iterator[tuple[FieldPath, Any]]:
    if not isinstance(doc, dict):
        return
    for name, node in plan.items():
        yield from _node_values(doc.get(name), node, (*path, name))


def _node_values(value: Any, node: Node, path: FieldPath) -> Iterator[tuple[FieldPath, Any]]:
    if isinstance(node, Leaf):
        yield path, value
    elif isinstance(node, Many):
        if isinstance(value, list):
            for i, item in enumerate(value):
                yield from _node_values(item, node.item, (*path, i))
    elif isinstance(node, Nested):
        yield from _values(value, plan_for(node.model), path)


def _text(value: Any) -> Any:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


# --- deciding what to do with one value --------------------------------------------------------


@dataclass(slots=True)
class _Decision:
    state: str
    new: str | None = None  # the value to write, if any
    outcome: str = "unchanged"  # encrypted / upgraded / rewrapped / unchanged / failed
    reason: str = ""
    verified: bool = False  # decrypted to check it
    key_id: bytes | None = None  # of a value that failed: the key its envelope names


def _decide(op: Operation, raw: Any, keyring: KeyRing, context: bytes) -> _Decision:
    """What to do with one stored value. Every envelope is decrypted (its data key unwrapped and
    its data opened), so that what cannot be decrypted is reported by every operation, not
    only by ``status``: an operator must not learn of it after dropping a key."""
    if raw is None or raw == "":
        return _Decision(EMPTY)
    if not isinstance(raw, str):
        return _Decision(PLAINTEXT, outcome="failed", reason="not a string")
    if raw.startswith(PREFIX):
        try:
            blob = decode(raw)
        except DecryptionError as exc:
            return _Decision(UNDECRYPTABLE, outcome="failed", reason=_reason(exc))
        key_id = blob[KEY_ID_SLICE]
        try:
            if op is Operation.ROTATE and key_id != keyring.current.key_id:
                # rewrap_blob opens the data too before vouching for it under the new key.
                new = rewrap_blob(raw, blob, keyring, context)
                return _Decision(key_state(key_id), new, "rewrapped")
            open_blob(blob, keyring, context)
        except DecryptionError as exc:
            return _Decision(UNDECRYPTABLE, outcome="failed", reason=_reason(exc), key_id=key_id)
        return _Decision(key_state(key_id), verified=True)
    if parse_legacy(raw) is not None:
        try:
            plaintext = open_legacy(raw, keyring)
        except DecryptionError as exc:
            return _Decision(LEGACY, outcome="failed", reason=_reason(exc))
        if op is Operation.STATUS:
            return _Decision(LEGACY)
        return _Decision(LEGACY, seal(plaintext, keyring, context), "upgraded")
    if is_star_mask(raw):
        # The origin stored masks as secrets; encrypting one would hide that the secret is lost.
        return _Decision(MASKED, outcome="failed", reason="holds a mask, not a secret")
    if op is Operation.STATUS:
        return _Decision(PLAINTEXT)
    return _Decision(PLAINTEXT, seal(raw, keyring, context), "encrypted")


def _reason(exc: EncryptionError) -> str:
    return str(exc)


# --- one batch of records ------------------------------------------------------------------------


# A batch is planned into flat, batch-level lists rather than objects per record: the tool is
# limited by this process's CPU, and objects that live for a whole batch make the garbage
# collector run again and again over them (a fifth of the time, measured).


_Tally = tuple[str, str, str]  # (counted under, state, outcome)
_tallies: dict[_Tally, _Tally] = {}  # one tuple of each kind, shared


@dataclass(slots=True)
class _Planned:
    """One batch, decided: the compare-and-set to send, and what to count once it is written."""

    keys: Sequence[str]
    report: Report  # failures so far
    records: int = 0  # records found (not deleted since the scan)
    # The compare-and-set: records to write, and the script's ARGV (per record: the number of
    # values n, then n triples).
    send_keys: list[str] = field(default_factory=list)
    send_args: list[Any] = field(default_factory=list)
    send_starts: list[int] = field(default_factory=list)  # where each record's ARGV begins
    # Per record written, what its values count as; the whole batch's tally.
    send_tallies: list[tuple[_Tally, ...]] = field(default_factory=list)
    tally: Counter[_Tally] = field(default_factory=Counter)


def _read_request(script: Script, layout: _Layout, keys: Sequence[str]) -> Request:
    fields = [] if layout.is_json else [*layout.plan, *map(companion_name, layout.blind)]
    return evaluate(script, keys, fields)


def _write_request(
    script: Script, keys: Sequence[str], args: Sequence[Any], starts: Sequence[int] = ()
) -> Request:
    return evaluate(script, keys, (), args, starts)


def _plan_record(
    op: Operation, layout: _Layout, key: str, stored: Any, keyring: KeyRing, planned: _Planned
) -> None:
    values: Iterable[tuple[FieldPath, Any]]
    companions: dict[str, Any] = {}
    if layout.is_json:
        # JSON.GET replies are text, or already decoded once redis-py's JSON helper has
        # registered its response callbacks on the client.
        doc = json.loads(_text(stored)) if isinstance(stored, (str, bytes)) else stored
        if doc is None:
            return  # deleted since the scan
        values = list(_values(doc, layout.plan, ()))
        if layout.blind and isinstance(doc, dict):
            companions = {name: doc.get(companion_name(name)) for name in layout.blind}
    else:
        if stored is None or stored.count(None) == len(stored):
            return  # deleted since the scan
        paths = layout.hash_paths
        if layout.blind:
            companions = dict(zip(layout.blind, map(_text, stored[len(paths) :]), strict=True))
            stored = stored[: len(paths)]
        values = zip(paths, stored, strict=True)
    planned.records += 1
    args = planned.send_args
    start = len(args)
    args.append(0)
    tally: list[_Tally] = []
    auditing = audit_enabled()
    record = binding_part(key) if layout.bound else None
    for path, value in values:
        raw = value.decode("utf-8", "surrogateescape") if type(value) is bytes else value
        context = b"" if record is None else record + _field_part(path)
        d = _decide(op, raw, keyring, context)
        if auditing:
            _audit(d, layout, key, path, raw, keyring)
        kind = (_name(layout.name, path), d.state, d.outcome)
        tally.append(_tallies.setdefault(kind, kind))
        if d.new is not None:
            if layout.is_json:
                args += [_json_path(path), raw, json.dumps(d.new)]
            else:
                args += [path[0], raw, d.new]
        elif d.outcome == "failed":
            kid = d.key_id.hex() if d.key_id is not None else None
            failure = Failure(key, dotted(path), d.reason, layout.name, d.state, kid)
            planned.report.failures.append(failure)
        if layout.blind and len(path) == 1 and path[0] in layout.blind:
            name = str(path[0])
            old = companions.get(name)
            kind, detail = _reindex(op, layout, name, raw, d, old, keyring, context)
            tally.append(_tallies.setdefault(kind, kind))
            if kind[2] == "indexed":
                if d.new is None:  # the value is compared too: the companion goes beside it
                    if layout.is_json:
                        args += [_json_path(path), raw or "", json.dumps(raw)]
                    else:
                        args += [name, raw or "", raw or ""]
                if layout.is_json:
                    args += [_json_path((companion_name(name),)), old or "", json.dumps(detail)]
                else:
                    args += [companion_name(name), old or "", detail]
            elif kind[2] == "failed" and d.outcome != "failed":
                where = f"{name}{INDEX_SUFFIX}"
                planned.report.failures.append(Failure(key, where, detail, layout.name))
    planned.tally.update(tally)
    if len(args) > start + 1:
        args[start] = (len(args) - start - 1) // 3
        planned.send_keys.append(key)
        planned.send_starts.append(start)
        planned.send_tallies.append(tuple(tally))
    else:
        del args[start]


@functools.lru_cache(maxsize=4096)
def _index_name(model: str, field: str) -> str:
    """What status counts a blind index's companions under."""
    return f"{model}.{field}{INDEX_SUFFIX}"


def _reindex(
    op: Operation,
    layout: _Layout,
    name: str,
    raw: Any,
    d: _Decision,
    stored: Any,
    keyring: KeyRing,
    context: bytes,
) -> tuple[_Tally, str]:
    """How the companion of a blind-indexed value stands, and the companion the operation
    writes ("indexed": ``migrate`` when it is missing or outdated, ``rotate`` also when it is
    under an old key), or why it cannot be made ("failed"). The value has just been decrypted
    (and audited) by ``_decide``; it is opened again here for its plaintext."""
    counted = _index_name(layout.name, name)
    if d.outcome == "failed":
        return (counted, d.state, "failed"), d.reason
    index = layout.blind[name]
    try:
        if d.state == EMPTY:
            plaintext = None
        elif d.state == PLAINTEXT:
            plaintext = raw
        elif d.state == LEGACY:
            plaintext = open_legacy(raw, keyring)
        else:
            plaintext = open_blob(decode(raw), keyring, context)
        info = domain(layout.prefix, name, index.definition)
        where = f"{layout.name}.{name}"
        old = stored if stored is None or isinstance(stored, str) else "?"
        state, expected = companion_state(index, keyring, info, plaintext, old, where)
    except EncryptionError as exc:
        return (counted, UNDECRYPTABLE, "failed"), _reason(exc)
    if state == EMPTY or op is Operation.STATUS:
        write = False
    elif op is Operation.ROTATE:
        write = state != key_state(keyring.current.key_id)
    else:
        write = state in (INDEX_MISSING, INDEX_OUTDATED)
    return (counted, state, "indexed" if write else "index-ok"), expected


_AUDITED = {"encrypted": "encrypt", "upgraded": "encrypt", "rewrapped": "rewrap"}


def _audit(
    d: _Decision, layout: _Layout, key: str, path: FieldPath, raw: Any, ring: KeyRing
) -> None:
    # Events describe what the tool decided; a write that then loses a compare-and-set race is
    # decided again, and audited again, on the retry.
    field = ".".join(map(str, path))
    common: dict[str, Any] = {"model": layout.name, "field": field, "record": key}
    if d.outcome in _AUDITED:
        track(_AUDITED[d.outcome], key_id=ring.current.key_id, **common)
    elif d.outcome == "failed" and d.state not in (MASKED, PLAINTEXT):
        error = DecryptionError(d.reason)
        track("decrypt", envelope=raw if isinstance(raw, str) else None, error=error, **common)
    elif d.outcome == "unchanged" and (d.state == LEGACY or d.verified):
        # Every operation decrypts the envelopes it leaves alone, to check them.
        track("decrypt", envelope=raw, **common)


def _plan_batch(
    op: Operation, layout: _Layout, keys: Sequence[str], stored: Sequence[Any], keyring: KeyRing
) -> _Planned:
    planned = _Planned(keys, Report(op))
    for key, value in zip(keys, stored, strict=True):
        _plan_record(op, layout, key, value, keyring, planned)
    return planned


_OUTCOMES = ("encrypted", "upgraded", "rewrapped", "indexed", "unchanged")


def _settle(planned: _Planned, results: Sequence[Any], dry_run: bool) -> tuple[Report, list[str]]:
    """Count what was written; return the batch's report and the keys that lost a race.

    A record that lost a race is not counted: it is decided again on the retry.
    """
    report = planned.report
    report.dry_run = dry_run
    tally = planned.tally
    lost = [i for i, ok in enumerate(results) if ok != 1]
    conflicted = {planned.send_keys[i] for i in lost}
    report.records += planned.records - len(lost)
    if lost:
        tally = tally.copy()
        for i in lost:
            tally.subtract(planned.send_tallies[i])
        # Failures of conflicted records are re-found on the retry; keep the others.
        report.failures = [f for f in report.failures if f.key not in conflicted]
    for (name, state, outcome), n in tally.items():
        if n <= 0:
            continue
        report.states.setdefault(name, Counter())[state] += n
        if state != EMPTY and outcome in _OUTCOMES:
            setattr(report, outcome, getattr(report, outcome) + n)
    return report, [k for k in planned.keys if k in conflicted]


def _writes(op: Operation, planned: _Planned, script: Script | None, dry_run: bool) -> bool:
    return (
        bool(planned.send_keys)
        and script is not None
        and not dry_run
        and op is not Operation.STATUS
    )


def _send(script: Script, planned: _Planned) -> Steps[Any]:
    request = _write_request(script, planned.send_keys, planned.send_args, planned.send_starts)
    return (yield request)


def _batch(
    op: Operation,
    layout: _Layout,
    keys: Sequence[str],
    scripts: tuple[Script, Script | None],
    keyring: KeyRing,
    dry_run: bool,
    attempts: int = _RETRIES,
) -> Steps[Report]:
    """One batch, read then written, with retries of the records that changed meanwhile."""
    read, write = scripts
    report = Report(op, dry_run)
    pending = list(keys)
    for _ in range(attempts):
        if not pending:
            return report
        stored = yield _read_request(read, layout, pending)
        planned = _plan_batch(op, layout, pending, stored, keyring)
        results: Any = []
        if _writes(op, planned, write, dry_run):
            results = yield from _send(typing.cast(Script, write), planned)
        done, pending = _settle(planned, results, dry_run)
        report.merge(done)
    report.conflicts += len(pending)
    return report


# --- the scan --------------------------------------------------------------------------------


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _scan_request(cursor: Any, match: str, count: int, kind: str, node: Any) -> Request:
    if node is None:
        return lambda c: c.scan(cursor, match=match, count=count, _type=kind)

    def on_node(c: Any) -> Any:
        # A cluster client answers ({node name: cursor}, keys) for the node it is sent to.
        reply = c.scan(cursor, match=match, count=count, _type=kind, target_nodes=node)
        if inspect.isawaitable(reply):
            return _node_cursor_async(reply, node)
        return _node_cursor(reply, node)

    return on_node


def _node_cursor(reply: Any, node: Any) -> tuple[Any, Any]:
    cursors, keys = reply
    return (cursors[node.name] if isinstance(cursors, dict) else cursors), keys


async def _node_cursor_async(reply: Any, node: Any) -> tuple[Any, Any]:
    return _node_cursor(await reply, node)


class _Scanner:
    """The model's keys from ``SCAN``, a batch at a time: on a cluster, from every primary."""

    __slots__ = ("count", "cursor", "finished", "keys", "kind", "match", "nodes")

    def __init__(self, match: str, count: int, kind: str, nodes: Sequence[Any]) -> None:
        self.match, self.count, self.kind = match, count, kind
        self.nodes = list(nodes)
        self.cursor: Any = 0
        self.finished = not self.nodes
        self.keys: list[str] = []

    def next_batch(self) -> Steps[list[str]]:
        # SCAN pages hold few of the model's keys when others share the database: fill whole
        # batches (at most two pages' worth of keys are held).
        while not self.finished and len(self.keys) < self.count:
            node = self.nodes[0]
            request = _scan_request(self.cursor, self.match, self.count, self.kind, node)
            cursor, found = yield request
            self.keys += [_text(k) for k in found]
            self.cursor = cursor
            if int(cursor) == 0:
                # This node is done; on to the next primary of a cluster.
                self.nodes.pop(0)
                self.cursor = 0
                self.finished = not self.nodes
        batch, self.keys = self.keys[: self.count], self.keys[self.count :]
        return batch


def _read_next(scanner: _Scanner, layout: _Layout, read: Script) -> Steps[tuple[list[str], Any]]:
    keys = yield from scanner.next_batch()
    if not keys:
        return keys, []
    return keys, (yield _read_request(read, layout, keys))


def _the_client(client: Any) -> Any:
    return client


# A pass over the keyspace that saw the cluster's slots move is made again, this many at most.
_PASSES = 3


def _steps(
    op: Operation,
    model: type[BaseModel],
    dry_run: bool,
    batch_size: int,
    keyring: KeyRing | None,
    progress: ProgressCallback | None,
) -> Steps[Report]:
    if batch_size < 1:
        raise EncryptionError("batch_size must be at least 1")
    layout = _Layout.of(model)
    ring = keyring or get_keyring()
    client = yield _the_client
    yield from check(client)  # the whole keyspace is in sight, or nothing is done
    read = Script(_JSON_READ if layout.is_json else _HASH_READ)
    read.sha = _text((yield lambda c: c.script_load(read.text)))
    write: Script | None = None
    if op is not Operation.STATUS and not dry_run:
        write = Script(_JSON_CAS if layout.is_json else _HASH_CAS)
        text = write.text
        write.sha = _text((yield lambda c: c.script_load(text)))
    scripts = (read, write)
    report: Report | None = None
    for attempt in range(_PASSES):
        before = yield from fingerprint(client)
        this = yield from _pass(op, layout, client, scripts, ring, dry_run, batch_size, progress)
        after = yield from fingerprint(client)
        report = this if report is None else report.then(this)
        if before == after:
            return report
        if attempt == _PASSES - 1:
            raise TopologyError(
                f"the slots of {describe(client)} moved during each of {_PASSES} passes "
                "(resharding or failover), so no pass could see every record: nothing was lost "
                "(every record is written atomically); run it again once the cluster is stable"
            )
    raise AssertionError("unreachable")


def _pass(
    op: Operation,
    layout: _Layout,
    client: Any,
    scripts: tuple[Script, Script | None],
    ring: KeyRing,
    dry_run: bool,
    batch_size: int,
    progress: ProgressCallback | None,
) -> Steps[Report]:
    """One pass over the model's records on every node."""
    read, write = scripts
    report = Report(op, dry_run)
    report.current_key = ring.current.key_id_hex
    report.previous_keys = ring.previous_ids
    for path in encrypted_paths(layout.model):
        report.states.setdefault(f"{layout.name}.{path}", Counter())
    for name in layout.blind:
        report.states.setdefault(_index_name(layout.name, name), Counter())
    kind = "ReJSON-RL" if layout.is_json else "hash"
    match = _glob_escape(layout.prefix) + "*"
    scanner = _Scanner(match, batch_size, kind, nodes(client))
    # Three stages overlap: while this process decides batch N, Redis runs the compare-and-set
    # of batch N-1 and the read of batch N+1 (each on its own connection). Memory holds at most
    # three batches, whatever the size of the data set.
    reading = yield Submit(_read_next(scanner, layout, read))
    writing: tuple[Any, _Planned] | None = None
    while True:
        keys, stored = yield Wait(reading)
        planned: _Planned | None = None
        if keys:
            reading = yield Submit(_read_next(scanner, layout, read))
            planned = _plan_batch(op, layout, keys, stored, ring)
        if writing is not None:
            handle, previous = writing
            results = (yield Wait(handle)) if handle is not None else []
            done, conflicted = _settle(previous, results, dry_run)
            if conflicted:
                retried = _batch(op, layout, conflicted, scripts, ring, dry_run, _RETRIES - 1)
                done.merge((yield from retried))
            report.merge(done)
            if progress is not None:
                progress(len(previous.keys))
        if planned is None:
            report.scanned.append(Scanned(layout.name, describe(client), match, report.records))
            return report
        handle = None
        if _writes(op, planned, write, dry_run):
            handle = yield Submit(_send(typing.cast(Script, write), planned))
        writing = (handle, planned)


# --- public API --------------------------------------------------------------------------------


def _client(model: type[BaseModel], client: Any, *, sync: bool = True) -> Any:
    if client is not None:
        return client
    import aredis_om

    if sync and issubclass(model, aredis_om.RedisModel):
        raise EncryptionError(
            f"{model.__name__} is an aredis_om (asyncio) model: use the a-prefixed function "
            "(amigrate, arotate, astatus), or pass a synchronous client="
        )
    return typing.cast(Any, model).db()


def migrate(
    model: type[BaseModel],
    *,
    client: Any = None,
    dry_run: bool = False,
    batch_size: int = 500,
    keyring: KeyRing | None = None,
    progress: ProgressCallback | None = None,
) -> Report:
    """Encrypt every plaintext value and upgrade origin v1 values; leave current envelopes."""
    steps = _steps(Operation.MIGRATE, model, dry_run, batch_size, keyring, progress)
    return run_sync(steps, _client(model, client))


def rotate(
    model: type[BaseModel],
    *,
    client: Any = None,
    dry_run: bool = False,
    batch_size: int = 500,
    keyring: KeyRing | None = None,
    progress: ProgressCallback | None = None,
) -> Report:
    """Bring every value under the current master key: re-wrap old envelopes, encrypt the rest."""
    steps = _steps(Operation.ROTATE, model, dry_run, batch_size, keyring, progress)
    return run_sync(steps, _client(model, client))


def status(
    model: type[BaseModel],
    *,
    client: Any = None,
    batch_size: int = 500,
    keyring: KeyRing | None = None,
    progress: ProgressCallback | None = None,
) -> Report:
    """Count the values of each encrypted field by state, decrypting each one to check it."""
    steps = _steps(Operation.STATUS, model, True, batch_size, keyring, progress)
    return run_sync(steps, _client(model, client))


async def amigrate(
    model: type[BaseModel],
    *,
    client: Any = None,
    dry_run: bool = False,
    batch_size: int = 500,
    keyring: KeyRing | None = None,
    progress: ProgressCallback | None = None,
) -> Report:
    """``migrate`` with an asyncio client (default: the model's own)."""
    steps = _steps(Operation.MIGRATE, model, dry_run, batch_size, keyring, progress)
    return await run_async(steps, _client(model, client, sync=False))


async def arotate(
    model: type[BaseModel],
    *,
    client: Any = None,
    dry_run: bool = False,
    batch_size: int = 500,
    keyring: KeyRing | None = None,
    progress: ProgressCallback | None = None,
) -> Report:
    """``rotate`` with an asyncio client (default: the model's own)."""
    steps = _steps(Operation.ROTATE, model, dry_run, batch_size, keyring, progress)
    return await run_async(steps, _client(model, client, sync=False))


async def astatus(
    model: type[BaseModel],
    *,
    client: Any = None,
    batch_size: int = 500,
    keyring: KeyRing | None = None,
    progress: ProgressCallback | None = None,
) -> Report:
    """``status`` with an asyncio client (default: the model's own)."""
    steps = _steps(Operation.STATUS, model, True, batch_size, keyring, progress)
    return await run_async(steps, _client(model, client, sync=False))
