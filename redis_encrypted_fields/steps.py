"""One source for sync and async Redis I/O.

Logic that talks to Redis is written once as a generator that yields requests (a callable taking
the client) and receives their results; ``run_sync`` and ``run_async`` drive it with a
``redis.Redis`` or a ``redis.asyncio.Redis``, whose methods share names and arguments.

A generator may also yield ``Submit(steps)``: another such generator, started at once and run
alongside (sync: on a worker thread; async: as a task), so that Redis works while the caller
computes. It receives a handle and later yields ``Wait(handle)`` for the result. Each submitted
generator uses its own connection from the client's pool.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

__all__ = ["Request", "Steps", "Submit", "Wait", "run_async", "run_sync"]

T = TypeVar("T")
Request = Callable[[Any], Any]
Steps = Generator[Any, Any, T]

# Enough for what ops keeps in flight: the next batch's read and this batch's write.
_WORKERS = 2


class Submit(Generic[T]):
    """Start ``steps`` alongside the caller; the caller receives a handle to ``Wait`` on."""

    __slots__ = ("steps",)

    def __init__(self, steps: Steps[T]) -> None:
        self.steps = steps


class Wait:
    """The result of a submitted generator (its exception, if it raised)."""

    __slots__ = ("handle",)

    def __init__(self, handle: Any) -> None:
        self.handle = handle


def run_sync(steps: Steps[T], client: Any) -> T:
    """Drive ``steps`` with a synchronous client."""
    pool: ThreadPoolExecutor | None = None
    started: list[Future[Any]] = []
    try:
        item = next(steps)
        while True:
            if isinstance(item, Submit):
                if pool is None:
                    pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="redis-encrypted-fields")
                future = pool.submit(run_sync, item.steps, client)
                started.append(future)
                reply: Any = future
            elif isinstance(item, Wait):
                started.remove(item.handle)
                reply = item.handle.result()
            else:
                reply = item(client)
            item = steps.send(reply)
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        if pool is not None:
            # Anything still running (the caller failed) finishes before the caller's error is
            # raised: no request outlives the operation that made it.
            pool.shutdown(wait=True, cancel_futures=True)


async def run_async(steps: Steps[T], client: Any) -> T:
    """Drive ``steps`` with an asyncio client."""
    started: list[asyncio.Task[Any]] = []
    try:
        item = next(steps)
        while True:
            if isinstance(item, Submit):
                task = asyncio.ensure_future(run_async(item.steps, client))
                started.append(task)
                # Let the task send its first request before the caller computes.
                for _ in range(3):
                    await asyncio.sleep(0)
                reply: Any = task
            elif isinstance(item, Wait):
                started.remove(item.handle)
                reply = await item.handle
            else:
                reply = item(client)
                if inspect.isawaitable(reply):
                    reply = await reply
            item = steps.send(reply)
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        if started:  # as in run_sync: let them finish, not cut them off mid-reply
            await asyncio.gather(*started, return_exceptions=True)
