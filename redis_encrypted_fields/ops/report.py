"""What ``migrate``, ``rotate`` and ``status`` found and did: counts, grouped lines, JSON.

A report never holds a secret: values are counted by state (plaintext, origin v1, masked,
undecryptable, suspicious, empty, or the key id of the master key that wraps them), and values
that could not be brought to the wanted state are listed by record key, field, key id and reason.
"""

from __future__ import annotations

import enum
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import printable
from ..model.blind_index import INDEX_MISSING, INDEX_OUTDATED, INDEX_SUFFIX
from ..model.plan import pattern

__all__ = [
    "EMPTY",
    "LEGACY",
    "MASKED",
    "PLAINTEXT",
    "SCOPED",
    "SHREDDED",
    "SUSPICIOUS",
    "UNDECRYPTABLE",
    "Failure",
    "Group",
    "Operation",
    "Report",
    "Scanned",
    "counted",
    "key_state",
]


class Operation(enum.StrEnum):
    MIGRATE = "migrate"
    ROTATE = "rotate"
    STATUS = "status"


# What a stored value is, as the reports count it; values under a master key count as
# ``key:<key id in hex>``.
PLAINTEXT = "plaintext"
LEGACY = "origin-v1"
MASKED = "masked"
UNDECRYPTABLE = "undecryptable"
# Plaintext or an origin v1 value found while REDIS_SRE_REJECT_PLAINTEXT says none is left: a
# value written to Redis behind the application's back looks the same, so it is left as it is.
SUSPICIOUS = "suspicious"
EMPTY = "empty"
# A model with a KeyScope: values under their scope's key (whichever scope); values under a
# shredded scope key (erased: unreadable for good, counted until their records are deleted).
SCOPED = "scope-key"
SHREDDED = "shredded"
_KEY = "key:"

# Roles of a key id, relative to the key ring the operation ran with.
CURRENT = "current"
PREVIOUS = "previous"
UNKNOWN = "unknown"

# Record keys shown per group in a text line (JSON lists every one).
_SHOWN_RECORDS = 5

_key_states: dict[bytes, str] = {}


def key_state(key_id: bytes) -> str:
    """The state values wrapped by ``key_id`` count under: ``key:<hex>``."""
    state = _key_states.get(key_id)
    if state is None:
        state = _key_states.setdefault(key_id, f"{_KEY}{key_id.hex()}")
    return state


@dataclass(frozen=True, slots=True)
class Failure:
    """A value left untouched because it cannot be brought to the wanted state."""

    key: str  # the record's Redis key
    field: str  # the field's dotted path (list items by index)
    reason: str
    model: str = ""
    state: str = UNDECRYPTABLE
    key_id: str | None = None  # hex id of the master key the envelope names, if any

    def as_dict(self) -> dict[str, Any]:
        return {
            "record": self.key,
            "model": self.model,
            "field": self.field,
            "state": self.state,
            "key_id": self.key_id,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Scanned:
    """Where an operation looked for one model's records."""

    model: str
    server: str  # e.g. ``redis://127.0.0.1:6379/0``; never a password
    pattern: str  # the SCAN MATCH pattern
    records: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "server": self.server,
            "pattern": self.pattern,
            "records": self.records,
        }


@dataclass(frozen=True, slots=True)
class Group:
    """The values of one field in one state, counted (one line of ``status``)."""

    field: str  # model and field, list items as ``[]``: ``Cluster.replicas[].password``
    # ``key`` (under a master key), plaintext, origin-v1, masked, undecryptable, suspicious, empty
    state: str
    count: int
    key_id: str | None = None
    role: str | None = None  # of the key id: current, previous or unknown
    reason: str | None = None  # why these values failed
    records: tuple[str, ...] = ()  # the records of values that failed

    @property
    def failed(self) -> bool:
        return self.reason is not None

    def line(self) -> str:
        """The group as one line of text: record keys (chosen by whoever writes to Redis) and
        reasons are shown ``printable``, so a key holding a newline cannot make a line of its
        own."""
        what = f"{self.count} " + ("under" if self.state == "key" else self.state)
        if self.key_id is not None:
            what += f"{' under' if self.state != 'key' else ''} key {self.key_id} ({self.role})"
        text = f"{self.field}: {what}"
        if self.reason:
            text += f": {self.reason}"
        if self.records:
            shown = ", ".join(self.records[:_SHOWN_RECORDS])
            more = len(self.records) - _SHOWN_RECORDS
            text += f"; records: {shown}" + (f" (+{more} more)" if more > 0 else "")
        return printable(text)

    def as_dict(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "state": self.state,
            "count": self.count,
            "key_id": self.key_id,
            "role": self.role,
            "reason": self.reason,
            "records": list(self.records),
        }


@dataclass(slots=True)
class Report:
    """What an operation found and did. Never holds a secret."""

    operation: Operation
    dry_run: bool = False
    records: int = 0
    encrypted: int = 0  # plaintext values encrypted
    upgraded: int = 0  # origin v1 values rewritten in the current format
    rewrapped: int = 0  # data keys re-wrapped under the current master key
    indexed: int = 0  # blind-index companions written (missing, outdated, under an old key)
    unchanged: int = 0
    conflicts: int = 0  # records skipped because the application changed them meanwhile
    scope_keys_rewrapped: int = 0  # scope keys re-wrapped under the current master key
    unscoped: int = 0  # values of scoped models under a master key, not their scope's key
    failures: list[Failure] = field(default_factory=list)
    # Per model and field path: how many values are in each state (``status``), or were found
    # in each state before the operation (``migrate``/``rotate``).
    states: dict[str, Counter[str]] = field(default_factory=dict)
    # The same counts once the run is over: what is stored now (``status`` and a dry run
    # change nothing: as ``states``).
    stored: dict[str, Counter[str]] = field(default_factory=dict)
    # The key ring the operation ran with (hex key ids), to tell current, previous and unknown.
    current_key: str | None = None
    previous_keys: tuple[str, ...] = ()
    scanned: list[Scanned] = field(default_factory=list)
    # Passes over the keyspace: more than one when a cluster's slots moved during a pass.
    passes: int = 1

    @property
    def changed(self) -> int:
        return self.encrypted + self.upgraded + self.rewrapped

    @property
    def suspicious(self) -> int:
        """Plaintext and origin v1 values found while plaintext is refused, left as they are."""
        return sum(1 for f in self.failures if f.state == SUSPICIOUS)

    @property
    def ok(self) -> bool:
        """Every value is (or, in a dry run, would be) in the wanted state.

        For ``status``: every value decrypts and is under the current master key (or empty). For
        ``migrate`` and ``rotate``: nothing failed and nothing was skipped as changed meanwhile
        (changes a dry run would make are not failures).
        """
        return not self.problems()

    def problems(self) -> list[str]:
        """Why ``ok`` is false, one phrase per kind of problem (empty when it is true)."""
        found = []
        failed = Counter(f.state for f in self.failures)
        for state, n in sorted(failed.items()):
            found.append(f"{n} {_values(n)} {_failed_as(state)}")
        if self.conflicts:
            found.append(
                f"{self.conflicts} {_records(self.conflicts)} skipped as changed meanwhile"
            )
        if self.operation is Operation.STATUS:
            totals = self._totals()
            for state in (PLAINTEXT, LEGACY):
                n = totals[state] - failed[state]  # those that failed are counted above
                if n > 0:
                    found.append(f"{n} {state}")
            if self.unscoped:
                found.append(
                    f"{self.unscoped} {_values(self.unscoped)} not under their scope's key "
                    "(migrate moves them)"
                )
            values, companions = self._totals(index=False), self._totals(index=True)
            old = sum(n for s, n in values.items() if s.startswith(_KEY) and not self._current(s))
            if old:
                found.append(f"{old} {_values(old)} not under the current key")
            for state, what in ((INDEX_MISSING, "missing"), (INDEX_OUTDATED, "outdated")):
                if companions[state]:
                    found.append(f"{counted(companions[state], 'blind-index companion')} {what}")
            old = sum(
                n for s, n in companions.items() if s.startswith(_KEY) and not self._current(s)
            )
            if old:
                found.append(f"{counted(old, 'blind-index companion')} not under the current key")
        return found

    def role(self, key_id: str) -> str:
        """``current``, ``previous`` or ``unknown``: the key id's place in the ring used."""
        if key_id == self.current_key:
            return CURRENT
        return PREVIOUS if key_id in self.previous_keys else UNKNOWN

    def values_under(self, key_id: str) -> dict[str, int] | None:
        """The values this status report found under master key ``key_id`` (hex), decrypted or
        not, per model field (only those with some): what ``KeyStore.retire`` checks (this is
        its ``KeyUsage``). ``None`` for another operation's report, which cannot tell."""
        if self.operation is not Operation.STATUS:
            return None
        state = key_state(bytes.fromhex(key_id))
        under: dict[str, int] = {}
        for name, counts in self.states.items():
            if counts[state]:
                under[name] = under.get(name, 0) + counts[state]
        for failure in self.failures:
            if failure.key_id == key_id:  # under the key, and not decrypted
                name = f"{failure.model}.{failure.field}" if failure.model else failure.field
                under[name] = under.get(name, 0) + 1
        return under

    def groups(self, stored: bool = False) -> list[Group]:
        """One group per field and state (and key id and reason, for failures), sorted: as the
        run found the values, or (``stored``) as they are stored once it is over."""
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for name, states in (self.stored if stored else self.states).items():
            for state, n in states.items():
                counts[name, state] += n
        failed: dict[tuple[str, str, str | None, str], list[str]] = defaultdict(list)
        for f in self.failures:
            name = f"{f.model}.{pattern(f.field)}" if f.model else pattern(f.field)
            failed[name, f.state, f.key_id, f.reason].append(f.key)
            if counts.get((name, f.state)):
                counts[name, f.state] -= 1
        out = []
        for (name, state), n in counts.items():
            if n <= 0:
                continue
            if state.startswith(_KEY):
                kid = state[len(_KEY) :]
                out.append(Group(name, "key", n, kid, self.role(kid)))
            else:
                out.append(Group(name, state, n))
        for (name, state, key_id, reason), records in failed.items():
            role = self.role(key_id) if key_id is not None else None
            out.append(Group(name, state, len(records), key_id, role, reason, tuple(records)))
        order = {CURRENT: 0, PREVIOUS: 1, UNKNOWN: 2, None: 3}
        return sorted(
            out, key=lambda g: (g.field, g.failed, order[g.role], g.state, g.key_id or "")
        )

    def keys_in_use(self) -> list[tuple[str, str, int]]:
        """``(key id, role, values)`` for every key id stored values name once the run is over
        (after a rotation: the current key), current first."""
        totals: Counter[str] = Counter()
        for group in self.groups(stored=True):
            if group.key_id is not None and not group.field.endswith(INDEX_SUFFIX):
                totals[group.key_id] += group.count
        order = {CURRENT: 0, PREVIOUS: 1, UNKNOWN: 2}
        return sorted(
            ((k, self.role(k), n) for k, n in totals.items()), key=lambda t: (order[t[1]], t[0])
        )

    def merge(self, other: Report) -> None:
        self.records += other.records
        self.encrypted += other.encrypted
        self.upgraded += other.upgraded
        self.rewrapped += other.rewrapped
        self.indexed += other.indexed
        self.unchanged += other.unchanged
        self.conflicts += other.conflicts
        self.scope_keys_rewrapped += other.scope_keys_rewrapped
        self.unscoped += other.unscoped
        self.failures.extend(other.failures)
        for name, counts in other.states.items():
            self.states.setdefault(name, Counter()).update(counts)
        for name, counts in other.stored.items():
            self.stored.setdefault(name, Counter()).update(counts)
        if self.current_key is None:
            self.current_key, self.previous_keys = other.current_key, other.previous_keys
        self.scanned.extend(other.scanned)
        self.passes = max(self.passes, other.passes)

    def then(self, later: Report) -> Report:
        """This pass followed by ``later`` (a pass made again because the cluster's slots
        moved): what is stored is as ``later`` found it; changes made by both are counted."""
        later.passes += self.passes
        later.encrypted += self.encrypted
        later.upgraded += self.upgraded
        later.rewrapped += self.rewrapped
        later.indexed += self.indexed
        later.scope_keys_rewrapped += self.scope_keys_rewrapped
        # Values this pass changed were found unchanged by the later one.
        later.unchanged = max(0, later.unchanged - self.changed)
        return later

    def summary(self) -> str:
        """One line for the end of a run (``printable``, as every line of a report)."""
        return printable(self._summary())

    def _summary(self) -> str:
        name = self.operation.value
        if self.dry_run and self.operation is not Operation.STATUS:
            name += " (dry run)"
        if self.passes > 1:
            name += f" ({self.passes} passes: the cluster's slots moved)"
        head = f"{name}: {counted(self.records, 'record')}"
        if not self.records and not self.failures:
            where = "; ".join(f"{s.server}, keys {s.pattern!r}" for s in self.scanned)
            return f"{head} found{f' ({where})' if where else ''}; nothing to do"
        problems = self.problems()
        verdict = f"NOT OK: {', '.join(problems)}" if problems else "OK"
        if self.operation is Operation.STATUS:
            totals = self._totals()
            parts = ", ".join(
                f"{n} {state}"
                + (f" ({self.role(state[len(_KEY) :])})" if state.startswith(_KEY) else "")
                for state, n in sorted(totals.items())
                if n
            )
            return f"{head}; {parts or 'no values'}; {verdict}"
        verb = "would change" if self.dry_run else "changed"
        indexed = ""
        if self.indexed:
            wrote = "would write" if self.dry_run else "wrote"
            indexed = f", {wrote} {counted(self.indexed, 'companion')}"
        suspicious = self.suspicious
        left = f", {suspicious} suspicious left as they are" if suspicious else ""
        if self.scope_keys_rewrapped:
            indexed += f", {counted(self.scope_keys_rewrapped, 'scope key')} re-wrapped"
        return (
            f"{head}; {verb} {counted(self.changed, 'value')} ({self.encrypted} encrypted, "
            f"{self.upgraded} upgraded from origin v1, {self.rewrapped} re-wrapped){indexed}, "
            f"{self.unchanged} unchanged, {self.conflicts} skipped as changed meanwhile, "
            f"{len(self.failures) - suspicious} failed{left}; stored now: {self.stored_now()}; "
            f"{verdict}"
        )

    def stored_now(self) -> str:
        """The values (not companions) stored once the run is over, by state: ``6 under key
        <id> (current), 2 empty`` (a dry run changes nothing: as found)."""
        totals: Counter[str] = Counter()
        for name, counts in self.stored.items():
            if not name.endswith(INDEX_SUFFIX):
                totals.update(counts)
        parts = [
            f"{n} under key {state[len(_KEY) :]}{self._marked(state)}"
            if state.startswith(_KEY)
            else f"{n} {state}"
            for state, n in sorted(totals.items(), key=self._stored_order)
            if n
        ]
        return ", ".join(parts) or "no values"

    def as_dict(self) -> dict[str, Any]:
        """Everything the report holds, for ``--json`` and scripts."""
        return {
            "operation": self.operation.value,
            "dry_run": self.dry_run,
            "ok": self.ok,
            "problems": self.problems(),
            "records": self.records,
            "encrypted": self.encrypted,
            "upgraded": self.upgraded,
            "rewrapped": self.rewrapped,
            "indexed": self.indexed,
            "unchanged": self.unchanged,
            "changed": self.changed,
            "conflicts": self.conflicts,
            "scope_keys_rewrapped": self.scope_keys_rewrapped,
            "unscoped": self.unscoped,
            "suspicious": self.suspicious,
            "current_key": self.current_key,
            "previous_keys": list(self.previous_keys),
            "keys": [{"key_id": k, "role": role, "values": n} for k, role, n in self.keys_in_use()],
            "fields": [g.as_dict() for g in self.groups()],
            "stored": [g.as_dict() for g in self.groups(stored=True)],
            "failures": [f.as_dict() for f in self.failures],
            "scanned": [s.as_dict() for s in self.scanned],
            "passes": self.passes,
            "summary": self.summary(),
        }

    def _totals(self, index: bool | None = None) -> Counter[str]:
        """States counted over every field; ``index``: only (or no) blind-index companions."""
        totals: Counter[str] = Counter()
        for name, counts in self.states.items():
            if index is None or name.endswith(INDEX_SUFFIX) == index:
                totals.update(counts)
        return totals

    def _stored_order(self, item: tuple[str, int]) -> tuple[int, str]:
        # Values under keys first, current, previous then unknown; then the other states.
        state = item[0]
        if not state.startswith(_KEY):
            return 3, state
        return {CURRENT: 0, PREVIOUS: 1}.get(self.role(state[len(_KEY) :]), 2), state

    def _marked(self, state: str) -> str:
        return f" ({self.role(state[len(_KEY) :])})" if state.startswith(_KEY) else ""

    def _current(self, state: str) -> bool:
        return state[len(_KEY) :] == self.current_key


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: ``1 value``, ``2 values``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _values(n: int) -> str:
    return "value" if n == 1 else "values"


def _records(n: int) -> str:
    return "record" if n == 1 else "records"


def _failed_as(state: str) -> str:
    return {
        UNDECRYPTABLE: "undecryptable",
        MASKED: "holding a mask, not a secret",
        LEGACY: "in origin v1 format that did not decrypt",
        SHREDDED: "under a shredded scope key (erased; delete their records)",
        SUSPICIOUS: "suspicious (plaintext or origin v1 while plaintext is refused), left as "
        "they are: `migrate --accept-plaintext` encrypts them",
    }.get(state, "failed")


def merged(reports: Iterable[Report], operation: Operation, dry_run: bool) -> Report:
    """One report for several (one per model)."""
    total = Report(operation, dry_run)
    for report in reports:
        total.merge(report)
    return total
