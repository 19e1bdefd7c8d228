"""The durable audit trail: events appended to a Redis Stream by a background thread.

The calling thread only appends ``(time, actor, event)`` to a bounded buffer (its oldest entries
dropped, and counted, when full); a daemon thread sends them in batches, one Lua call per batch
that runs ``XADD`` with approximate ``MAXLEN`` trimming for each entry (``flush`` sends from the
calling thread). The audit Redis being slow or
unreachable costs the application nothing: short socket timeouts, no retries in redis-py, a
back-off between attempts (doubling to 30 s), and events kept in the buffer meanwhile. What is
still buffered is sent when the process exits normally (``atexit``, bounded by
``exit_timeout``). A forked child starts with an empty buffer, no connection and no thread: its
first event starts its own.

Delivery is at least once: a batch cut short by a lost connection or an error reply is sent
again whole.
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

_Pending = tuple[float, str, AuditEvent]  # wall time, actor, event


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


_now = time.time
_CHUNK = 100  # entries encoded between two offers of the GIL
# Gives up the GIL and the CPU for a moment: time.sleep(0) does too, but costs 70 µs on Linux
# (its timer slack), os.sched_yield about one.
_yield: Callable[[], object] = getattr(os, "sched_yield", lambda: time.sleep(0))
# An entry's fields but its time and record: (actor, event[:4], event[5:]).
_Common = tuple[str, tuple[Any, ...], tuple[Any, ...]]

# One call appends a batch. ARGV: MAXLEN; the number of groups; each group (what entries share:
# actor, operation, outcome, model, field, key id, ...) as its number of arguments and its
# field names and values; then each entry as three: its group, its time, its record. An entry
# costs the client three short arguments, not sixteen, and the batch one reply, not one per
# entry (reading a reply costs redis-py more than Redis takes to append an entry).
_APPEND = """
local groups, i = {}, 3
for g = 1, tonumber(ARGV[2]) do
  local n = tonumber(ARGV[i])
  local args = {KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'time', '', 'record', ''}
  for k = 1, n do args[9 + k] = ARGV[i + k] end
  groups[g] = args
  i = i + 1 + n
end
local written = 0
while i <= #ARGV do
  local args = groups[tonumber(ARGV[i])]
  args[7] = ARGV[i + 1]
  args[9] = ARGV[i + 2]
  redis.call('XADD', unpack(args))
  written = written + 1
  i = i + 3
end
return written
"""


class _Encoder:
    """A batch of entries as one call of ``_APPEND``, in the wire format. What entries share
    (their group) is encoded once and kept; an entry then costs its group's number, its time
    and its record."""

    def __init__(self, key: str, maxlen: int, limit: int = 4096) -> None:
        self.head = b"".join(_arg(a) for a in ("EVAL", _APPEND, "1", key, str(maxlen)))
        self.groups: dict[_Common, tuple[int, bytes]] = {}  # (arguments, encoded)
        self.numbers: list[bytes] = [_arg("0")]  # a group's number, encoded, by number
        self.limit = limit

    def _group(self, key: _Common, actor: str, event: AuditEvent) -> tuple[int, bytes]:
        found = self.groups.get(key)
        if found is None:
            if len(self.groups) >= self.limit:
                self.groups.clear()
            fields = entry_fields(0.0, actor, event)
            del fields["time"], fields["record"]
            found = self.groups[key] = self._fields(fields)
        return found

    @staticmethod
    def _fields(fields: dict[str, str]) -> tuple[int, bytes]:
        parts = [_arg(str(2 * len(fields)))]
        for name, value in fields.items():
            parts += (_arg(name), _arg(value))
        return len(parts), b"".join(parts)

    def _number(self, n: int) -> bytes:
        numbers = self.numbers
        while len(numbers) <= n:
            numbers.append(_arg(str(len(numbers))))
        return numbers[n]

    def __call__(self, taken: list[_Pending], extra: dict[str, str] | None = None) -> bytes:
        """The call appending ``taken`` (after an entry of ``extra`` fields, if given)."""
        numbers: dict[_Common | None, int] = {}
        defined: list[bytes] = []
        entries: list[bytes] = []
        count = 6  # EVAL, the script, 1, the key, MAXLEN, the number of groups
        if extra is not None:
            at = extra.pop("time")
            n, data = self._fields(extra)
            numbers[None] = 1
            defined.append(data)
            count += n
            entries.append(self._number(1) + _arg(at) + _arg(""))
        encoded = self.numbers
        for start in range(0, len(taken), _CHUNK):
            if start:
                # Let the application's threads have the GIL: one back from Redis would
                # otherwise wait for this loop (up to the 5 ms switch interval).
                _yield()
            for when, actor, event in taken[start : start + _CHUNK]:
                key = (actor, event[:4], event[5:])
                number = numbers.get(key)
                if number is None:
                    n, data = self._group(key, actor, event)
                    number = numbers[key] = len(numbers) + 1
                    self._number(number)
                    defined.append(data)
                    count += n
                stamp = b"%.6f" % when
                record = (event.record or "").encode("utf-8", "backslashreplace")
                entries.append(
                    b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n"
                    % (encoded[number], len(stamp), stamp, len(record), record)
                )
        count += 3 * len(entries)
        return b"".join(
            (b"*%d\r\n" % count, self.head, _arg(str(len(numbers))), *defined, *entries)
        )


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
        """One batch to the stream, in one call; on failure (the connection lost, an error
        reply) its events go back to the buffer's front. Called with ``_sending`` held."""
        taken = self._take()
        unreported = self._unreported
        extra = None
        if unreported:
            extra = {"time": f"{time.time():.6f}", "actor": current_actor()}
            extra |= {"operation": DROPPED, "outcome": "failed", "count": str(unreported)}
        command = self._encode(taken, extra)
        try:
            connection = self._connection()
            connection.send_packed_command([command], check_health=False)
            written = int(connection.read_response())
        except Exception as exc:
            # Whatever went wrong (the server, the network, a reply), the thread goes on: the
            # events wait in the buffer for the next attempt.
            self._put_back(taken, reconnect=not isinstance(exc, redis.ResponseError))
            self._failed(exc)
            return False
        if unreported:
            with self._lock:
                self._unreported -= unreported
        self.written += written
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
