"""Switches read from the environment on hot paths, parsed once per change of their value.

``os.environ.get()`` costs about 1.7 us, and some switches are consulted for every value sealed
or every record read. On POSIX ``os.environ`` keeps its bytes in a dict (``_data``) whose values
every ``os.environ`` write replaces, so a switch is parsed again only when its bytes object
changed (the cache holds that object, so its identity cannot be reused). ``keys/env.py`` reads
the key variables the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["EnvSwitch"]

T = TypeVar("T")


class EnvSwitch(Generic[T]):
    """The parsed value of the environment variable ``name`` (``parse`` of its text, ``""``
    when unset); ``parse`` raising is not cached, so a bad value is refused at every use."""

    __slots__ = ("_cache", "_parse", "_raw_name", "name")

    def __init__(self, name: str, parse: Callable[[str], T]) -> None:
        self.name = name
        self._raw_name = os.fsencode(name)
        self._parse = parse
        self._cache: tuple[object, object, T] | None = None  # (environ's dict, its bytes, value)

    def __call__(self) -> T:
        data = getattr(os.environ, "_data", None)
        cached = self._cache
        if type(data) is dict:
            raw = data.get(self._raw_name)
            if cached is not None and cached[0] is data and cached[1] is raw:
                return cached[2]
        else:
            raw = data = None  # not POSIX, or os.environ replaced: read and parsed every time
        value = self._parse(os.environ.get(self.name, ""))
        if data is not None:
            self._cache = (data, raw, value)
        return value
