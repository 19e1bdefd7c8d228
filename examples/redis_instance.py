"""A tour of redis-encrypted-fields with the origin project's ``RedisInstance`` record.

Run it with ``make demo``: a throwaway Redis Stack server is started, this script runs against it
(``REDIS_OM_URL``) and the server is stopped. With ``REDIS_OM_URL`` already set, your server is
used; the script removes the records it creates. It exits with status 1 if one of its checks fails.

This is a demo: it prints decrypted secrets to show what the application gets. Real code never
should.
"""

import json
import logging
import os
import secrets
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Optional

import redis
from redis_om import Field, HashModel, Migrator

from redis_encrypted_fields import (
    EncryptedModel,
    EncryptedStr,
    Mask,
    generate_master_key,
    get_keyring,
    is_encrypted,
)
from redis_encrypted_fields.crypto.envelope import parse

# --- the model ----------------------------------------------------------------------------------


class Environment(StrEnum):
    DEVELOPMENT = "development"
    STAGING = "staging"
    PRODUCTION = "production"


class Usage(StrEnum):
    CACHE = "cache"
    ANALYTICS = "analytics"
    SESSION = "session"
    QUEUE = "queue"
    CUSTOM = "custom"


class InstanceType(StrEnum):
    OSS_SINGLE = "oss_single"
    OSS_CLUSTER = "oss_cluster"
    REDIS_ENTERPRISE = "redis_enterprise"
    REDIS_CLOUD = "redis_cloud"
    UNKNOWN = "unknown"


def now() -> datetime:
    return datetime.now(UTC)


class RedisInstance(EncryptedModel, HashModel, index=True):
    """A Redis deployment the SRE agent manages. Secrets are ``EncryptedStr``."""

    name: str = Field(index=True)
    environment: Environment
    usage: Usage
    description: str = ""
    # The API shows this one as "**********" (the origin's mask for URLs); other secrets as "***".
    connection_url: Annotated[EncryptedStr, Mask("**********")]
    # A management URL can carry credentials (https://user:pass@host:9443), so it is a secret too.
    # Encrypted fields get plain defaults: they cannot be indexed, so redis_om.Field has nothing to
    # add (and EncryptedModel currently rejects one on them even without index options).
    # Optional[...] rather than "X | None": redis-om turns the "" a HashModel stores for None back
    # into None only for typing.Optional fields.
    admin_url: Optional[EncryptedStr] = None  # noqa: UP045
    admin_username: Optional[str] = None  # noqa: UP045
    admin_password: Optional[EncryptedStr] = None  # noqa: UP045
    instance_type: InstanceType = InstanceType.UNKNOWN
    created_at: datetime = Field(default_factory=now)
    updated_at: datetime = Field(default_factory=now)

    class Meta:
        # Every envelope is bound to its record's Redis key. redis-om's default prefix is the
        # module and class name ("__main__.RedisInstance" here), which would change with the
        # import path; a fixed prefix keeps the keys, and so the envelopes, valid.
        global_key_prefix = "sre"
        model_key_prefix = "instance"


SECRET_FIELDS = ("connection_url", "admin_url", "admin_password")

# --- small helpers for a readable run -----------------------------------------------------------

failures: list[str] = []


def check(ok: bool, what: str) -> None:
    """Print one expectation and remember it if it does not hold."""
    print(f"  [{'ok' if ok else 'FAILED'}] {what}")
    if not ok:
        failures.append(what)


def section(title: str) -> None:
    print(f"\n== {title} {'=' * max(3, 94 - len(title))}")


def show_hash(raw: dict[str, str]) -> None:
    """Print a Redis hash, one field per line; envelopes are cut short to keep lines readable."""
    for field in sorted(raw):
        value = raw[field]
        shown = f"{value[:44]}... ({len(value)} chars)" if len(value) > 60 else value
        print(f"    {field:<15} {shown}")


class CountWarnings(logging.Handler):
    """Counts the library's warnings, to check when the migration warning appears."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


# --- the tour -----------------------------------------------------------------------------------


def main() -> int:
    # The library logs plaintext found in Redis (never the value) on this logger.
    log_format = "  log: %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format=log_format)
    warnings = CountWarnings()
    logging.getLogger("redis_encrypted_fields").addHandler(warnings)

    if not os.environ.get("REDIS_SRE_MASTER_KEY"):
        # Read at use time, so setting it here is enough. Anything written with this key is
        # unreadable once the process exits: fine for a demo, never for real data.
        os.environ["REDIS_SRE_MASTER_KEY"] = generate_master_key()
        print("REDIS_SRE_MASTER_KEY is not set: using a demo key generated for this run only.")
    print(f"Master key id: {get_keyring().current.key_id_hex} (public; named in every envelope)")

    url = os.environ.get("REDIS_OM_URL", "redis://localhost:6379")
    print(f"Redis: {url}")
    Migrator().run()
    # A plain client, to see what is really stored.
    raw_redis = redis.Redis.from_url(url, decode_responses=True)

    suffix = secrets.token_hex(3)  # unique names: the script can run again on the same server
    name = f"orders-cache-{suffix}"
    connection_url = "redis://default:Orders-Cache-Pa55@orders-cache.prod.internal:6379/0"
    admin_url = "https://sre-bot:Cluster-Adm1n@re-cluster.prod.internal:9443"
    admin_password = "Cluster-Adm1n"
    plaintexts = (connection_url, admin_url, admin_password, "Pa55", "Adm1n")
    created: list[str] = []

    try:
        # (a) ---------------------------------------------------------------------------------
        section("(a) Save a record: Redis holds envelopes, never plaintext")
        instance = RedisInstance(
            name=name,
            environment=Environment.PRODUCTION,
            usage=Usage.CACHE,
            description="Order service cache",
            connection_url=connection_url,
            admin_url=admin_url,
            admin_username="sre-bot",
            admin_password=admin_password,
            instance_type=InstanceType.REDIS_ENTERPRISE,
        )
        instance.save()
        created.append(instance.pk)
        key = instance.key()
        raw = raw_redis.hgetall(key)
        print(f"  HGETALL {key}")
        show_hash(raw)
        for field in SECRET_FIELDS:
            check(is_encrypted(raw[field]), f"{field} is stored as an envelope")
        check(
            not any(p in v for p in plaintexts for v in raw.values()),
            "no secret (nor part of one) appears anywhere in the hash",
        )
        check(raw["name"] == name, "non-secret fields are stored as usual (name is searchable)")
        key_id = parse(raw["connection_url"]).key_id.hex()
        check(
            key_id == get_keyring().current.key_id_hex,
            f"the envelope names the master key that wrapped its data key ({key_id})",
        )

        # (b) ---------------------------------------------------------------------------------
        section("(b) Load it: the application works with plaintext, repr() stays masked")
        loaded = RedisInstance.get(instance.pk)
        print("  Decrypted values, as the application uses them (demo only, never log them):")
        for field in SECRET_FIELDS:
            print(f"    {field:<15} {getattr(loaded, field)}")
        check(loaded.connection_url == connection_url, "connection_url decrypts to the original")
        check(loaded.admin_url == admin_url, "admin_url decrypts to the original")
        check(loaded.admin_password == admin_password, "admin_password decrypts to the original")
        # An EncryptedStr is a str: it goes straight into a client (no connection is made here).
        client = redis.Redis.from_url(loaded.connection_url)
        host = client.connection_pool.connection_kwargs["host"]
        print(f"  redis.Redis.from_url(loaded.connection_url) -> host {host}")
        check(host == "orders-cache.prod.internal", "the plaintext URL is usable as is")
        print(f"  repr(loaded):\n    {loaded!r}")
        check(not any(p in repr(loaded) for p in plaintexts), "repr() shows no secret")

        # (c) ---------------------------------------------------------------------------------
        section("(c) JSON output (what an API returns): secrets are masked")
        api_json = loaded.model_dump_json(indent=2)
        print("  " + api_json.replace("\n", "\n  "))
        shown = json.loads(api_json)
        check(shown["connection_url"] == "**********", 'connection_url shows its mask "**********"')
        check(shown["admin_password"] == "***", 'admin_password shows as the default mask "***"')
        check(not any(p in api_json for p in plaintexts), "no secret appears in the JSON")

        # (d) ---------------------------------------------------------------------------------
        section("(d) Update with masks sent back: the secrets are kept, the rest changes")
        # A client edits what the API returned and sends all of it back, masks included: the
        # origin stored "**********" as the new URL here. A mask now means "keep the stored one".
        payload = json.loads(api_json)
        payload["description"] = "Order service cache (moved to the new cluster)"
        payload["admin_password"] = "***"  # as returned: not changed by the user
        payload["updated_at"] = now().isoformat()
        before = raw
        RedisInstance(**payload).save()
        after = raw_redis.hgetall(key)
        print(f"  Sent back: description={payload['description']!r}, admin_password='***'")
        print("  Stored admin_password, before and after:")
        print(f"    before  {before['admin_password'][:60]}...")
        print(f"    after   {after['admin_password'][:60]}...")
        reloaded = RedisInstance.get(instance.pk)
        check(reloaded.description == payload["description"], "description changed")
        check(reloaded.admin_password == admin_password, "admin_password kept (decrypts as before)")
        check(reloaded.connection_url == connection_url, 'connection_url kept ("**********" too)')
        check(
            after["admin_password"] != before["admin_password"],
            "the kept secret was encrypted afresh (new data key and nonces)",
        )
        check(all(is_encrypted(after[f]) for f in SECRET_FIELDS), "no mask was stored as a secret")

        # (e) ---------------------------------------------------------------------------------
        section("(e) Migration: a plaintext record from before encryption")
        legacy_pk = f"legacy-{suffix}"
        legacy_key = RedisInstance.make_primary_key(legacy_pk)
        legacy_url = "redis://:Sessions-Pa55@sessions.staging.internal:6379"
        legacy_password = "Sessions-Adm1n"
        stamp = str(now().timestamp())  # redis-om stores datetimes as Unix timestamps
        # Written with HSET, as the origin stored it before it encrypted anything.
        raw_redis.hset(
            legacy_key,
            mapping={
                "pk": legacy_pk,
                "name": f"sessions-{suffix}",
                "environment": "staging",
                "usage": "session",
                "description": "Session store",
                "connection_url": legacy_url,
                "admin_password": legacy_password,
                "instance_type": "oss_single",
                "created_at": stamp,
                "updated_at": stamp,
            },
        )
        created.append(legacy_pk)
        print(f"  HGETALL {legacy_key} (planted)")
        show_hash(raw_redis.hgetall(legacy_key))
        print("  RedisInstance.get(...):")
        warnings.count = 0
        old = RedisInstance.get(legacy_pk)
        check(warnings.count > 0, "reading plaintext logs a warning (the field, not the value)")
        check(old.connection_url == legacy_url, "the plaintext URL is read as is")
        check(old.admin_password == legacy_password, "the plaintext password is read as is")
        old.save()  # re-saving is the migration: every secret is encrypted on save
        migrated = raw_redis.hgetall(legacy_key)
        print(f"  HGETALL {legacy_key} (after save)")
        show_hash(migrated)
        check(
            is_encrypted(migrated["connection_url"]) and is_encrypted(migrated["admin_password"]),
            "after save, the secrets are envelopes",
        )
        check(
            not any(legacy_url in v or legacy_password in v for v in migrated.values()),
            "no plaintext is left in the hash",
        )
        warnings.count = 0
        again = RedisInstance.get(legacy_pk)
        check(warnings.count == 0, "reading it again logs no warning")
        check(again.admin_password == legacy_password, "the secret survived the migration")

        # (f) ---------------------------------------------------------------------------------
        section("(f) Find by name (an indexed plain field); secrets decrypt as with get()")
        found = RedisInstance.find(RedisInstance.name == name).all()
        print(f"  RedisInstance.find(RedisInstance.name == {name!r}).all(): {len(found)} found")
        for item in found:
            print(f"    {item!r}")
        check(len(found) == 1 and found[0].pk == instance.pk, "exactly the saved record is found")
        check(
            bool(found) and found[0].connection_url == connection_url,
            "its connection_url decrypts",
        )
    finally:
        for pk in created:
            RedisInstance.delete(pk)

    section("Summary")
    if failures:
        print(f"  {len(failures)} check(s) FAILED:")
        for what in failures:
            print(f"    - {what}")
        return 1
    print("  All checks passed. The demo records were deleted.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
