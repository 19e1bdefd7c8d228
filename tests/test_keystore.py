"""Master keys from the key store: Redis holds them wrapped by a KMS, processes cache them.

The KMS is moto_server (``moto[server]``), a real HTTP endpoint on loopback started once for the
session; boto3 reaches it through ``AWS_ENDPOINT_URL_KMS``. moto does not enforce key states or
policies, so disabled and denied keys are answered by botocore's ``Stubber`` on the client.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import gc
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from botocore.stub import Stubber
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from keystore_models import AsyncVault, Member, Vault
from scope_models import SyncHashVault
from support import client, raw, wipe

from devtools.kms_server import KmsServer
from redis_encrypted_fields import (
    AuditEvent,
    AwsKms,
    ConfigurationError,
    DecryptionError,
    KeyRing,
    KeyStore,
    KeyStoreError,
    KmsError,
    MasterKey,
    MasterKeyError,
    StoreKeyRing,
    add_audit_hook,
    decrypt_secret,
    encrypt_secret,
    get_keyring,
    ops,
    remove_audit_hook,
    set_keyring,
)
from redis_encrypted_fields.crypto.envelope import parse
from redis_encrypted_fields.keys.kms import WrappedKey
from redis_encrypted_fields.keys.scope import scope_keys, scope_redis_key
from redis_encrypted_fields.keys.store import STORE_KEY, KeyRecord, KeyState, encryption_context

TESTS = Path(__file__).parent
KEY_ID = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class KmsKey:
    alias: str
    arn: str


@pytest.fixture
def store_url(redis_url: str) -> Iterator[str]:
    """The key store's own database (``REDIS_SRE_KEYSTORE_URL``), empty for each test."""
    parts = urlsplit(redis_url)
    url = urlunsplit(parts._replace(path="/1"))
    c = redis.Redis.from_url(url)
    c.delete(STORE_KEY)  # not FLUSHDB: RediSearch drops every index on any flush
    yield url
    c.delete(STORE_KEY)
    c.close()


@pytest.fixture
def kms(kms_server: KmsServer, monkeypatch: pytest.MonkeyPatch, store_url: str) -> KmsKey:
    """A new KMS key, and the environment of a process switched to the key store."""
    for name, value in kms_server.env.items():
        monkeypatch.setenv(name, value)
    alias = f"alias/ref-{uuid.uuid4().hex[:12]}"
    arn = kms_server.create_key(alias)
    monkeypatch.setenv("REDIS_SRE_KMS_KEY_ID", alias)
    monkeypatch.setenv("REDIS_SRE_KEYSTORE_URL", store_url)
    monkeypatch.delenv("REDIS_SRE_KEY_CACHE_TTL", raising=False)
    set_keyring(None)
    return KmsKey(alias, arn)


@pytest.fixture
def vaults() -> Iterator[None]:
    wipe(Vault)
    yield
    wipe(Vault)


def store() -> KeyStore:
    return KeyStore.from_env()


def stored_docs(url: str) -> dict[str, dict[str, str]]:
    c = redis.Redis.from_url(url, decode_responses=True)
    return {k: json.loads(v) for k, v in c.hgetall(STORE_KEY).items()}


def overwrite(url: str, key_id: str, **changes: str) -> None:
    """Change a key store record behind the library's back."""
    c = redis.Redis.from_url(url, decode_responses=True)
    doc = json.loads(c.hget(STORE_KEY, key_id))
    c.hset(STORE_KEY, key_id, json.dumps({**doc, **changes}))


def cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redis_encrypted_fields", *args],
        cwd=TESTS,
        env=dict(os.environ if env is None else env),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def key_id_of(model: Any, pk: str, field: str = "secret") -> str:
    return parse(raw(model, pk)[field]).key_id.hex()


def guarded(call: Callable[[], Any], timeout: float = 90) -> Any:
    """``call()``'s result or exception; the test fails, instead of hanging, if it never returns."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert outcome, f"no answer within {timeout} s: a hang"
    return outcome[0]


class LocalKms:
    """Another KMS in one class: the provider protocol over a local AES-GCM key, slow to unwrap,
    counting its calls."""

    kms_key_id = "local-test-key"

    def __init__(self, delay: float = 0.0) -> None:
        self._aead = AESGCM(os.urandom(32))
        self.delay = delay
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    @staticmethod
    def _aad(context: Mapping[str, str]) -> bytes:
        return json.dumps(sorted(context.items())).encode()

    def generate(self, context: Mapping[str, str]) -> bytes:
        return os.urandom(32)

    def wrap(self, plaintext: bytes, context: Mapping[str, str]) -> WrappedKey:
        nonce = os.urandom(12)
        blob = nonce + self._aead.encrypt(nonce, plaintext, self._aad(context))
        return WrappedKey(blob, self.kms_key_id)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        with self._lock:
            self.calls["unwrap"] += 1
        time.sleep(self.delay)
        try:
            return self._aead.decrypt(wrapped.blob[:12], wrapped.blob[12:], self._aad(context))
        except InvalidTag:
            raise KmsError("LocalKms: the wrapped key does not open in this context") from None


# 1. The key store in Redis


def test_redis_holds_each_master_key_only_wrapped_by_kms(
    kms: KmsKey, kms_server: KmsServer, store_url: str
) -> None:
    first = store().create()
    second = store().create()
    docs = stored_docs(store_url)
    assert set(docs) == {first.key_id, second.key_id}
    assert {k: d["state"] for k, d in docs.items()} == {
        first.key_id: "decrypt-only",
        second.key_id: "active",
    }
    fields = {"wrapped", "state", "created_at", "kms_key_id", "context_version", "provider"}
    assert set(docs[first.key_id]) == {*fields, "deactivated_at"}  # when it stopped being active
    assert set(docs[second.key_id]) == fields
    for doc in docs.values():
        assert doc["kms_key_id"] == kms.arn
        assert doc["provider"] == "aws"
        assert doc["context_version"] == 2
    key = StoreKeyRing(store()).current
    assert key.key_id_hex == second.key_id
    # The record's wrapped key is KMS ciphertext of the key, bound to its key id, purpose and
    # creation time.
    plain = kms_server.client().decrypt(
        CiphertextBlob=base64.b64decode(docs[second.key_id]["wrapped"]),
        EncryptionContext=encryption_context(second.key_id, docs[second.key_id]["created_at"]),
    )["Plaintext"]
    assert MasterKey(plain) == key
    dump = json.dumps(docs) + json.dumps(sorted(client().keys("*")))
    assert key.to_base64() not in dump
    assert plain.hex() not in dump


def test_records_name_the_store_key_by_id_in_the_unchanged_format(
    kms: KmsKey, vaults: None
) -> None:
    record = store().create()
    vault = Vault(name="format", secret="s3cret")
    vault.save()
    assert raw(Vault, vault.pk)["secret"].startswith("REFv2:")
    assert key_id_of(Vault, vault.pk) == record.key_id
    assert Vault.get(vault.pk).secret == "s3cret"
    assert isinstance(get_keyring(), StoreKeyRing)
    assert get_keyring() is get_keyring()  # one ring (and one cache) per process


def test_the_store_defaults_to_the_models_redis(
    kms: KmsKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_SRE_KEYSTORE_URL")
    c = client()
    c.delete(STORE_KEY)
    try:
        record = store().create()
        assert c.hexists(STORE_KEY, record.key_id)
        assert get_keyring().current.key_id_hex == record.key_id
    finally:
        c.delete(STORE_KEY)


def test_a_wrapped_key_moved_to_another_key_id_does_not_unwrap(kms: KmsKey, store_url: str) -> None:
    old = store().create()
    new = store().create()
    overwrite(store_url, new.key_id, wrapped=stored_docs(store_url)[old.key_id]["wrapped"])
    ring = StoreKeyRing(store())
    with pytest.raises(KmsError, match=f"master key {new.key_id}: .*InvalidCiphertextException"):
        _ = ring.current
    assert ring.get(bytes.fromhex(old.key_id)).key_id_hex == old.key_id  # the others still work


def test_a_key_wrapped_for_a_records_id_must_also_have_that_id(
    kms: KmsKey, kms_server: KmsServer, store_url: str, vaults: None
) -> None:
    """KMS checks the context, not what is inside: someone allowed kms:Encrypt (or a KMS that
    compares contexts loosely, as moto does) can wrap a key they know under the active key's
    context. It must never encrypt anything."""
    active = store().create()
    known = os.urandom(32)
    blob = kms_server.client().encrypt(
        KeyId=kms.arn, Plaintext=known, EncryptionContext=active.context
    )["CiphertextBlob"]
    overwrite(store_url, active.key_id, wrapped=base64.b64encode(blob).decode())
    vault = Vault(name="planted", secret="s3cret")
    with pytest.raises(KeyStoreError, match=f"master key {active.key_id}: .*another key id"):
        vault.save()
    assert not client().exists(Vault.make_primary_key(vault.pk))


def test_only_the_configured_kms_key_unwraps(
    kms: KmsKey, kms_server: KmsServer, store_url: str
) -> None:
    """A record wrapped under another KMS key (one an intruder controls) is refused by KMS."""
    store().create()
    other = kms_server.create_key()
    material = os.urandom(32)
    key_id = MasterKey(material).key_id_hex
    blob = kms_server.client().encrypt(
        KeyId=other, Plaintext=material, EncryptionContext=encryption_context(key_id)
    )["CiphertextBlob"]
    planted = KeyRecord(key_id, KeyState.DECRYPT_ONLY, "2020-01-01T00:00:00+00:00", other, blob)
    redis.Redis.from_url(store_url).hset(STORE_KEY, key_id, planted.to_json())
    with pytest.raises(KmsError, match=f"master key {key_id}: .*AccessDeniedException"):
        StoreKeyRing(store()).get(bytes.fromhex(key_id))


# 2. Configured by the environment; env keys stay decrypt-only


def test_env_key_to_key_store_transition_end_to_end(
    kms: KmsKey, monkeypatch: pytest.MonkeyPatch, master_key: str, vaults: None
) -> None:
    env_id = MasterKey.from_base64(master_key).key_id_hex
    monkeypatch.delenv("REDIS_SRE_KMS_KEY_ID")  # before: the environment's key only
    before = [Vault(name=f"before-{i}", secret=f"old secret {i}") for i in range(5)]
    for vault in before:
        vault.save()
    assert {key_id_of(Vault, v.pk) for v in before} == {env_id}

    monkeypatch.setenv("REDIS_SRE_KMS_KEY_ID", kms.alias)  # the switch; the env key stays
    created = cli("keys", "create")
    assert created.returncode == 0, created.stderr
    store_id = created.stdout.strip()
    assert KEY_ID.fullmatch(store_id)

    # This process reads what the env key wrote and writes under the store's key.
    assert [Vault.get(v.pk).secret for v in before] == [f"old secret {i}" for i in range(5)]
    after = Vault(name="after", secret="new secret")
    after.save()
    assert key_id_of(Vault, after.pk) == store_id

    rotated = cli("rotate", "keystore_models:Vault")
    assert rotated.returncode == 0, rotated.stderr
    status = cli("status", "keystore_models:Vault")
    assert status.returncode == 0, status.stderr
    assert f"Vault.secret: 6 under key {store_id} (current)" in status.stdout
    assert env_id not in status.stdout

    monkeypatch.delenv("REDIS_SRE_MASTER_KEY")  # the env key can go now
    for i, vault in enumerate(before):
        assert Vault.get(vault.pk).secret == f"old secret {i}"
        assert key_id_of(Vault, vault.pk) == store_id
    assert Vault.get(after.pk).secret == "new secret"


def test_without_an_active_key_nothing_is_encrypted_not_even_with_the_env_key(
    kms: KmsKey, master_key: str, vaults: None
) -> None:
    vault = Vault(name="nothing", secret="s3cret")
    with pytest.raises(KeyStoreError, match="no active master key"):
        vault.save()
    assert not client().exists(Vault.make_primary_key(vault.pk))
    with pytest.raises(MasterKeyError, match="no active master key"):
        encrypt_secret("s3cret")
    # The env key still decrypts.
    set_keyring(StoreKeyRing(store(), decrypt_only=[MasterKey.from_base64(master_key)]))
    token = encrypt_secret_with(MasterKey.from_base64(master_key), "older")
    assert decrypt_secret(token) == "older"


def encrypt_secret_with(key: MasterKey, plaintext: str) -> str:
    from redis_encrypted_fields import KeyRing

    previous = get_keyring()
    set_keyring(KeyRing(key))
    try:
        return encrypt_secret(plaintext)
    finally:
        set_keyring(previous)


def test_a_store_backed_ring_set_in_code(kms: KmsKey, vaults: None) -> None:
    record = store().create()
    ring = StoreKeyRing(KeyStore.from_env(), ttl=60)
    set_keyring(ring)
    assert get_keyring() is ring
    vault = Vault(name="in code", secret="s3cret")
    vault.save()
    assert key_id_of(Vault, vault.pk) == record.key_id
    assert "s3cret" not in repr(ring)


def test_search_by_an_encrypted_field_finds_records_under_every_store_key(kms: KmsKey) -> None:
    wipe(Member)
    try:
        first = store().create()
        early = Member(email="Ada@Example.org")
        early.save()
        second = store().create()
        set_keyring(None)  # a process started after the new key
        late = Member(email="ada@example.org")
        late.save()
        assert {key_id_of(Member, m.pk, "email") for m in (early, late)} == {
            first.key_id,
            second.key_id,
        }
        found = Member.find(Member.email == "ADA@example.org").all()
        assert sorted(m.pk for m in found) == sorted([early.pk, late.pk])
    finally:
        wipe(Member)


class SwitchableKms(LocalKms):
    """A ``LocalKms`` that can be made to refuse every unwrap (an outage)."""

    down = False

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        if self.down:
            raise KmsError("SwitchableKms: down")
        return super().unwrap(wrapped, context)


def member_pks() -> list[str]:
    return sorted(m.pk for m in Member.find(Member.email == "ada@example.org").all())


def failure_of(call: Callable[[], Any]) -> type[BaseException] | None:
    """The type of what ``call()`` raised (the exception, its traceback and their frames are
    dropped here: they would keep the frames' locals alive)."""
    try:
        call()
    except Exception as exc:
        return type(exc)
    return None


def test_index_keys_expire_with_the_store_key_they_were_derived_from(store_url: str) -> None:
    """When an unwrapped key's cache lifetime ends, no cache of the library keeps it, nor the
    blind index's keys derived from it: not while the KMS is down (the search fails), not once
    it answers again (the search finds the records, under the key unwrapped again)."""
    local = SwitchableKms()
    c = redis.Redis.from_url(store_url, decode_responses=True)
    KeyStore(c, local).create()
    ttl = 0.5
    backoff = 0.2  # after the failed unwrap, the KMS is asked again only this much later
    ring = StoreKeyRing(KeyStore(c, local), ttl=ttl, backoff=backoff)
    set_keyring(ring)
    wipe(Member)
    try:
        member = Member(email="Ada@Example.org")
        member.save()
        assert member_pks() == [member.pk]
        expired = weakref.ref(ring.current)
        local.down = True
        time.sleep(ttl + 0.1)
        assert failure_of(member_pks) is KmsError
        gc.collect()
        assert expired() is None, "an expired master key is still referenced"

        local.down = False
        time.sleep(backoff + 0.1)
        assert member_pks() == [member.pk]
        expired = weakref.ref(ring.current)
        time.sleep(ttl + 0.1)
        assert member_pks() == [member.pk]
        gc.collect()
        assert expired() is None, "an expired master key is still referenced"
    finally:
        wipe(Member)


@pytest.mark.parametrize("ttl", ["0", "-5", "soon", "inf"])
def test_a_bad_cache_lifetime_is_a_configuration_error(
    kms: KmsKey, monkeypatch: pytest.MonkeyPatch, ttl: str
) -> None:
    monkeypatch.setenv("REDIS_SRE_KEY_CACHE_TTL", ttl)
    with pytest.raises(ConfigurationError, match="REDIS_SRE_KEY_CACHE_TTL must be a number"):
        get_keyring()


# 3. Few KMS calls

COUNTING_PROCESS = """
import json, sys
from redis_encrypted_fields import add_audit_hook
from keystore_models import Vault

calls = []
add_audit_hook(lambda e: calls.append([e.operation, e.key_id]) if e.operation[:4] == "kms_" else 0)
for pk in sys.argv[1].split(","):
    assert Vault.get(pk).secret == "early " + pk
vaults = [Vault(name="bulk", secret=f"secret {i}") for i in range(10_000)]
Vault.add(vaults)
found = {v.pk: v.secret for v in Vault.find(Vault.name == "bulk").all(batch_size=1000)}
assert found == {v.pk: f"secret {i}" for i, v in enumerate(vaults)}
print(json.dumps(calls))
"""


def test_a_fresh_process_makes_one_kms_call_per_key_id_for_10000_records(
    kms: KmsKey, kms_server: KmsServer, vaults: None
) -> None:
    early = store().create()
    set_keyring(StoreKeyRing(store()))
    pks = []
    for i in range(3):
        vault = Vault(pk=f"early{i}", name="early", secret=f"early early{i}")
        vault.save()
        pks.append(vault.pk)
    set_keyring(None)
    active = store().create()
    kms_server.reset_requests()
    proc = subprocess.run(
        [sys.executable, "-c", COUNTING_PROCESS, ",".join(pks)],
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # Counted by the KMS endpoint itself, and by the audit trail.
    assert Counter(kms_server.requests()) == {"Decrypt": 2}
    calls = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(calls) == sorted([["kms_decrypt", early.key_id], ["kms_decrypt", active.key_id]])


def test_concurrent_first_uses_share_one_kms_call(store_url: str) -> None:
    slow = LocalKms(delay=0.3)
    c = redis.Redis.from_url(store_url, decode_responses=True)
    old = KeyStore(c, slow).create()
    new = KeyStore(c, slow).create()
    slow.calls.clear()
    ring = StoreKeyRing(KeyStore(c, slow))
    barrier = threading.Barrier(24)
    ids = {0: None, 1: bytes.fromhex(new.key_id), 2: bytes.fromhex(old.key_id)}

    def first_use(i: int) -> str:
        barrier.wait()
        key_id = ids[i % 3]
        return (ring.current if key_id is None else ring.get(key_id)).key_id_hex

    with ThreadPoolExecutor(24) as pool:
        got = list(pool.map(first_use, range(24)))
    assert Counter(got) == {new.key_id: 16, old.key_id: 8}
    assert slow.calls["unwrap"] == 2  # one per key id


async def test_concurrent_asyncio_tasks_share_one_kms_call(
    kms: KmsKey, kms_server: KmsServer
) -> None:
    record = store().create()
    kms_server.reset_requests()

    async def save(i: int) -> str:
        vault = AsyncVault(name="task", secret=f"secret {i}")
        await vault.save()
        return str(vault.pk)

    try:
        pks = await asyncio.gather(*(save(i) for i in range(20)))
        assert {key_id_of(AsyncVault, pk) for pk in pks} == {record.key_id}
        assert kms_server.requests() == ["Decrypt"]
    finally:
        wipe(AsyncVault)


def test_a_new_key_reaches_a_running_process_without_restart(
    kms: KmsKey, monkeypatch: pytest.MonkeyPatch, kms_server: KmsServer, vaults: None
) -> None:
    ttl = 2.0
    monkeypatch.setenv("REDIS_SRE_KEY_CACHE_TTL", str(ttl))
    first = store().create()
    early = Vault(name="rollout", secret="early")
    early.save()
    warmed = time.monotonic()
    assert key_id_of(Vault, early.pk) == first.key_id

    created = cli("keys", "create")  # an operator, elsewhere
    assert created.returncode == 0, created.stderr
    second = created.stdout.strip()
    vault = Vault(name="rollout", secret="meanwhile")
    vault.save()
    if time.monotonic() - warmed < ttl * 0.8:  # still within the cached key's lifetime
        assert key_id_of(Vault, vault.pk) == first.key_id
    deadline = time.monotonic() + 60
    while key_id_of(Vault, vault.pk) != second:
        assert time.monotonic() < deadline, "the running process never used the new key"
        time.sleep(0.2)
        vault.save()
    assert Vault.get(early.pk).secret == "early"  # the first key is decrypt-only now
    records = {r.key_id: r.state for r in store().records()}
    assert records == {first.key_id: KeyState.DECRYPT_ONLY, second: KeyState.ACTIVE}


# 4. Failure is explicit


def test_kms_outage_cold_cache_fails_warm_cache_works_until_its_lifetime_ends(
    monkeypatch: pytest.MonkeyPatch, store_url: str, vaults: None
) -> None:
    ttl = 3.0
    with KmsServer() as own:  # one of our own: stopping it loses its keys
        for name, value in own.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("REDIS_SRE_KMS_KEY_ID", own.create_key())
        monkeypatch.setenv("REDIS_SRE_KEYSTORE_URL", store_url)
        old = store().create()
        set_keyring(StoreKeyRing(store()))
        early = Vault(name="outage", secret="early")
        early.save()
        new = store().create()
        warm = StoreKeyRing(store(), ttl=ttl)
        assert warm.current.key_id_hex == new.key_id
        assert warm.get(bytes.fromhex(old.key_id)).key_id_hex == old.key_id
        warmed = time.monotonic()
    # KMS is gone.
    set_keyring(warm)
    vault = Vault(name="outage", secret="during")
    if time.monotonic() - warmed < ttl * 0.6:
        vault.save()
        assert Vault.get(vault.pk).secret == "during"
        assert Vault.get(early.pk).secret == "early"

    cold = StoreKeyRing(store(), ttl=ttl)
    set_keyring(cold)
    lost = Vault(name="outage", secret="lost")
    error = guarded(lost.save)
    assert isinstance(error, KmsError)
    assert re.search(
        f"master key {new.key_id}: AWS KMS Decrypt .*EndpointConnectionError", str(error)
    )
    assert not client().exists(Vault.make_primary_key(lost.pk))
    error = guarded(lambda: Vault.get(early.pk))
    assert isinstance(error, KmsError)
    assert f"master key {old.key_id}:" in str(error)

    set_keyring(warm)
    time.sleep(max(0.0, warmed + ttl - time.monotonic()) + 0.1)
    error = guarded(Vault(name="outage", secret="later").save)
    assert isinstance(error, KmsError), "a cached key was used past its lifetime"


def test_a_kms_that_does_not_answer_is_an_error_not_a_hang(
    kms: KmsKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = store().create()
    defaults = AwsKms(kms.alias).client.meta.config
    assert (defaults.connect_timeout, defaults.read_timeout) == (2.0, 5.0)
    assert defaults.retries == {"total_max_attempts": 2, "mode": "standard"}
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", f"http://127.0.0.1:{silent.getsockname()[1]}")
        quick = AwsKms(kms.alias, read_timeout=0.5, max_attempts=1)
        ring = StoreKeyRing(KeyStore(store().client, quick))
        error = guarded(lambda: ring.current)
    assert isinstance(error, KmsError)
    assert re.search(f"master key {record.key_id}: .*ReadTimeoutError", str(error))


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("DisabledException", "is disabled."),
        ("AccessDeniedException", "User is not authorized to perform: kms:Decrypt"),
        ("KMSInvalidStateException", "is pending deletion."),
    ],
)
def test_a_disabled_or_denied_kms_key_is_a_master_key_error(
    kms: KmsKey, vaults: None, code: str, message: str
) -> None:
    record = store().create()
    refused = AwsKms(kms.alias)
    with Stubber(refused.client) as stub:
        stub.add_client_error("decrypt", service_error_code=code, service_message=message)
        stub.add_client_error("generate_data_key", service_error_code=code, service_message=message)
        set_keyring(StoreKeyRing(KeyStore(store().client, refused)))
        vault = Vault(name="refused", secret="s3cret")
        with pytest.raises(KmsError) as info:
            vault.save()  # never under another key (the env key is there)
        assert isinstance(info.value, MasterKeyError)
        assert str(info.value) == (
            f"master key {record.key_id}: AWS KMS Decrypt with {kms.alias} failed: "
            f"{code}: {message} (the record was wrapped by KMS key {kms.arn})"
        )
        assert not client().exists(Vault.make_primary_key(vault.pk))
        with pytest.raises(KmsError, match=f"new master key: AWS KMS GenerateDataKey .*{code}"):
            KeyStore(store().client, refused).create()
    assert [r.key_id for r in store().records()] == [record.key_id]


def test_no_key_material_in_logs_reprs_or_errors(
    kms: KmsKey, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # everything, botocore's request and response bodies too
    events: list[AuditEvent] = []
    hook = add_audit_hook(events.append)
    try:
        records = [store().create(), store().create()]
        ring = StoreKeyRing(store())
        keys = [ring.current, ring.get(bytes.fromhex(records[0].key_id))]
        overwrite(
            store_url,
            records[0].key_id,
            wrapped=stored_docs(store_url)[records[1].key_id]["wrapped"],
        )
        with pytest.raises(KmsError) as moved:
            StoreKeyRing(store()).get(bytes.fromhex(records[0].key_id))
    finally:
        remove_audit_hook(hook)
    assert any(r.name.startswith("botocore") for r in caplog.records)  # DEBUG was really on
    texts = [
        caplog.text,
        repr(ring),
        repr(store()),
        *map(repr, records),
        *map(repr, keys),
        str(moved.value),
        repr(moved.value),
        *(repr(e) for e in events),
        json.dumps([r.as_dict() for r in store().records()]),
    ]
    for key in keys:
        material = base64.b64decode(key.to_base64())
        for form in (key.to_base64(), material.hex(), repr(material)[2:-1]):
            assert not any(form in text for text in texts)


# 5. The command line


def test_cli_keys_create_and_list(kms: KmsKey) -> None:
    first = cli("keys", "create")
    second = cli("keys", "create")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    ids = [first.stdout.strip(), second.stdout.strip()]
    assert all(KEY_ID.fullmatch(i) for i in ids)
    table = cli("keys", "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert any(ids[0] in line and "decrypt-only" in line for line in lines)
    assert any(ids[1] in line and "active" in line for line in lines)
    listed = cli("keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    assert [(e["key_id"], e["state"], e["kms_key_id"]) for e in entries] == [
        (ids[0], "decrypt-only", kms.arn),
        (ids[1], "active", kms.arn),
    ]
    for entry in entries:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[.\d]*\+00:00", entry["created_at"])


def test_cli_keys_errors_are_one_line_and_exit_2(kms: KmsKey) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_SRE_KMS_KEY_ID"}
    no_kms = cli("keys", "create", env=env)
    assert no_kms.returncode == 2
    assert "error: no KMS configured: set REDIS_SRE_KMS_KEY_ID" in no_kms.stderr
    assert cli("keys", "list", "--json", env=env).stdout.strip() == "[]"
    bad = cli("keys", "retire", "not-a-key-id", "keystore_models:Vault")
    assert bad.returncode == 2
    assert "is not a key id" in bad.stderr
    unknown = cli("keys", "retire", "0123456789abcdef", "keystore_models:Vault")
    assert unknown.returncode == 2
    assert "no master key 0123456789abcdef in the key store" in unknown.stderr


def test_keys_retire_after_rotate_end_to_end(
    kms: KmsKey, monkeypatch: pytest.MonkeyPatch, store_url: str, vaults: None
) -> None:
    monkeypatch.setenv("REDIS_SRE_KEY_CACHE_TTL", "1")  # retiring waits for it after a demotion
    old = cli("keys", "create").stdout.strip()
    for i in range(3):
        Vault(name="retire", secret=f"secret {i}").save()
    unbound = encrypt_secret("kept outside the models")  # under the old key, rotated by no one
    new = cli("keys", "create").stdout.strip()
    assert KEY_ID.fullmatch(old)
    assert KEY_ID.fullmatch(new)
    time.sleep(1.1)

    active = cli("keys", "retire", new, "keystore_models:Vault")
    assert active.returncode != 0
    assert f"master key {new} is active" in active.stderr
    status = cli("status", "keystore_models:Vault")
    assert status.returncode == 1  # values under a previous key
    assert f"Vault.secret: 3 under key {old} (previous)" in status.stdout
    in_use = cli("keys", "retire", old, "keystore_models:Vault")
    assert in_use.returncode != 0
    assert f"master key {old} still wraps 3 values (3 in Vault.secret)" in in_use.stderr
    assert stored_docs(store_url)[old]["state"] == "decrypt-only"

    rotated = cli("rotate", "keystore_models:Vault")
    assert rotated.returncode == 0, rotated.stderr
    retired = cli("keys", "retire", old, "keystore_models:Vault")
    assert retired.returncode == 0, retired.stderr
    assert old in retired.stdout
    listed = {e["key_id"]: e["state"] for e in json.loads(cli("keys", "list", "--json").stdout)}
    assert listed == {old: "retired", new: "active"}
    assert stored_docs(store_url)[old]["wrapped"] == ""  # gone for good

    set_keyring(None)  # a fresh process's view
    assert sorted(v.secret for v in Vault.find(Vault.name == "retire").all()) == [
        f"secret {i}" for i in range(3)
    ]
    with pytest.raises(DecryptionError, match=f"master key {old} is retired"):
        decrypt_secret(unbound)


# 6. The provider seam; 8. the audit trail


def test_the_library_does_not_import_boto3_without_a_kms(vaults: None) -> None:
    check = (
        "import sys, redis_encrypted_fields, redis_encrypted_fields.cli\n"
        "from keystore_models import Vault\n"
        "v = Vault(name='plain setup', secret='s3cret'); v.save()\n"
        "assert Vault.get(v.pk).secret == 's3cret'\n"
        "assert not {'boto3', 'botocore'} & set(sys.modules), sorted(sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "REDIS_SRE_KMS_KEY_ID"}
    proc = subprocess.run(
        [sys.executable, "-c", check],
        cwd=TESTS,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_without_boto3_the_error_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # what `import boto3` finds uninstalled
    with pytest.raises(KmsError, match=r"pip install 'redis-encrypted-fields\[aws\]'"):
        _ = AwsKms("alias/anything").client


def test_another_kms_is_one_class(store_url: str, vaults: None) -> None:
    local = LocalKms()
    c = redis.Redis.from_url(store_url, decode_responses=True)
    record = KeyStore(c, local).create()
    set_keyring(StoreKeyRing(KeyStore(c, local)))
    vault = Vault(name="local kms", secret="s3cret")
    vault.save()
    assert key_id_of(Vault, vault.pk) == record.key_id
    assert Vault.get(vault.pk).secret == "s3cret"
    assert stored_docs(store_url)[record.key_id]["kms_key_id"] == "local-test-key"


def test_kms_calls_and_key_store_changes_are_audit_events(kms: KmsKey, vaults: None) -> None:
    events: list[AuditEvent] = []
    hook = add_audit_hook(events.append)
    try:
        old = store().create()
        new = store().create()
        ring = StoreKeyRing(store())
        ring.get(bytes.fromhex(old.key_id))
        remove_audit_hook(hook)  # status's own decrypt events are not the subject here
        report = ops.status(Vault)
        add_audit_hook(hook)
        time.sleep(0.2)
        store().retire(old.key_id, report, ttl=0.1)
        refused = AwsKms(kms.alias)
        with Stubber(refused.client) as stub:
            stub.add_client_error("decrypt", service_error_code="DisabledException")
            with pytest.raises(KmsError):
                StoreKeyRing(KeyStore(store().client, refused)).get(bytes.fromhex(new.key_id))
    finally:
        remove_audit_hook(hook)
    seen = [(e.operation, e.outcome, e.key_id) for e in events]
    created = [
        ("kms_generate", "ok"),
        ("kms_encrypt", "ok"),
        ("kms_decrypt", "ok"),  # the new key is unwrapped once before it becomes active
        ("key_created", "ok"),
    ]
    assert seen == [
        *((*e, old.key_id) for e in created),
        *((*e, new.key_id) for e in created),
        ("kms_decrypt", "ok", old.key_id),
        ("key_retired", "ok", old.key_id),
        ("kms_decrypt", "failed", new.key_id),
    ]
    assert all(e.kms_key_id in (kms.alias, kms.arn) for e in events)
    assert "DisabledException" in (events[-1].reason or "")
    assert all(e.model is None and e.record is None for e in events)


def test_a_forked_child_makes_its_own_kms_client_and_waits_for_no_flight_of_its_parent(
    kms: KmsKey, store_url: str
) -> None:
    """Servers that fork workers (gunicorn --preload) must not hang on a KMS call the parent had
    in progress, nor share its KMS connections."""
    slow = LocalKms(delay=1.0)
    c = redis.Redis.from_url(store_url, decode_responses=True)
    record = KeyStore(c, slow).create()
    ring = StoreKeyRing(KeyStore(c, slow))
    aws = AwsKms(kms.alias)
    parents_client = aws.client
    leader = threading.Thread(target=lambda: ring.current)
    leader.start()
    deadline = time.monotonic() + 30
    while slow.calls["unwrap"] < 2:  # create()'s own check, then the leader's call
        assert time.monotonic() < deadline
        time.sleep(0.01)
    pid = os.fork()
    if pid == 0:  # the child: a hang is killed by the alarm, and fails the test
        code = 1
        try:
            signal.alarm(20)
            if ring.current.key_id_hex == record.key_id and aws.client is not parents_client:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    leader.join()
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_forked_child_can_use_an_aws_kms_whose_lock_its_parent_held(kms: KmsKey) -> None:
    """A thread of the parent making the boto3 client holds the provider's lock; a child forked
    meanwhile must make its own client, not wait for a lock no thread of it will release."""
    record = store().create()
    aws = AwsKms(kms.alias)
    ring = StoreKeyRing(KeyStore(store().client, aws))
    aws._clients.lock.acquire()  # what a parent thread inside `aws.client` holds
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
        aws._clients.lock.release()
    assert os.waitstatus_to_exitcode(status) == 0
    assert ring.current.key_id_hex == record.key_id  # and the parent's provider still works


def test_a_planted_record_costs_one_kms_call_per_back_off_not_one_per_read(
    kms: KmsKey, kms_server: KmsServer, store_url: str, vaults: None
) -> None:
    """A record for an unknown key id with a junk wrapped key, and values naming that id: reads
    must not turn into one failing KMS Decrypt each (quota, throttling of real unwraps)."""
    active = store().create()
    planted = MasterKey.generate()
    set_keyring(KeyRing(planted))
    pks = []
    for i in range(5):
        vault = Vault(name="planted", secret=f"s3cret {i}")
        vault.save()
        pks.append(vault.pk)
    junk = KeyRecord(
        planted.key_id_hex, KeyState.DECRYPT_ONLY, "2020-01-01T00:00:00+00:00", kms.arn, b"junk"
    )
    redis.Redis.from_url(store_url).hset(STORE_KEY, planted.key_id_hex, junk.to_json())
    set_keyring(None)  # a process configured by the environment, as in production
    kms_server.reset_requests()
    errors = []
    for _ in range(5):
        for pk in pks:
            with pytest.raises(KmsError) as info:
                Vault.get(pk)
            errors.append(str(info.value))
    assert kms_server.requests() == ["Decrypt"]
    assert all(f"master key {planted.key_id_hex}:" in e for e in errors)
    assert "InvalidCiphertextException" in errors[0]
    assert all("the KMS is not asked again for" in e for e in errors[1:])
    # The real keys are not held back.
    fresh = Vault(name="fresh", secret="still works")
    fresh.save()
    assert Vault.get(fresh.pk).secret == "still works"
    assert key_id_of(Vault, fresh.pk) == active.key_id

    # Once the back-off has passed, the KMS is asked again: once, then the back-off doubles.
    ring = StoreKeyRing(store(), backoff=1.0)
    set_keyring(ring)
    kms_server.reset_requests()
    for _ in range(10):
        with pytest.raises(KmsError):
            Vault.get(pks[0])
    assert kms_server.requests() == ["Decrypt"]
    time.sleep(1.2)
    for _ in range(10):
        with pytest.raises(KmsError):
            Vault.get(pks[0])
    time.sleep(1.0)  # within the doubled back-off (2 s)
    with pytest.raises(KmsError, match="the KMS is not asked again for 1 s"):
        Vault.get(pks[0])
    assert kms_server.requests() == ["Decrypt", "Decrypt"]


# 9. Rolling the store back (issue 19)


def test_a_retired_key_written_back_as_active_never_encrypts(
    kms: KmsKey, monkeypatch: pytest.MonkeyPatch, store_url: str, vaults: None
) -> None:
    """After create, rotate, retire, someone with write access to Redis (and the old key, from
    the exposure that caused the rotation) writes the old key's record back from a backup as
    active, and demotes the new key. No process, running or fresh, may encrypt under it."""
    ttl = 1.0
    monkeypatch.setenv("REDIS_SRE_KEY_CACHE_TTL", str(ttl))
    old = store().create()
    backup = stored_docs(store_url)[old.key_id]
    running = get_keyring()  # a process that runs throughout
    vault = Vault(name="replay", secret="before")
    vault.save()
    new = store().create()
    time.sleep(ttl + 0.1)
    vault.secret = "after"
    vault.save()
    assert key_id_of(Vault, vault.pk) == new.key_id
    ops.rotate(Vault)
    store().retire(old.key_id, ops.status(Vault))
    assert stored_docs(store_url)[old.key_id]["wrapped"] == ""

    events: list[AuditEvent] = []
    hook = add_audit_hook(events.append)
    try:
        replayed = {**backup, "state": "active"}
        redis.Redis.from_url(store_url).hset(STORE_KEY, old.key_id, json.dumps(replayed))
        overwrite(store_url, new.key_id, state="decrypt-only")
        time.sleep(ttl + 0.1)  # the running process re-reads which key is active
        for ring in (running, StoreKeyRing.from_env()):
            set_keyring(ring)
            attempt = Vault(name="replay", secret="under the replayed key?")
            with pytest.raises(
                KeyStoreError,
                match=f"master key {old.key_id} is active but older than master key {new.key_id}",
            ):
                attempt.save()
            assert not client().exists(Vault.make_primary_key(attempt.pk))
            with pytest.raises(KeyStoreError, match="rolled back"):
                encrypt_secret("under the replayed key?")
            assert Vault.get(vault.pk).secret == "after"  # reads go on

        # The replayed record also claims to be the newest: a fresh process's KMS refuses the
        # changed creation time (it is in the encryption context); the running process refuses
        # a key it has seen demoted.
        overwrite(store_url, old.key_id, created_at="2099-01-01T00:00:00.000+00:00")
        set_keyring(running)
        with pytest.raises(KeyStoreError, match="this process has seen it replaced"):
            encrypt_secret("under the replayed key?")
        set_keyring(StoreKeyRing.from_env())
        with pytest.raises(KmsError, match=f"master key {old.key_id}: .*InvalidCiphertext"):
            encrypt_secret("under the replayed key?")
    finally:
        remove_audit_hook(hook)
    refused = [e for e in events if e.operation == "key_refused"]
    assert len(refused) == 5
    assert {(e.outcome, e.key_id, e.kms_key_id) for e in refused} == {
        ("failed", old.key_id, kms.arn)
    }
    assert "rolled back" in (refused[0].reason or "")
    assert not [e for e in events if e.operation == "encrypt" and e.key_id == old.key_id]


def test_keys_retire_prints_the_kms_policy_statement_that_denies_the_retired_key(
    kms: KmsKey, kms_server: KmsServer, monkeypatch: pytest.MonkeyPatch, store_url: str
) -> None:
    """Deleting the wrapped key from Redis is undone by a backup of the record; only the KMS key
    policy makes retirement final. `keys retire` prints the statement, ready to paste."""
    monkeypatch.setenv("REDIS_SRE_KEY_CACHE_TTL", "1")
    old = store().create()
    backup = stored_docs(store_url)[old.key_id]
    store().create()
    time.sleep(1.1)
    retired = cli("keys", "retire", old.key_id, "keystore_models:Vault")
    assert retired.returncode == 0, retired.stderr
    first, _, rest = retired.stdout.partition("\n")
    assert first == f"retired {old.key_id}"
    statement = json.loads(rest)
    assert statement == {
        "Sid": f"DenyRetiredMasterKey{old.key_id}",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "kms:Decrypt",
        "Resource": "*",
        "Condition": {
            "StringEquals": {
                "kms:EncryptionContext:purpose": "redis-encrypted-fields master key",
                "kms:EncryptionContext:key_id": old.key_id,
            }
        },
    }
    assert kms.arn in retired.stderr
    # The condition names the context the key store really unwraps the backup with.
    context = KeyRecord.from_json(old.key_id, json.dumps(backup)).context
    condition = {
        name.removeprefix("kms:EncryptionContext:"): value
        for name, value in statement["Condition"]["StringEquals"].items()
    }
    assert condition.items() <= context.items()
    plain = kms_server.client().decrypt(
        CiphertextBlob=base64.b64decode(backup["wrapped"]), EncryptionContext=context
    )["Plaintext"]
    assert MasterKey(plain).key_id_hex == old.key_id  # what the statement must deny


def test_keys_retire_waits_until_no_process_can_still_encrypt_with_the_key(
    kms: KmsKey, monkeypatch: pytest.MonkeyPatch, store_url: str, vaults: None
) -> None:
    """A process that read the active key just before `keys create` encrypts with it for up to
    its cache lifetime: retiring it before then would lose what those processes write."""
    ttl = 4.0
    monkeypatch.setenv("REDIS_SRE_KEY_CACHE_TTL", str(ttl))
    old = store().create()
    running = StoreKeyRing(store(), ttl=ttl)
    assert running.current.key_id_hex == old.key_id
    store().create()
    set_keyring(running)
    late = Vault(name="late", secret="written by a process that has the old key cached")
    late.save()
    assert key_id_of(Vault, late.pk) == old.key_id
    set_keyring(None)
    ops.rotate(Vault)
    assert ops.status(Vault).ok  # nothing under the old key: as far as status can tell

    refused = cli("keys", "retire", old.key_id, "keystore_models:Vault")
    assert refused.returncode == 2
    assert re.search(
        f"error: master key {old.key_id} stopped being active at .*: processes may encrypt with "
        r"it until their key cache lifetime \(4 s, REDIS_SRE_KEY_CACHE_TTL\) has passed; "
        r"retire it in \d s",
        refused.stderr,
    )
    with pytest.raises(KeyStoreError, match="retire it in"):
        store().retire(old.key_id, ops.status(Vault))
    doc = stored_docs(store_url)[old.key_id]
    assert doc["state"] == "decrypt-only"
    assert doc["wrapped"]

    until = datetime.datetime.fromisoformat(doc["deactivated_at"]) + datetime.timedelta(seconds=ttl)
    time.sleep(max(0.0, (until - datetime.datetime.now(datetime.UTC)).total_seconds()) + 0.3)
    retired = cli("keys", "retire", old.key_id, "keystore_models:Vault")
    assert retired.returncode == 0, retired.stderr
    assert Vault.get(late.pk).secret == "written by a process that has the old key cached"


def test_a_new_key_is_newer_than_every_listed_key_whatever_the_clock(
    kms: KmsKey, store_url: str
) -> None:
    """Rings refuse an active key older than a listed one: a key made on a machine whose clock
    is behind must not be refused."""
    ahead = MasterKey.generate().key_id_hex
    future = KeyRecord(ahead, KeyState.DECRYPT_ONLY, "2099-01-01T00:00:00.000+00:00", kms.arn, b"x")
    redis.Redis.from_url(store_url).hset(STORE_KEY, ahead, future.to_json())
    record = store().create()
    assert record.created_at > "2099-01-01T00:00:00.000+00:00"
    assert StoreKeyRing(store()).current.key_id_hex == record.key_id
    overwrite(store_url, record.key_id, created_at="not a time")
    with pytest.raises(KeyStoreError, match=f"record of {record.key_id} is malformed"):
        _ = StoreKeyRing(store()).current


def test_a_key_creation_overtaken_by_another_does_not_activate_the_older_key(
    store_url: str,
) -> None:
    """Two `keys create` at once: the one that finishes last must not make its key, older than
    the other's, the active one (rings would refuse it)."""
    c = redis.Redis.from_url(store_url, decode_responses=True)
    first = KeyStore(c, LocalKms()).create()
    overtaking: list[KeyRecord] = []

    class Overtaken(LocalKms):
        def wrap(self, plaintext: bytes, context: Mapping[str, str]) -> WrappedKey:
            if not overtaking:  # another operator's `keys create` runs meanwhile
                overtaking.append(KeyStore(c, LocalKms()).create())
            return super().wrap(plaintext, context)

    with pytest.raises(KeyStoreError, match="was created meanwhile") as info:
        KeyStore(c, Overtaken()).create()
    assert f"master key {overtaking[0].key_id} was created meanwhile" in str(info.value)
    states = {r.key_id: r.state for r in KeyStore(c).records()}
    assert states == {first.key_id: KeyState.DECRYPT_ONLY, overtaking[0].key_id: KeyState.ACTIVE}


def test_retire_refuses_without_a_status_check_of_the_data(kms: KmsKey, vaults: None) -> None:
    """What retire checks comes from the maintenance reports (``KeyUsage``): none, or a report
    that did not look at every value (migrate, rotate), is refused, not taken as 'no value'."""
    old = store().create()
    store().create()
    time.sleep(0.2)
    for unchecked in ((), (ops.migrate(Vault, dry_run=True),)):
        with pytest.raises(KeyStoreError, match=f"not retiring master key {old.key_id} unchecked"):
            store().retire(old.key_id, *unchecked, ttl=0.1)
    assert store().retire(old.key_id, ops.status(Vault), ttl=0.1).state is KeyState.RETIRED


# 6. Issue 21: where the store is, what the listing and the KMS errors say


def test_url_moves_the_data_not_the_key_store(
    kms: KmsKey, store_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--url`` names the models' server and database; the key store stays where its settings
    say (here REDIS_OM_URL, REDIS_SRE_KEYSTORE_URL being unset)."""
    key_id = store().create().key_id  # in the store's database
    data_url = urlunsplit(urlsplit(redis_url)._replace(path="/5"))
    data = redis.Redis.from_url(data_url, decode_responses=True)
    moved = Vault.make_primary_key("moved")
    data.delete(*data.keys(Vault.make_primary_key("*")) or ["-"])
    data.hset(moved, mapping={"pk": "moved", "name": "n", "secret": "plain"})
    env = {k: v for k, v in os.environ.items() if k != "REDIS_SRE_KEYSTORE_URL"}
    env["REDIS_OM_URL"] = store_url
    try:
        migrated = cli("migrate", "keystore_models:Vault", "--url", data_url, env=env)
        assert migrated.returncode == 0, migrated.stderr
        assert parse(data.hget(moved, "secret")).key_id.hex() == key_id
        status = cli("status", "keystore_models:Vault", "--url", data_url, env=env)
        assert status.returncode == 0, status.stderr
        assert f"Vault.secret: 1 under key {key_id} (current)" in status.stdout
    finally:
        data.delete(moved)
        data.close()


def test_no_active_key_names_the_server_and_database_looked_in_without_credentials(
    kms: KmsKey, store_url: str
) -> None:
    parts = urlsplit(store_url)
    with pytest.raises(KeyStoreError) as info:
        store().active()
    assert str(info.value).startswith(
        f"the key store at {parts.hostname}:{parts.port} db 1 (from REDIS_SRE_KEYSTORE_URL) has "
        "no active master key"
    )
    status = cli("status", "keystore_models:Vault")
    assert status.returncode == 2
    assert f"{parts.hostname}:{parts.port} db 1 (from REDIS_SRE_KEYSTORE_URL)" in status.stderr
    # A URL with credentials: where, never who or with what password.
    elsewhere = KeyStore.from_env({"REDIS_OM_URL": "redis://alice:s3cr3t@db.example:6380/4"})
    assert elsewhere.location == (
        "db.example:6380 db 4 (from REDIS_OM_URL, REDIS_SRE_KEYSTORE_URL being unset)"
    )


def test_cli_keys_list_columns_are_apart_and_aligned(kms: KmsKey) -> None:
    ids = [cli("keys", "create").stdout.strip() for _ in range(2)]
    listed = cli("keys", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split("  ")[0] == "key id"
    records = {r.key_id: r for r in store().records()}
    assert [row.split()[:3] + row.split()[4:] for row in rows] == [
        [i, records[i].state.value, records[i].created_at, "aws", kms.arn] for i in ids
    ]
    for row in rows:  # every value starts under its heading
        assert row.index(kms.arn) == header.index("KMS key")
        assert row.index(records[row.split()[0]].created_at) == header.index("created at")


def test_an_empty_kms_key_id_is_named_by_the_keys_commands(kms: KmsKey) -> None:
    created = cli("keys", "create", env={**os.environ, "REDIS_SRE_KMS_KEY_ID": ""})
    assert created.returncode == 2
    assert "error: no KMS configured: REDIS_SRE_KMS_KEY_ID is set but empty" in created.stderr


def test_a_denied_unwrap_names_the_kms_key_that_wrapped_the_record(
    kms: KmsKey, vaults: None
) -> None:
    store().create()
    denied = AwsKms(kms.alias)
    with Stubber(denied.client) as stub:
        stub.add_client_error(
            "decrypt", service_error_code="AccessDeniedException", service_message="denied"
        )
        with pytest.raises(KmsError) as info:
            StoreKeyRing(KeyStore(store().client, denied)).current  # noqa: B018
    assert "AccessDeniedException" in str(info.value)
    assert str(info.value).endswith(f"(the record was wrapped by KMS key {kms.arn})")


def test_scope_keys_wrapped_by_the_kms_directly_are_bound_to_their_scope(
    kms: KmsKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    store().create()
    monkeypatch.setenv("REDIS_SRE_SCOPE_KEY_WRAP", "kms")
    acme, globex = f"k-{uuid.uuid4().hex[:10]}", f"k-{uuid.uuid4().hex[:10]}"
    for tenant in (acme, globex):
        SyncHashVault(tenant_id=tenant, name="n", password=f"pw-{tenant}").save()
    c = client()
    stored = c.hgetall(scope_redis_key("tenant", acme))
    record = json.loads(stored[f"k:{stored['active']}"])
    assert "wrapped" not in record  # not by the master key: by the KMS, with the scope as context
    assert record["kms_key_id"] == kms.arn
    scope_keys.clear()
    mine = SyncHashVault.find(SyncHashVault.tenant_id == acme).all()
    assert [m.password.get_secret_value() for m in mine] == [f"pw-{acme}"]
    # The KMS refuses a scope key moved to another scope (its context names acme).
    theirs = c.hgetall(scope_redis_key("tenant", globex))
    c.hset(scope_redis_key("tenant", globex), f"k:{theirs['active']}", json.dumps(record))
    scope_keys.clear()
    with pytest.raises(KmsError):
        SyncHashVault.find(SyncHashVault.tenant_id == globex).all()
