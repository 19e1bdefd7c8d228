"""Models and helpers for the security tests (audit, leaks, tamper, misplacement).

The models have key prefixes of their own (``sec.*``), so that the operations run by these tests
(migrate, rotate, status, which scan a whole prefix) see only the records these tests write. The
module is importable by the command line as ``security_support`` (cwd = tests/).
"""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
import traceback
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aredis_om
import redis
import redis_om

from redis_encrypted_fields import EncryptedModel, EncryptedStr

TESTS = Path(__file__).parent
AUDIT_LOGGER = "redis_encrypted_fields.audit"


class SecAccount(EncryptedModel, redis_om.HashModel, index=True):
    name: str = redis_om.Field(index=True)
    password: EncryptedStr
    api_token: EncryptedStr | None = None

    class Meta:
        model_key_prefix = "sec.account"


class SecCredential(redis_om.EmbeddedJsonModel):
    user: str
    password: EncryptedStr


class SecTenant(EncryptedModel, redis_om.JsonModel, index=True):
    name: str = redis_om.Field(index=True)
    admin: SecCredential
    replicas: list[SecCredential] = []
    tokens: list[EncryptedStr] = []

    class Meta:
        model_key_prefix = "sec.tenant"


class SecAsyncAccount(EncryptedModel, aredis_om.HashModel, index=True):
    name: str = aredis_om.Field(index=True)
    password: EncryptedStr
    api_token: EncryptedStr | None = None

    class Meta:
        model_key_prefix = "sec.async-account"


class SecUnbound(redis_om.HashModel, index=True):
    """EncryptedStr without EncryptedModel: values carry no record binding."""

    name: str = redis_om.Field(index=True)
    secret: EncryptedStr

    class Meta:
        model_key_prefix = "sec.unbound"


def secret(label: str = "secret") -> str:
    """A plaintext that occurs nowhere else, so that finding it anywhere is a leak."""
    return f"{label}-{uuid.uuid4().hex}"


def client(decode: bool = True) -> redis.Redis:  # type: ignore[type-arg]
    return redis.Redis.from_url(os.environ["REDIS_OM_URL"], decode_responses=decode)


def snapshot() -> dict[bytes, bytes | None]:
    """Every key of the database with its serialized value (``DUMP``): every stored byte.

    Pipelined, so it stays fast with the tens of thousands of records other tests leave behind.
    """
    c = client(decode=False)
    keys = sorted(c.scan_iter(count=5000))
    pipe = c.pipeline(transaction=False)
    for key in keys:
        pipe.dump(key)
    return dict(zip(keys, pipe.execute(), strict=True))


def key_material(master_key_b64: str) -> list[str]:
    """The forms in which a master key could show up in text."""
    raw = base64.b64decode(master_key_b64)
    return [
        master_key_b64,
        base64.urlsafe_b64encode(raw).decode(),
        raw.hex(),
        raw.hex().upper(),
        repr(raw)[2:-1],  # as in b'...'
    ]


def exception_texts(exc: BaseException) -> list[str]:
    """Everything an exception shows: message, repr, formatted traceback, and the same for every
    exception chained to it (``__cause__``/``__context__``, even when suppressed)."""
    texts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        texts += [str(e), repr(e), repr(e.args), "".join(traceback.format_exception(e))]
        todo += [e.__cause__, e.__context__]
    return texts


class Capture(logging.Handler):
    """Keeps every record it sees."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self) -> list[str]:
        """Each record as text in every way a handler could render it."""
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        out = []
        for r in self.records:
            out += [r.getMessage(), repr(r.args), repr(r.__dict__), formatter.format(r)]
            if r.exc_info and r.exc_info[1] is not None:
                out += exception_texts(r.exc_info[1])
        return out

    def named(self, name: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.name == name]


@contextmanager
def levels(by_name: dict[str | None, int]) -> Iterator[None]:
    """Set logger levels (``None``: the root logger) and restore them afterwards."""
    loggers = {name: logging.getLogger(name) for name in by_name}
    before = {name: lg.level for name, lg in loggers.items()}
    try:
        for name, lg in loggers.items():
            lg.setLevel(by_name[name])
        yield
    finally:
        for name, lg in loggers.items():
            lg.setLevel(before[name])


@contextmanager
def captured(logger: str | None = None) -> Iterator[Capture]:
    """A ``Capture`` handler attached to ``logger`` (the root logger by default)."""
    handler = Capture()
    target = logging.getLogger(logger)
    target.addHandler(handler)
    try:
        yield handler
    finally:
        target.removeHandler(handler)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redis_encrypted_fields", *args],
        cwd=TESTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_absent(needles: Iterable[str], texts: Iterable[str], where: str = "") -> None:
    texts = list(texts)
    for needle in needles:
        for text in texts:
            assert needle not in text, f"{needle!r} found {where}: {text[:2000]}"
