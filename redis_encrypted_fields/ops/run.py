"""Maintenance: migrate plaintext, rotate master keys and report status, streaming and safely.

Records are found with ``SCAN`` (never ``KEYS``), read and written in pipelined batches, and every
write is a compare-and-set in a Lua script: a value is replaced only if it is still what was read,
so a record the application changes meanwhile is never overwritten with a stale value, and a run
killed at any moment can simply be run again. Nothing is ever deleted, and a value that cannot be
decrypted is left as it is and reported. Once ``REDIS_SRE_REJECT_PLAINTEXT`` says no plaintext is
left, plaintext and origin v1 values found anyway are suspicious: reported and left as they are,
unless the caller accepts them (``accept_plaintext``).

The functions work on the model's stored layout (key prefix, encrypted paths) and never build
model instances, so they run at the speed of Redis rather than of validation.

The work is split by concern: ``layout`` (the model's stored layout and the Lua scripts),
``batch`` (one batch of records: decided, written, settled); here, the scan, the pass over the
keyspace and the public functions.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import aredis_om
from pydantic import BaseModel

from ..errors import EncryptionError
from ..keys import KeyRing, get_keyring
from ..keys.scope import rewrap_scope_keys
from ..model.plan import encrypted_paths
from ..model.policy import plaintext_allowed
from ..model.scope import sync_client
from ..steps import Request, Steps, Submit, Wait, run_async, run_sync
from .batch import RETRIES, Planned, plan_batch, read_request, run_batch, send, settle, writes
from .layout import HASH_CAS, HASH_READ, JSON_CAS, JSON_READ, Layout, as_text, index_name
from .report import Failure, Group, Operation, Report, Scanned
from .topology import Script, TopologyError, check, describe, fingerprint, nodes

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
            self.keys += [as_text(k) for k in found]
            self.cursor = cursor
            if int(cursor) == 0:
                # This node is done; on to the next primary of a cluster.
                self.nodes.pop(0)
                self.cursor = 0
                self.finished = not self.nodes
        batch, self.keys = self.keys[: self.count], self.keys[self.count :]
        return batch


def _read_next(scanner: _Scanner, layout: Layout, read: Script) -> Steps[tuple[list[str], Any]]:
    keys = yield from scanner.next_batch()
    if not keys:
        return keys, []
    return keys, (yield read_request(read, layout, keys))


# --- the pass over the keyspace -------------------------------------------------------------------


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
    accept_plaintext: bool = False,
    rekey: str | None = None,
) -> Steps[Report]:
    if batch_size < 1:
        raise EncryptionError("batch_size must be at least 1")
    # Read once, before anything is done (an invalid switch is an error here, not mid-run).
    suspect = not plaintext_allowed() and not accept_plaintext
    layout = Layout.of(model)
    if rekey is not None:
        if layout.scope is None:
            raise EncryptionError(f"{model.__name__} has no KeyScope field")
        layout = dataclasses.replace(layout, rekey=rekey)
    ring = keyring or get_keyring()
    client = yield _the_client
    yield from check(client)  # the whole keyspace is in sight, or nothing is done
    scope_failures: list[Failure] = []
    rewrapped = 0
    if op is Operation.ROTATE and layout.scope is not None and not dry_run and rekey is None:
        # The scope keys, not the values under them, move to the new master key.
        rewrapped, _, bad = rewrap_scope_keys(sync_client(client), ring)
        reason = "a scope key did not unwrap under the key ring (see the audit events)"
        scope_failures = [Failure(k, "scope key", reason, layout.name) for k in bad]
    read = Script(JSON_READ if layout.is_json else HASH_READ)
    read.sha = as_text((yield lambda c: c.script_load(read.text)))
    write: Script | None = None
    if op is not Operation.STATUS and not dry_run:
        write = Script(JSON_CAS if layout.is_json else HASH_CAS)
        text = write.text
        write.sha = as_text((yield lambda c: c.script_load(text)))
    scripts = (read, write)
    report: Report | None = None
    for attempt in range(_PASSES):
        before = yield from fingerprint(client)
        this = yield from _pass(
            op, layout, client, scripts, ring, dry_run, batch_size, progress, suspect
        )
        after = yield from fingerprint(client)
        report = this if report is None else report.then(this)
        if before == after:
            report.scope_keys_rewrapped += rewrapped
            report.failures += scope_failures
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
    layout: Layout,
    client: Any,
    scripts: tuple[Script, Script | None],
    ring: KeyRing,
    dry_run: bool,
    batch_size: int,
    progress: ProgressCallback | None,
    suspect: bool,
) -> Steps[Report]:
    """One pass over the model's records on every node."""
    read, write = scripts
    report = Report(op, dry_run)
    report.current_key = ring.current.key_id_hex
    report.previous_keys = ring.previous_ids
    for path in encrypted_paths(layout.model):
        report.states.setdefault(f"{layout.name}.{path}", Counter())
        report.stored.setdefault(f"{layout.name}.{path}", Counter())
    for name in layout.blind:
        report.states.setdefault(index_name(layout.name, name), Counter())
        report.stored.setdefault(index_name(layout.name, name), Counter())
    kind = "ReJSON-RL" if layout.is_json else "hash"
    match = _glob_escape(layout.prefix) + "*"
    scanner = _Scanner(match, batch_size, kind, nodes(client))
    # Three stages overlap: while this process decides batch N, Redis runs the compare-and-set
    # of batch N-1 and the read of batch N+1 (each on its own connection). Memory holds at most
    # three batches, whatever the size of the data set.
    reading = yield Submit(_read_next(scanner, layout, read))
    writing: tuple[Any, Planned] | None = None
    while True:
        keys, stored = yield Wait(reading)
        planned: Planned | None = None
        if keys:
            reading = yield Submit(_read_next(scanner, layout, read))
            planned = plan_batch(op, layout, keys, stored, ring, suspect)
        if writing is not None:
            handle, previous = writing
            results = (yield Wait(handle)) if handle is not None else []
            done, conflicted = settle(previous, results, dry_run)
            if conflicted:
                retried = run_batch(
                    op, layout, conflicted, scripts, ring, dry_run, RETRIES - 1, suspect
                )
                done.merge((yield from retried))
            report.merge(done)
            if progress is not None:
                progress(len(previous.keys))
        if planned is None:
            report.scanned.append(Scanned(layout.name, describe(client), match, report.records))
            return report
        handle = None
        if writes(op, planned, write, dry_run):
            handle = yield Submit(send(typing.cast(Script, write), planned))
        writing = (handle, planned)


# --- public API --------------------------------------------------------------------------------


def _client(model: type[BaseModel], client: Any, *, sync: bool = True) -> Any:
    if client is not None:
        return client
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
    accept_plaintext: bool = False,
) -> Report:
    """Encrypt every plaintext value and upgrade origin v1 values; leave current envelopes.

    While plaintext is refused (``REDIS_SRE_REJECT_PLAINTEXT``, ``set_plaintext_reads(False)``),
    plaintext and origin v1 values are reported as suspicious and left, unless
    ``accept_plaintext``.
    """
    steps = _steps(
        Operation.MIGRATE, model, dry_run, batch_size, keyring, progress, accept_plaintext
    )
    return run_sync(steps, _client(model, client))


def rotate(
    model: type[BaseModel],
    *,
    client: Any = None,
    dry_run: bool = False,
    batch_size: int = 500,
    keyring: KeyRing | None = None,
    progress: ProgressCallback | None = None,
    accept_plaintext: bool = False,
    scope: str | None = None,
) -> Report:
    """Bring every value under the current master key: re-wrap old envelopes, encrypt the rest
    (plaintext and origin v1 values: as ``migrate`` does). A model with a ``KeyScope``: its
    scope keys are re-wrapped, the values under them left as they are; ``scope``: the scope
    value whose values are re-wrapped under its scope's active key (``rotate_scope``)."""
    steps = _steps(
        Operation.ROTATE, model, dry_run, batch_size, keyring, progress, accept_plaintext, scope
    )
    return run_sync(steps, _client(model, client))


def status(
    model: type[BaseModel],
    *,
    client: Any = None,
    batch_size: int = 500,
    keyring: KeyRing | None = None,
    progress: ProgressCallback | None = None,
) -> Report:
    """Count the values of each encrypted field by state, decrypting each one to check it
    (while plaintext is refused, plaintext and origin v1 values count as suspicious)."""
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
    accept_plaintext: bool = False,
) -> Report:
    """``migrate`` with an asyncio client (default: the model's own)."""
    steps = _steps(
        Operation.MIGRATE, model, dry_run, batch_size, keyring, progress, accept_plaintext
    )
    return await run_async(steps, _client(model, client, sync=False))


async def arotate(
    model: type[BaseModel],
    *,
    client: Any = None,
    dry_run: bool = False,
    batch_size: int = 500,
    keyring: KeyRing | None = None,
    progress: ProgressCallback | None = None,
    accept_plaintext: bool = False,
    scope: str | None = None,
) -> Report:
    """``rotate`` with an asyncio client (default: the model's own)."""
    steps = _steps(
        Operation.ROTATE, model, dry_run, batch_size, keyring, progress, accept_plaintext, scope
    )
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
