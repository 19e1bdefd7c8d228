"""One source for sync and async Redis I/O.

Logic that talks to Redis is written once as a generator that yields requests (a callable taking
the client) and receives their results; ``run_sync`` and ``run_async`` drive it with a
``redis.Redis`` or a ``redis.asyncio.Redis``, whose methods share names and arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator
from typing import Any, TypeVar

__all__ = ["Request", "Steps", "run_async", "run_sync"]

T = TypeVar("T")
Request = Callable[[Any], Any]
Steps = Generator[Request, Any, T]


def run_sync(steps: Steps[T], client: Any) -> T:
    """Drive ``steps`` with a synchronous client."""
    try:
        request = next(steps)
        while True:
            request = steps.send(request(client))
    except StopIteration as stop:
        result: T = stop.value
        return result


async def run_async(steps: Steps[T], client: Any) -> T:
    """Drive ``steps`` with an asyncio client."""
    try:
        request = next(steps)
        while True:
            reply = request(client)
            if inspect.isawaitable(reply):
                reply = await reply
            request = steps.send(reply)
    except StopIteration as stop:
        result: T = stop.value
        return result
