"""Objects whose locks a forked child must not inherit: registered once, reset in the child.

A thread of the parent that holds a lock at fork time never releases it in the child, whose
first use of the object would then wait forever. ``os.register_at_fork`` runs each registered
object's ``after_fork()`` in every child (the key store's ring, the AWS KMS provider).
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["ForkAware", "reset_in_children"]


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
