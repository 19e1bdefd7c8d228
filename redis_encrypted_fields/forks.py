"""Objects whose locks a forked child must not inherit: registered once, reset in the child.

A thread of the parent that holds a lock at fork time never releases it in the child, whose
first use of the object would then wait forever. ``os.register_at_fork`` runs each registered
object's ``after_fork()`` in every child (the key store's ring, the KMS providers' clients:
``PerProcess``).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

__all__ = ["ForkAware", "PerProcess", "reset_in_children"]

_T = TypeVar("_T")


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
