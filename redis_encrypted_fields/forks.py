"""Objects whose locks a forked child must not inherit: registered once, reset in the child.

A thread of the parent that holds a lock at fork time never releases it in the child, whose
first use of the object would then wait forever. ``os.register_at_fork`` runs each registered
object's ``after_fork()`` in every child (the key store's ring, the KMS providers' clients:
``PerProcess``, and loads in flight: ``SingleFlight``).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, Protocol, TypeVar

__all__ = ["ForkAware", "PerProcess", "SingleFlight", "reset_in_children"]

_T = TypeVar("_T")
_K = TypeVar("_K", bound=Hashable)


class ForkAware(Protocol):
    def after_fork(self) -> None:
        """Reset, in a forked child, what it must not inherit (locks, work in flight)."""


_objects: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def reset_in_children(obj: ForkAware) -> None:
    """Have ``obj.after_fork()`` run in every child forked from now on, while ``obj`` lives."""
    _objects.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_objects):
        obj.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class PerProcess(Generic[_T]):
    """An object made on first use, once per process: a forked child makes its own (an SDK
    client shares its connection pool's sockets with the parent otherwise). One given to the
    constructor is used as it is, in every process.

    ``lock`` is held while the object is made; a child gets a fresh one.
    """

    __slots__ = ("__weakref__", "_made", "_make", "_pid", "lock")

    def __init__(self, make: Callable[[], _T], given: _T | None = None) -> None:
        self._make = make
        self._made = given
        self._pid = os.getpid() if given is None else None
        self.lock = threading.Lock()
        reset_in_children(self)

    def get(self) -> _T:
        made = self._made
        if made is None or (self._pid is not None and self._pid != os.getpid()):
            with self.lock:
                made = self._made
                if made is None or (self._pid is not None and self._pid != os.getpid()):
                    made = self._made = self._make()
                    self._pid = os.getpid()
        return made

    def after_fork(self) -> None:
        # A thread of the parent making the object at fork time held the lock; nothing in the
        # child would ever release it, and the child's first use would wait forever.
        self.lock = threading.Lock()


class SingleFlight(Generic[_K, _T]):
    """One load per slot at a time, across threads: the first caller runs it, the others wait
    for its result (or its exception). A forked child starts with no flight: one led by a
    thread of the parent would never end there."""

    __slots__ = ("__weakref__", "_flights", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[_K, Future[_T]] = {}
        reset_in_children(self)

    def run(self, slot: _K, load: Callable[[], _T]) -> _T:
        with self._lock:
            flight = self._flights.get(slot)
            leader = flight is None
            if flight is None:
                flight = self._flights[slot] = Future()
        if not leader:
            # No timeout needed: the leader's own calls (Redis, KMS) have theirs.
            return flight.result()
        try:
            result = load()
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        else:
            flight.set_result(result)
            return result
        finally:
            with self._lock:
                del self._flights[slot]

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._flights = {}
