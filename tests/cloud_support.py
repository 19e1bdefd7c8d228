"""What the tests of the cloud KMS providers (GCP, Azure) share: a key store of their own on the
test Redis, and the checks that a process asks the KMS once per key per cache lifetime, that a
failing KMS writes nothing, that a forked child makes its own client, and that the SDKs' debug
logs never hold key material."""

from __future__ import annotations

import base64
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from keystore_models import Vault
from support import client

from redis_encrypted_fields import KeyStore, KmsError, StoreKeyRing, set_keyring
from redis_encrypted_fields.forks import PerProcess
from redis_encrypted_fields.keys.kms import KmsProvider


@contextmanager
def key_store(redis_url: str, provider: KmsProvider) -> Iterator[KeyStore]:
    """A key store in a hash of its own, removed afterwards."""
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    store = KeyStore(c, provider, key=f"test-keystore:{uuid.uuid4().hex}")
    try:
        yield store
    finally:
        c.delete(store.key)
        c.close()


def check_one_unwrap_per_key_per_ttl(store: KeyStore, unwraps: Callable[[], int]) -> None:
    """Reads under two store keys, many times, in one process: one unwrap per key, and one more
    per key once the cache lifetime has passed. ``unwraps()`` counts the KMS's unwrap requests."""
    first = store.create()
    second = store.create()
    ttl = 1.5  # long enough for a loaded machine to do the reads within it
    before = unwraps()
    ring = StoreKeyRing(store, ttl=ttl)
    started = time.monotonic()
    for _ in range(20):
        assert ring.current.key_id_hex == second.key_id
        assert ring.get(bytes.fromhex(first.key_id)).key_id_hex == first.key_id
    assert time.monotonic() - started < ttl, "too slow to tell: the cache lifetime passed"
    assert unwraps() - before == 2
    time.sleep(ttl + 0.1)
    for _ in range(5):
        ring.current  # noqa: B018
        ring.get(bytes.fromhex(first.key_id))
    assert unwraps() - before == 4


def check_failing_kms_writes_nothing(store: KeyStore, fail: Callable[[], None]) -> KmsError:
    """With the KMS failing (``fail()``), a save under the store's key raises ``KmsError`` and
    writes nothing; returns the error."""
    store.create()
    fail()
    set_keyring(StoreKeyRing(store))
    vault = Vault(name="cloud kms", secret="s3cret")
    with pytest.raises(KmsError) as caught:
        vault.save()
    assert not client().exists(Vault.make_primary_key(vault.pk))
    return caught.value


def check_forked_child_makes_its_own_client(provider: Any, store: KeyStore) -> None:
    """A parent's thread making the SDK client holds the provider's lock at fork time: the child
    must make its own client, not wait forever for that lock."""
    record = store.create()
    ring = StoreKeyRing(store)
    clients = getattr(provider, "_clients", None)
    lock = clients.lock if isinstance(clients, PerProcess) else provider._lock
    lock.acquire()  # what a parent thread inside the client's making holds
    try:
        pid = os.fork()
        if pid == 0:  # the child: a hang is killed by the alarm, and fails the test
            code = 1
            try:
                signal.alarm(20)
                if ring.current.key_id_hex == record.key_id:
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        lock.release()
    assert os.waitstatus_to_exitcode(status) == 0
    assert ring.current.key_id_hex == record.key_id


def check_no_key_material_in_debug_logs(
    caplog: pytest.LogCaptureFixture, loggers: tuple[str, ...], provider: KmsProvider
) -> None:
    """Wrap and unwrap with every SDK logger at DEBUG: no record holds the key, in any encoding."""
    secret = bytes(range(32))
    forms = (
        secret.hex(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
    )
    for name in loggers:
        caplog.set_level(logging.DEBUG, logger=name)
    wrapped = provider.wrap(secret, {"purpose": "logs"})
    assert provider.unwrap(wrapped, {"purpose": "logs"}) == secret
    text = "\n".join(f"{r.getMessage()} {r.args!r} {r.__dict__!r}" for r in caplog.records)
    for form in forms:
        assert form not in text
