"""The durable audit trail: events appended to a Redis Stream by a background thread.

The calling thread only appends ``(time, actor, event)`` to a bounded buffer (its oldest entries
dropped, and counted, when full); a daemon thread sends them in batches, one pipeline of
``XADD`` with approximate ``MAXLEN`` trimming per batch (``flush`` sends from the calling
thread). The audit Redis being slow or
unreachable costs the application nothing: short socket timeouts, no retries in redis-py, a
back-off between attempts (doubling to 30 s), and events kept in the buffer meanwhile. What is
still buffered is sent when the process exits normally (``atexit``, bounded by
``exit_timeout``). A forked child starts with an empty buffer, no connection and no thread: its
first event starts its own.

Delivery is at least once: a batch cut short by a lost connection is sent again whole; an entry
refused with an error reply is sent again alone.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..forks import reset_in_children
from .events import AuditEvent, current_actor

__all__ = [
    "DEFAULT_BUFFER",
    "DEFAULT_MAXLEN",
    "DROPPED",
    "STREAM_KEY",
    "StreamWriter",
    "client_for",
    "entry_fields",
]

STREAM_KEY = "redis-encrypted-fields:audit"
DEFAULT_MAXLEN = 1_000_000  # approximate: Redis trims whole macro nodes
DEFAULT_BUFFER = 10_000  # events held while the audit Redis is slow or away
DROPPED = "audit_dropped"  # the operation of the entry that says events were dropped
MAX_BACKOFF = 30.0

_log = logging.getLogger("redis_encrypted_fields")

_Pending = tuple[int, str, AuditEvent]  # wall time (Unix nanoseconds), actor, event


def client_for(url: str, timeout: float = 1.0) -> redis.Redis[str]:
    """A client for the audit Redis at ``url``: short timeouts, no retries of its own (the
    writer backs off instead), so that an unreachable server holds nothing up."""
    client: redis.Redis[str] = redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    return client


def entry_fields(when: float, actor: str, event: AuditEvent) -> dict[str, str]:
    """A stream entry's fields: time (Unix seconds), actor, operation, outcome, model, field,
    record, key id (empty when none); reason, error, KMS key and detail when present."""
    fields = {
        "time": f"{when:.6f}",
        "actor": actor,
        "operation": event.operation,
        "outcome": event.outcome,
        "model": event.model or "",
        "field": event.field or "",
        "record": event.record or "",
        "key_id": event.key_id or "",
    }
    for name in ("reason", "error", "kms_key_id", "detail"):
        value = getattr(event, name)
        if value:
            fields[name] = value
    return fields


def _arg(text: str) -> bytes:
    """One argument in the wire format (RESP). A record key is any text: one that is not
    valid UTF-8 is written escaped, not refused."""
    data = text.encode("utf-8", "backslashreplace")
    return b"$%d\r\n%s\r\n" % (len(data), data)


_now = time.time_ns
_CHUNK = 100  # entries encoded between two offers of the GIL
# Gives up the GIL and the CPU for a moment: time.sleep(0) does too, but costs 70 µs on Linux
# (its timer slack), os.sched_yield about one.
_yield: Callable[[], object] = getattr(os, "sched_yield", lambda: time.sleep(0))
# An entry's fields but its time and record: (actor, event[:4], event[5:]).
_Common = tuple[str, tuple[Any, ...], tuple[Any, ...]]


class _Encoder:
    """A batch of entries as ``XADD key MAXLEN ~ maxlen * field value ...`` commands in the
    wire format, sent in one pipeline: plain commands cost Redis a third of the same ``XADD``s
    run from a Lua script (measured: 0.9 against 3.6 µs per entry, the client's reading of
    the replies included 2.3 against 4.5), need no ``EVAL`` permission, and let Redis serve
    other clients between chunks of the batch rather than after all of it. What entries share
    (actor, operation, outcome, model, field, key id, ...) is encoded once and kept: an entry
    then costs its time and its record."""

    def __init__(self, key: str, maxlen: int, limit: int = 4096) -> None:
        self.head = b"".join(_arg(a) for a in ("XADD", key, "MAXLEN", "~", str(maxlen), "*"))
        self.common: dict[_Common, bytes] = {}
        self.limit = limit

    def fields(self, fields: dict[str, str]) -> bytes:
        """The command appending an entry of ``fields``."""
        return b"".join((b"*%d\r\n" % (6 + 2 * len(fields)), self.head, *_pairs(fields)))

    def _common(self, key: _Common, actor: str, event: AuditEvent) -> bytes:
        if len(self.common) >= self.limit:
            self.common.clear()
        fields = entry_fields(0.0, actor, event)
        del fields["time"], fields["record"]
        # The header counts the time and record, which follow (time's name included here).
        header = b"*%d\r\n" % (6 + 2 * (len(fields) + 2))
        common = b"".join((header, self.head, *_pairs(fields), _arg("time")))
        self.common[key] = common
        return common

    def __call__(self, taken: list[_Pending]) -> list[bytes]:
        """The commands appending ``taken``, one per entry."""
        commands: list[bytes] = []
        known = self.common
        for start in range(0, len(taken), _CHUNK):
            if start:
                # Let the application's threads have the GIL: one back from Redis would
                # otherwise wait for this loop (up to the 5 ms switch interval).
                _yield()
            for when, actor, event in taken[start : start + _CHUNK]:
                key = (actor, event[:4], event[5:])
                common = known.get(key) or self._common(key, actor, event)
                # Seconds with six decimals, from integers: formatting a float costs more.
                stamp = b"%d.%06d" % divmod(when // 1000, 1_000_000)
                record = (event.record or "").encode("utf-8", "backslashreplace")
                commands.append(
                    b"%s$%d\r\n%s\r\n$6\r\nrecord\r\n$%d\r\n%s\r\n"
                    % (common, len(stamp), stamp, len(record), record)
                )
        return commands


def _pairs(fields: dict[str, str]) -> list[bytes]:
    parts: list[bytes] = []
    for name, value in fields.items():
        parts += (_arg(name), _arg(value))
    return parts


class StreamWriter:
    """An audit consumer that appends events to the stream ``key`` of the Redis ``connect()``
    returns (called in the writer thread), at most ``maxlen`` entries (approximately)."""

    def __init__(
        self,
        connect: Callable[[], redis.Redis[str]],
        *,
        key: str = STREAM_KEY,
        maxlen: int = DEFAULT_MAXLEN,
        buffer: int = DEFAULT_BUFFER,
        batch: int = 500,
        interval: float = 0.2,
        exit_timeout: float = 2.0,
    ) -> None:
        self.connect = connect
        self.key = key
        self.maxlen = maxlen
        self.capacity = buffer
        self.batch = batch
        self.interval = interval
        self.exit_timeout = exit_timeout
        self.dropped = 0  # events dropped since this writer started (a full buffer)
        self.written = 0  # entries written
        self._fresh()
        reset_in_children(self)
        _writers.add(self)

    def _fresh(self) -> None:
        self._pending: deque[_Pending] = deque()
        self._unreported = 0  # drops not yet written to the stream as a DROPPED entry
        self._lock = threading.Lock()  # the buffer's drops and takes
        # Held while a batch is being sent (by the writer thread, or by a caller of flush):
        # one batch at a time, and a flush knows no batch is still on its way.
        self._sending = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        # The buffer's length at which a new event is looked at again (dropped, or wakes the
        # thread): the check on every event is one comparison.
        self._check_at = min(self.batch, self.capacity)
        self._thread: threading.Thread | None = None
        self._client: redis.Redis[str] | None = None
        self._conn: Any = None
        self._encode = _Encoder(self.key, self.maxlen)

    def after_fork(self) -> None:
        # The parent's buffer is the parent's to send; its connection and thread are not ours.
        self._fresh()
        self.dropped = self.written = 0

    def __call__(self, event: AuditEvent, duration: float | None = None) -> None:
        pending = self._pending
        pending.append((_now(), current_actor(), event))
        if len(pending) >= self._check_at:
            self._full()
        if self._thread is None:
            self._start()

    def _full(self) -> None:
        excess = len(self._pending) - self.capacity
        if excess > 0:
            self._drop(excess)  # the oldest
        if len(self._pending) >= self.batch:
            self._wake.set()

    def _drop(self, n: int) -> None:
        with self._lock:
            for _ in range(n):
                try:
                    self._pending.popleft()
                except IndexError:
                    break
                self.dropped += 1
                self._unreported += 1

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(
                target=self._run, name="redis-encrypted-fields-audit", daemon=True
            )
            self._thread.start()

    @property
    def pending(self) -> int:
        """Events buffered, not written yet."""
        return len(self._pending)

    def _run(self) -> None:
        delay = 0.0
        while True:
            self._wake.wait(delay or self.interval)
            self._wake.clear()
            closing = self._closed
            with self._sending:
                while self._pending or self._unreported:
                    if not self._send():
                        delay = min(max(delay * 2, 0.5), MAX_BACKOFF)
                        break
                    delay = 0.0
            if closing:
                return

    def _take(self) -> list[_Pending]:
        taken: list[_Pending] = []
        pending = self._pending
        with self._lock:
            while pending and len(taken) < self.batch:
                taken.append(pending.popleft())
        return taken

    def _send(self) -> bool:
        """One batch to the stream, in one pipeline; events whose ``XADD`` did not succeed (the
        connection lost, an error reply) go back to the buffer's front. Called with
        ``_sending`` held."""
        taken = self._take()
        unreported = self._unreported
        commands = self._encode(taken)
        if unreported:
            fields = {"time": f"{time.time():.6f}", "actor": current_actor()}
            fields |= {"operation": DROPPED, "outcome": "failed", "count": str(unreported)}
            commands.insert(0, self._encode.fields(fields))
        failed: list[_Pending] = []
        error: BaseException | None = None
        try:
            connection = self._connection()
            connection.send_packed_command([b"".join(commands)], check_health=False)
            # The replies (entry ids) are not used: left undecoded, each costs a third less.
            if unreported:
                connection.read_response(disable_decoding=True)
            for pending in taken:
                try:
                    connection.read_response(disable_decoding=True)
                except redis.ResponseError as exc:
                    # An error reply (the key holds something else, out of memory): this
                    # entry is not written; the next replies are still there to read.
                    failed.append(pending)
                    error = exc
        except Exception as exc:
            # Whatever went wrong (the server, the network, a reply), the thread goes on: the
            # events wait in the buffer for the next attempt, sent again whole.
            self._put_back(taken, reconnect=True)
            self._failed(exc)
            return False
        if unreported:
            with self._lock:
                self._unreported -= unreported
        self.written += len(taken) - len(failed) + (1 if unreported else 0)
        if error is not None:
            self._put_back(failed, reconnect=False)
            self._failed(error)
            return False
        return True

    def _connection(self) -> Any:
        """The writer thread's own connection (from the client's pool)."""
        if self._conn is None:
            if self._client is None:
                self._client = self.connect()
            self._conn = self._client.connection_pool.get_connection()
        return self._conn

    def _put_back(self, taken: list[_Pending], *, reconnect: bool) -> None:
        with self._lock:
            self._pending.extendleft(reversed(taken))
        excess = len(self._pending) - self.capacity
        if excess > 0:
            self._drop(excess)
        if reconnect:
            self._drop_connection()

    def _drop_connection(self) -> None:
        # A connection whose replies were not all read is of no further use.
        connection, self._conn = self._conn, None
        if connection is not None and self._client is not None:
            connection.disconnect()
            self._client.connection_pool.release(connection)

    def _failed(self, exc: BaseException) -> None:
        # One line per failed attempt at most every back-off: the server's name, never its URL
        # (which may hold a password).
        _log.warning(
            "audit stream unreachable (%s); %d events buffered, %d dropped so far",
            type(exc).__name__,
            len(self._pending),
            self.dropped,
        )

    def flush(self, timeout: float = 5.0) -> bool:
        """Send what is buffered now, in the calling thread (after a batch the writer thread
        is sending); whether all of it was sent within ``timeout`` seconds. A send under way
        when the time is up finishes first (the client's socket timeout bounds it)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sending.acquire(timeout=left):
                return False
            try:
                if not (self._pending or self._unreported):
                    return True
                sent = self._send()
            finally:
                self._sending.release()
            if not sent:
                # Unreachable, or refused: tried again until the time is up.
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        """Stop the thread after it has sent what is buffered (waiting ``exit_timeout`` at
        most); events that come later are buffered and not sent."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        self._wake.set()
        thread.join(self.exit_timeout)
        if not thread.is_alive():
            self._drop_connection()

    def __repr__(self) -> str:
        # Not the client: its URL may hold a password.
        return f"StreamWriter(key={self.key!r}, maxlen={self.maxlen})"


_writers: weakref.WeakSet[StreamWriter] = weakref.WeakSet()


def close_all(writers: Iterable[StreamWriter] | None = None) -> None:
    """Close the writers (every live one by default): buffered events are sent first."""
    for writer in list(_writers if writers is None else writers):
        writer.close()


atexit.register(close_all)
