"""Keeping a cloud SDK's debug logs out of a KMS call.

SDKs log request and response bodies at DEBUG (google-api-core's REST transport logs the
``plaintext`` of an encrypt request, azure-core's network trace the body of an unwrap reply):
with a KMS that is key material in the clear, in the log of any application that turns DEBUG
on. ``SdkLogGuard`` drops the DEBUG records that the calling thread emits, on the SDK's loggers,
while one of our calls runs; other threads and other levels are untouched.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["SdkLogGuard"]


class SdkLogGuard(logging.Filter):
    """Drops DEBUG records of loggers named ``prefixes`` (and their children) emitted by a thread
    inside ``quiet()``."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG or not getattr(self.local, "active", False)

    def guard(self) -> None:
        """Put the filter on every logger of the SDK that exists now (an SDK makes some loggers
        on first use: call again before each call)."""
        dotted = tuple(f"{prefix}." for prefix in self.prefixes)
        for name in list(logging.root.manager.loggerDict):
            if name in self.prefixes or name.startswith(dotted):
                logger = logging.getLogger(name)
                if self not in logger.filters:
                    logger.addFilter(self)

    @contextmanager
    def quiet(self) -> Iterator[None]:
        self.guard()
        self.local.active = True
        try:
            yield
        finally:
            self.local.active = False
