"""One batch of records for the maintenance tools (``ops``): each value decided (encrypt, upgrade,
re-wrap, leave, or report), its blind index companion brought up to date, the batch's
compare-and-set planned, sent, and settled into a report, with retries of the records that
changed meanwhile.
"""

from __future__ import annotations

import json
import typing
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..audit import audit_enabled
from ..crypto import (
    KEY_ID_SLICE,
    SCOPED_VERSION,
    Kind,
    binding_part,
    classify,
    decode,
    open_value,
    rewrap_value,
    seal_value,
    track_open,
    writes_v1,
)
from ..errors import DecryptionError, EncryptionError, ShreddedKeyError, ValueTypeError
from ..keys import KeyRing, StaticKeyRing
from ..model.blind_index import (
    INDEX_MISSING,
    INDEX_OUTDATED,
    INDEX_SUFFIX,
    companion_name,
    companion_state,
    domain,
)
from ..model.fields import is_star_mask
from ..model.plan import FieldPath, Leaf, dotted
from ..model.policy import ENV_REJECT_PLAINTEXT
from ..model.typed import TypeCodec
from ..steps import Request, Steps
from .layout import (
    Layout,
    as_text,
    counted_name,
    expected,
    field_part,
    index_name,
    json_path,
    stored_values,
)
from .report import (
    EMPTY,
    LEGACY,
    MASKED,
    PLAINTEXT,
    SCOPED,
    SHREDDED,
    SUSPICIOUS,
    UNDECRYPTABLE,
    Failure,
    Operation,
    Report,
    key_state,
)
from .topology import Script, evaluate

# Reads and compare-and-sets of a record that keeps changing meanwhile, before it is counted as a
# conflict and left for another run.
RETRIES = 3


# --- deciding what to do with one value --------------------------------------------------------


@dataclass(slots=True)
class _Decision:
    state: str
    new: str | None = None  # the value to write, if any
    # encrypted / upgraded / rewrapped / unchanged / failed / suspicious (left: plaintext refused)
    outcome: str = "unchanged"
    reason: str = ""
    verified: bool = False  # decrypted to check it
    key_id: bytes | None = None  # of a value that failed: the key its envelope names
    text: str | None = None  # an Encrypted[T] plaintext's text (what is sealed and indexed)


# Why a value is left as suspicious: the deployment has declared (REDIS_SRE_REJECT_PLAINTEXT)
# that no plaintext is left, and encrypting or upgrading it would make a planted value look
# genuine.
_SUSPECT = f"where {ENV_REJECT_PLAINTEXT} says none is left: left as it is"
_SUSPICIOUS_PLAINTEXT = f"plaintext, {_SUSPECT}"
_SUSPICIOUS_V1 = f"an origin v1 value (bound to no record), {_SUSPECT}"

# The names of a value's audit events while nothing listens (not built then).
_NOWHERE: tuple[None, None, None] = (None, None, None)

# The outcome of a value of a scoped model found under a master key (sealed before the model had
# a scope): ``migrate`` moves it under its scope's key.
UNSCOPED = "unscoped"

# Outcomes of values left as they are and reported.
_LEFT = frozenset(("failed", "suspicious"))


def _decide(
    op: Operation,
    raw: Any,
    keyring: KeyRing,
    context: bytes,
    suspect: bool = False,
    auditing: bool = False,
    where: tuple[str | None, str | None, str | None] = (None, None, None),
    typed: TypeCodec | None = None,
    rekey: bool = False,
) -> _Decision:
    """What to do with one stored value. Every envelope is decrypted (its data key unwrapped and
    its data opened), so that what cannot be decrypted is reported by every operation, not
    only by ``status``: an operator must not learn of it after dropping a key. With ``suspect``
    (plaintext is refused), plaintext and origin v1 values are left and reported as suspicious.

    Audited as decided (``auditing``; ``where``: model, field and record for the events): an
    encrypt, upgrade or re-wrap by what it writes, a value left as it is by the decrypt that
    checked it, a failure by the failed decrypt. Events describe what the tool decided: a write
    that then loses a compare-and-set race is decided again, and audited again, on the retry.

    ``typed``: the codec of an ``Encrypted[T]`` field, whose plaintext (``"5000"`` in a hash,
    ``5000`` in a JSON document) is sealed as its text.
    """
    if raw is None:
        return _Decision(EMPTY)
    if not isinstance(raw, str):
        if typed is None:
            return _Decision(PLAINTEXT, outcome="failed", reason="not a string")
        return _plain(raw, keyring, context, suspect, op, auditing, where, typed)
    kind = classify(raw)
    if kind is Kind.EMPTY:
        return _Decision(EMPTY)
    model, field, record = where
    if kind is Kind.ENVELOPE:
        try:
            blob = decode(raw)
        except DecryptionError as exc:
            track_open(raw, exc, model=model, field=field, record=record)
            return _Decision(UNDECRYPTABLE, outcome="failed", reason=_reason(exc))
        key_id = blob[KEY_ID_SLICE]
        if keyring.scope_part is not None or blob[0] == SCOPED_VERSION:
            return _scoped(op, raw, blob, keyring, context, auditing, where, rekey)
        try:
            if op is Operation.ROTATE and key_id != keyring.current.key_id:
                # The data is opened too before it is vouched for under the new key.
                new = _rewrap(raw, blob, keyring, context, auditing, where)
                return _Decision(key_state(key_id), new, "rewrapped")
            _verify(raw, blob, keyring, context, auditing, where)
        except DecryptionError as exc:
            return _Decision(UNDECRYPTABLE, outcome="failed", reason=_reason(exc), key_id=key_id)
        return _Decision(key_state(key_id), verified=True)
    seals = not suspect and op is not Operation.STATUS
    if kind is Kind.LEGACY:
        # While REDIS_SRE_WRITE_FORMAT=v1 (a rolling upgrade), v1 is what is written: an upgrade
        # would only rewrite the value in the same format. Plaintext is still encrypted (in v1).
        seals = seals and not writes_v1()
        try:
            # An upgrade is audited by its encrypt; a value left by the decrypt that checked it.
            plaintext = open_value(
                raw,
                keyring,
                auditing=auditing and not seals,
                model=model,
                field=field,
                record=record,
                locate=False,
            )
        except DecryptionError as exc:
            return _Decision(LEGACY, outcome="failed", reason=_reason(exc))
        if suspect:
            return _Decision(SUSPICIOUS, outcome="suspicious", reason=_SUSPICIOUS_V1, verified=True)
        if not seals:
            return _Decision(LEGACY)
        new = seal_value(
            plaintext, keyring, context, auditing=auditing, model=model, field=field, record=record
        )
        return _Decision(LEGACY, new, "upgraded")
    if is_star_mask(raw):
        # The origin stored masks as secrets; encrypting one would hide that the secret is lost.
        return _Decision(MASKED, outcome="failed", reason="holds a mask, not a secret")
    return _plain(raw, keyring, context, suspect, op, auditing, where, typed)


def _rewrap(
    raw: str,
    blob: bytes,
    keyring: KeyRing,
    context: bytes,
    auditing: bool,
    where: tuple[str | None, str | None, str | None],
) -> str:
    """``raw`` (checked bytes ``blob``) re-wrapped under the ring's current key, audited."""
    model, field, record = where
    return rewrap_value(
        raw, blob, keyring, context, auditing=auditing, model=model, field=field, record=record
    )


def _verify(
    raw: str,
    blob: bytes,
    keyring: KeyRing,
    context: bytes,
    auditing: bool,
    where: tuple[str | None, str | None, str | None],
) -> None:
    """Open ``raw`` to prove it intact (audited as a decrypt); ``DecryptionError`` as it is."""
    model, field, record = where
    open_value(
        raw,
        keyring,
        context,
        blob=blob,
        auditing=auditing,
        model=model,
        field=field,
        record=record,
        locate=False,
    )


def _scoped(
    op: Operation,
    raw: str,
    blob: bytes,
    keyring: KeyRing,
    context: bytes,
    auditing: bool,
    where: tuple[str | None, str | None, str | None],
    rekey: bool,
) -> _Decision:
    """An envelope of a scoped model's record. Under its scope's key, it is left as it is (a
    master-key rotation re-wraps the scope keys, not the values), unless its scope gets a new
    key (``rekey``: re-wrapped under it). Under a master key (sealed before the model had a
    scope), ``migrate`` and ``rotate`` move it under the scope's key. Under a shredded scope
    key, it is left and reported."""
    model, field, record = where
    key_id = blob[KEY_ID_SLICE]
    scoped = blob[0] == SCOPED_VERSION
    try:
        if scoped and rekey and op is Operation.ROTATE:
            if key_id != keyring.scope_current().key_id:
                new = _rewrap(raw, blob, keyring, context, auditing, where)
                return _Decision(SCOPED, new, "rewrapped")
        elif not scoped and op is not Operation.STATUS and keyring.scope_part is not None:
            plaintext = open_value(raw, keyring, context, blob=blob, auditing=False, locate=False)
            new = seal_value(
                plaintext, keyring, context, auditing, model=model, field=field, record=record
            )
            return _Decision(key_state(key_id), new, "upgraded")
        _verify(raw, blob, keyring, context, auditing, where)
    except ShreddedKeyError as exc:
        return _Decision(SHREDDED, outcome="failed", reason=_reason(exc), key_id=key_id)
    except DecryptionError as exc:
        return _Decision(UNDECRYPTABLE, outcome="failed", reason=_reason(exc), key_id=key_id)
    if scoped or keyring.scope_part is None:
        return _Decision(SCOPED if scoped else key_state(key_id), verified=True)
    # Under a master key in a scoped model (status, or a record without a scope value).
    return _Decision(key_state(key_id), outcome=UNSCOPED, verified=True)


def _plain(
    raw: Any,
    keyring: KeyRing,
    context: bytes,
    suspect: bool,
    op: Operation,
    auditing: bool,
    where: tuple[str | None, str | None, str | None],
    typed: TypeCodec | None,
) -> _Decision:
    """A plaintext value: left as suspicious, counted, or encrypted (as its field's text)."""
    if suspect:
        return _Decision(SUSPICIOUS, outcome="suspicious", reason=_SUSPICIOUS_PLAINTEXT)
    text = raw
    if typed is not None:
        try:
            text = typed.encode(raw)
        except ValueTypeError as exc:
            reason = f"plaintext that is not a {typed.name} ({exc})"
            return _Decision(PLAINTEXT, outcome="failed", reason=reason)
    if op is Operation.STATUS:
        return _Decision(PLAINTEXT, text=text)
    model, field, record = where
    new = seal_value(
        text, keyring, context, auditing=auditing, model=model, field=field, record=record
    )
    return _Decision(PLAINTEXT, new, "encrypted", text=text)


def _reason(exc: EncryptionError) -> str:
    return str(exc)


# --- one batch of records ------------------------------------------------------------------------


# A batch is planned into flat, batch-level lists rather than objects per record: the tool is
# limited by this process's CPU, and objects that live for a whole batch make the garbage
# collector run again and again over them (a fifth of the time, measured).


# (counted under, state, outcome), and for a value written under a scope key, SCOPED: what it is
# stored as once written (else: under the current master key).
_Tally = tuple[str, ...]
_tallies: dict[_Tally, _Tally] = {}  # one tuple of each kind, shared


@dataclass(slots=True)
class Planned:
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
    current: str = ""  # the state of values under the current key: what a write leaves


def read_request(script: Script, layout: Layout, keys: Sequence[str]) -> Request:
    fields = [] if layout.is_json else [*layout.plan, *map(companion_name, layout.blind)]
    if fields and layout.scope is not None:
        fields.append(layout.scope.name)  # last: the record's scope
    return evaluate(script, keys, fields)


def write_request(
    script: Script, keys: Sequence[str], args: Sequence[Any], starts: Sequence[int] = ()
) -> Request:
    return evaluate(script, keys, (), args, starts)


def _plan_record(
    op: Operation,
    layout: Layout,
    key: str,
    stored: Any,
    keyring: KeyRing,
    planned: Planned,
    suspect: bool = False,
) -> None:
    values: Iterable[tuple[FieldPath, Any, Leaf]]
    companions: dict[str, Any] = {}
    scope_value: Any = None
    if layout.is_json:
        # JSON.GET replies are text, or already decoded once redis-py's JSON helper has
        # registered its response callbacks on the client.
        doc = json.loads(as_text(stored)) if isinstance(stored, (str, bytes)) else stored
        if doc is None:
            return  # deleted since the scan
        values = list(stored_values(doc, layout.plan, ()))
        if layout.scope is not None and isinstance(doc, dict):
            scope_value = doc.get(layout.scope.name)
        if layout.blind and isinstance(doc, dict):
            companions = {name: doc.get(companion_name(name)) for name in layout.blind}
    else:
        if stored is None or stored.count(None) == len(stored):
            return  # deleted since the scan
        paths = layout.hash_paths
        if layout.scope is not None:
            scope_value, stored = stored[-1], stored[:-1]
        if layout.blind:
            companions = dict(zip(layout.blind, map(as_text, stored[len(paths) :]), strict=True))
            stored = stored[: len(paths)]
        values = zip(paths, stored, layout.hash_leaves, strict=True)
    planned.records += 1
    rekey = False
    if layout.scope is not None:
        # The record's values are under its scope's keys (made on a write: a migrate moves
        # values sealed before the model had a scope under them).
        keyring = layout.ring(keyring, scope_value, key, op is not Operation.STATUS)
        rekey = layout.rekey is not None and as_text(scope_value) == layout.rekey
    args = planned.send_args
    start = len(args)
    args.append(0)
    tally: list[_Tally] = []
    auditing = audit_enabled()
    record = binding_part(key) if layout.bound else None
    for path, value, leaf in values:
        raw = value.decode("utf-8", "surrogateescape") if type(value) is bytes else value
        context = b"" if record is None else record + field_part(path)
        names = (layout.name, dotted(path), key) if auditing else _NOWHERE
        d = _decide(op, raw, keyring, context, suspect, auditing, names, leaf.typed, rekey)
        kind: _Tally = (counted_name(layout.name, path), d.state, d.outcome)
        if d.new is not None and keyring.scope_part is not None:
            kind = (*kind, SCOPED)  # stored under the scope's key once written
        tally.append(_tallies.setdefault(kind, kind))
        if d.new is not None:
            if layout.is_json:
                args += [json_path(path), expected(raw), json.dumps(d.new)]
            else:
                args += [path[0], raw, d.new]
        elif d.outcome in _LEFT:
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
                        args += [json_path(path), expected(raw or ""), json.dumps(raw)]
                    else:
                        args += [name, raw or "", raw or ""]
                if layout.is_json:
                    args += [json_path((companion_name(name),)), old or "", json.dumps(detail)]
                else:
                    args += [companion_name(name), old or "", detail]
            elif kind[2] == "failed" and d.outcome not in _LEFT:
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


def _reindex(
    op: Operation,
    layout: Layout,
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
    counted = index_name(layout.name, name)
    if d.outcome in _LEFT:  # no companion for a value left as it is
        return (counted, d.state, "failed"), d.reason
    index = layout.blind[name]
    try:
        if d.state == EMPTY:
            plaintext = None
        elif d.state == PLAINTEXT:
            plaintext = raw if d.text is None else d.text
        else:
            # Opened (and audited) by _decide already: not audited again.
            plaintext = open_value(raw, keyring, context, auditing=False, locate=False)
        info = domain(layout.prefix, name, index.definition)
        where = f"{layout.name}.{name}"
        old = stored if stored is None or isinstance(stored, str) else "?"
        ring, current = keyring, key_state(keyring.current.key_id)
        keys = keyring.scope_keys()
        if keys:
            # A scoped record's companions are made under its scope's keys, active first.
            ring, current = StaticKeyRing(keys[0], keys[1:]), key_state(keys[0].key_id)
        state, expected = companion_state(index, ring, info, plaintext, old, where)
        if keys and state == current:
            state = current = SCOPED
    except EncryptionError as exc:
        return (counted, UNDECRYPTABLE, "failed"), _reason(exc)
    if state == EMPTY or op is Operation.STATUS:
        write = False
    elif op is Operation.ROTATE:
        write = state != current
    else:
        write = state in (INDEX_MISSING, INDEX_OUTDATED)
    return (counted, state, "indexed" if write else "index-ok"), expected


def plan_batch(
    op: Operation,
    layout: Layout,
    keys: Sequence[str],
    stored: Sequence[Any],
    keyring: KeyRing,
    suspect: bool = False,
) -> Planned:
    planned = Planned(keys, Report(op), current=key_state(keyring.current.key_id))
    for key, value in zip(keys, stored, strict=True):
        _plan_record(op, layout, key, value, keyring, planned, suspect)
    return planned


_OUTCOMES = ("encrypted", "upgraded", "rewrapped", "indexed", "unchanged")
# Outcomes that leave the value (or companion) under the current key once written.
_WRITTEN = frozenset(("encrypted", "upgraded", "rewrapped", "indexed"))


def settle(planned: Planned, results: Sequence[Any], dry_run: bool) -> tuple[Report, list[str]]:
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
    for (name, state, outcome, *after), n in tally.items():
        if n <= 0:
            continue
        report.states.setdefault(name, Counter())[state] += n
        written = not dry_run and state != EMPTY and outcome in _WRITTEN
        now = (after[0] if after else planned.current) if written else state
        report.stored.setdefault(name, Counter())[now] += n
        if state != EMPTY and outcome in _OUTCOMES:
            setattr(report, outcome, getattr(report, outcome) + n)
        elif outcome == UNSCOPED:
            report.unscoped += n
    return report, [k for k in planned.keys if k in conflicted]


def writes(op: Operation, planned: Planned, script: Script | None, dry_run: bool) -> bool:
    return (
        bool(planned.send_keys)
        and script is not None
        and not dry_run
        and op is not Operation.STATUS
    )


def send(script: Script, planned: Planned) -> Steps[Any]:
    request = write_request(script, planned.send_keys, planned.send_args, planned.send_starts)
    return (yield request)


def run_batch(
    op: Operation,
    layout: Layout,
    keys: Sequence[str],
    scripts: tuple[Script, Script | None],
    keyring: KeyRing,
    dry_run: bool,
    attempts: int = RETRIES,
    suspect: bool = False,
) -> Steps[Report]:
    """One batch, read then written, with retries of the records that changed meanwhile."""
    read, write = scripts
    report = Report(op, dry_run)
    pending = list(keys)
    for _ in range(attempts):
        if not pending:
            return report
        stored = yield read_request(read, layout, pending)
        planned = plan_batch(op, layout, pending, stored, keyring, suspect)
        results: Any = []
        if writes(op, planned, write, dry_run):
            results = yield from send(typing.cast(Script, write), planned)
        done, pending = settle(planned, results, dry_run)
        report.merge(done)
    report.conflicts += len(pending)
    return report
