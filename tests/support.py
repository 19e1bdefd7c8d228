"""Models and helpers shared by the tests: one model shape in four flavours (sync/async, hash/JSON).

Imported after conftest's ``pytest_configure`` has set ``REDIS_OM_URL``, so the models bind to
the test server.
"""

from __future__ import annotations

import base64
import inspect
import json
import os
from typing import Annotated, Any

import aredis_om
import redis
import redis_om
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from redis_encrypted_fields import EncryptedModel, EncryptedStr, Mask

URL_MASK = Mask("**********")


class SyncHashInstance(EncryptedModel, redis_om.HashModel, index=True):
    name: str = redis_om.Field(index=True)
    environment: str = "development"
    connection_url: Annotated[EncryptedStr, URL_MASK]
    admin_password: EncryptedStr | None = None


class SyncJsonInstance(EncryptedModel, redis_om.JsonModel, index=True):
    name: str = redis_om.Field(index=True)
    environment: str = "development"
    connection_url: Annotated[EncryptedStr, URL_MASK]
    admin_password: EncryptedStr | None = None


class AsyncHashInstance(EncryptedModel, aredis_om.HashModel, index=True):
    name: str = aredis_om.Field(index=True)
    environment: str = "development"
    connection_url: Annotated[EncryptedStr, URL_MASK]
    admin_password: EncryptedStr | None = None


class AsyncJsonInstance(EncryptedModel, aredis_om.JsonModel, index=True):
    name: str = aredis_om.Field(index=True)
    environment: str = "development"
    connection_url: Annotated[EncryptedStr, URL_MASK]
    admin_password: EncryptedStr | None = None


class SyncCredential(redis_om.EmbeddedJsonModel):
    username: str
    password: EncryptedStr


class SyncCluster(EncryptedModel, redis_om.JsonModel, index=True):
    name: str = redis_om.Field(index=True)
    primary: SyncCredential
    replicas: list[SyncCredential] = []
    tokens: list[EncryptedStr] = []


class AsyncCredential(aredis_om.EmbeddedJsonModel):
    username: str
    password: EncryptedStr


class AsyncCluster(EncryptedModel, aredis_om.JsonModel, index=True):
    name: str = aredis_om.Field(index=True)
    primary: AsyncCredential
    replicas: list[AsyncCredential] = []
    tokens: list[EncryptedStr] = []


INSTANCE_MODELS = [SyncHashInstance, SyncJsonInstance, AsyncHashInstance, AsyncJsonInstance]
CLUSTER_MODELS = [SyncCluster, AsyncCluster]


async def aw(value: Any) -> Any:
    """Await ``value`` if redis-om's async flavour returned an awaitable; one test, two flavours."""
    if inspect.isawaitable(value):
        return await value
    return value


async def all_pks(model: Any) -> list[str]:
    pks = await aw(model.all_pks())
    if hasattr(pks, "__aiter__"):
        return [pk async for pk in pks]
    return list(pks)


def client() -> redis.Redis:  # type: ignore[type-arg]
    return redis.Redis.from_url(os.environ["REDIS_OM_URL"], decode_responses=True)


def wipe(model: Any) -> None:
    """Delete every record of ``model``."""
    c = client()
    prefix = model.make_key(model._meta.primary_key_pattern.format(pk=""))
    keys = list(c.scan_iter(match=prefix + "*", count=1000))
    if keys:
        c.delete(*keys)


def is_json(model: Any) -> bool:
    return issubclass(model, (redis_om.JsonModel, aredis_om.JsonModel))


def raw(model: Any, pk: str) -> dict[str, Any]:
    """What Redis holds for a record, read without redis-om."""
    key = model.make_primary_key(pk)
    c = client()
    if is_json(model):
        return c.json().get(key) or {}  # type: ignore[no-any-return]
    return c.hgetall(key)  # type: ignore[no-any-return]


def write_raw(model: Any, pk: str, field: str, value: Any) -> None:
    """Change one stored field behind redis-om's back."""
    key = model.make_primary_key(pk)
    c = client()
    if is_json(model):
        c.json().set(key, f"$.{field}", value)
    else:
        c.hset(key, field, value)


def dump_redis() -> dict[str, Any]:
    """Every key and value in the database (for "nothing changed" and "no plaintext" checks).

    Pipelined: two round trips however many records other tests left behind.
    """
    c = client()
    keys = sorted(c.scan_iter(count=5000))
    pipe = c.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
    kinds = pipe.execute()
    pipe = c.pipeline(transaction=False)
    read = []
    for key, kind in zip(keys, kinds, strict=True):
        if kind == "hash":
            pipe.hgetall(key)
        elif kind == "ReJSON-RL":
            pipe.execute_command("JSON.GET", key)
        elif kind == "string":
            pipe.get(key)
        else:
            continue
        read.append((key, kind))
    out: dict[str, Any] = {}
    for (key, kind), value in zip(read, pipe.execute(), strict=True):
        if kind == "ReJSON-RL" and not isinstance(value, str):
            value = json.dumps(value, sort_keys=True)
        out[key] = value
    return out


def origin_encrypt_v1(plaintext: str, master_key_b64: str) -> str:
    """The origin project's encrypt_secret, as ../shared/reference/origin-format.md describes it."""
    master = base64.b64decode(master_key_b64)
    dek = AESGCM.generate_key(bit_length=256)
    nonce, dek_nonce = os.urandom(12), os.urandom(12)
    ciphertext = AESGCM(dek).encrypt(nonce, plaintext.encode(), None)
    wrapped = AESGCM(master).encrypt(dek_nonce, dek, None)
    doc = {
        "version": "v1",
        "ciphertext": base64.b64encode(ciphertext).decode(),
        "nonce": base64.b64encode(nonce).decode(),
        "wrapped_dek": base64.b64encode(wrapped).decode(),
        "dek_nonce": base64.b64encode(dek_nonce).decode(),
    }
    return base64.b64encode(json.dumps(doc).encode()).decode()


def origin_decrypt_v1(value: str, master_key_b64: str) -> str:
    """The origin project's decrypt_secret, as ../shared/reference/origin-format.md describes it:
    what a process still running the origin's module reads from a stored value."""
    doc = json.loads(base64.b64decode(value).decode("utf-8"))
    if doc.get("version") != "v1":
        raise ValueError(f"Unsupported encryption version: {doc.get('version')}")
    part = {name: base64.b64decode(doc[name]) for name in ("ciphertext", "nonce", "wrapped_dek")}
    dek_nonce = base64.b64decode(doc["dek_nonce"])
    dek = AESGCM(base64.b64decode(master_key_b64)).decrypt(dek_nonce, part["wrapped_dek"], None)
    return AESGCM(dek).decrypt(part["nonce"], part["ciphertext"], None).decode("utf-8")


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()
