"""Benchmark 7: master keys from the key store (wrapped by KMS, cached) against an env key.

Warm: the encrypted round trip of benchmark 1 (``save()`` + ``get()``), and the envelope of
benchmark 2, with a store-backed key ring (its keys unwrapped once, then cached) and with the
environment's key, interleaved in one process. Both rings are set in code (``set_keyring``), so
that the two sides differ only in the ring. KMS is moto_server on loopback (``devtools/
kms_server.py``); no KMS request may happen while the warm figures are taken.

Timings on a shared two-core machine move by several percent from one round to the next, more
than the difference measured here; so the same warm operations are also counted in instructions
by valgrind (as benchmark 6 does), deterministic. That child process uses a local stand-in for
KMS (``_LocalKms``): with a warm cache no KMS call is made, whatever the provider.

Cold: the first record of a fresh process (import, first ``save()`` + ``get()``), with each kind
of key, in new processes, alternating. With the key store, the first record also imports boto3,
reads the store and makes the one KMS call of the process.
"""

from __future__ import annotations

import gc
import json
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from devtools.kms_server import KmsServer
from redis_encrypted_fields import (
    KeyStore,
    StoreKeyRing,
    decrypt_secret,
    encrypt_secret,
    get_keyring,
    set_keyring,
)
from redis_encrypted_fields.keys import AwsKms, WrappedKey

from . import BENCHMARKS
from .harness import (
    COMPARISON_HEADER,
    BenchmarkError,
    Comparison,
    Section,
    Settings,
    compare,
    fmt_time,
    table,
)
from .instructions import _count
from .models import FLAVOURS, RUN_PREFIX, secret_values
from .roundtrip import check_round_trip, round_trip_op

__all__ = ["GOAL", "run"]

GOAL = 1.02
REPO_ROOT = Path(__file__).resolve().parent.parent
STORE_KEY = f"{RUN_PREFIX}:keystore"  # this run's own key store, removed by ``cleanup``
# Warm figures: a cache lifetime longer than the run (a refresh, once per lifetime, is a KMS
# call and a Redis read; under valgrind the run lasts longer than the default 300 s).
WARM_TTL = 24 * 3600.0

# A fresh process: import the library and a model, then time its first record. argv: "env" or
# "store", the KMS key ARN, the store's Redis key.
COLD = """
import json, os, sys, time
start = time.perf_counter()
import redis
from redis_encrypted_fields import KeyStore, StoreKeyRing, set_keyring
from redis_encrypted_fields.keys import AwsKms, WrappedKey
from benchmarks.models import SyncHashEncrypted, secret_values
imported = time.perf_counter()
if sys.argv[1] == "store":
    client = redis.Redis.from_url(os.environ["REDIS_OM_URL"], decode_responses=True)
    set_keyring(StoreKeyRing(KeyStore(client, AwsKms(sys.argv[2]), key=sys.argv[3])))
record = SyncHashEncrypted(**secret_values(0))
first = time.perf_counter()
record.save()
back = SyncHashEncrypted.get(record.pk)
done = time.perf_counter()
assert back.admin_password == secret_values(0)["admin_password"]
SyncHashEncrypted.delete(record.pk)
print(json.dumps({"import": imported - start, "first": done - first}))
"""


@contextmanager
def _kms_environment(server: KmsServer) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in server.env}
    os.environ.update(server.env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _cold(mode: str, arn: str) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", COLD, mode, arn, STORE_KEY],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchmarkError(f"cold start ({mode}) failed:\n{proc.stderr}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


class _LocalKms:
    """The provider protocol over a local AES-GCM key: for the instruction counts only."""

    kms_key_id = "local"

    def __init__(self) -> None:
        self._aead = AESGCM(os.urandom(32))

    def generate(self, context: Mapping[str, str]) -> bytes:
        return os.urandom(32)

    def wrap(self, plaintext: bytes, context: Mapping[str, str]) -> WrappedKey:
        nonce = os.urandom(12)
        aad = json.dumps(sorted(context.items())).encode()
        return WrappedKey(nonce + self._aead.encrypt(nonce, plaintext, aad), self.kms_key_id)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        aad = json.dumps(sorted(context.items())).encode()
        return self._aead.decrypt(wrapped.blob[:12], wrapped.blob[12:], aad)


# (what it is, workload with the key store, workload with the environment's key)
COUNTED = [
    ("`save()` + `get()`, HashModel (client side)", "round_trip_hash"),
    ("`save()` + `get()`, JsonModel (client side)", "round_trip_json"),
    ("`encrypt_secret` + `decrypt_secret`", "api"),
]


def _child(n: int) -> None:
    """Under valgrind (``benchmarks.instructions._count``): each workload in its own
    ``math.fsum()`` call, with each ring."""
    from .models import SyncHashEncrypted, SyncJsonEncrypted, delete_keys

    client = redis.Redis.from_url(os.environ["REDIS_OM_URL"], decode_responses=True)
    store = KeyStore(client, _LocalKms(), key=STORE_KEY)
    store.create()
    rings = {"store": StoreKeyRing(store, ttl=WARM_TTL), "env": get_keyring()}
    records = [SyncHashEncrypted(**secret_values(0)), SyncJsonEncrypted(**secret_values(0))]

    def round_trip(instance: Any) -> Callable[[], Any]:
        def op() -> Any:
            instance.save()
            return type(instance).get(instance.pk)

        return op

    ops: dict[str, Callable[[], Any]] = {
        "round_trip_hash": round_trip(records[0]),
        "round_trip_json": round_trip(records[1]),
        "api": _envelope_op(),
    }
    try:
        workloads = [("empty", "env", lambda: None)]
        workloads += [(f"{name}_{kind}", kind, op) for name, op in ops.items() for kind in rings]
        for name, kind, op in workloads:
            set_keyring(rings[kind])
            for _ in range(50):
                op()
            # Collections over the long-lived heap would land in whichever workload they hit.
            gc.collect()
            gc.freeze()
            print(name, n, 1, flush=True)
            math.fsum((op(), 0.0)[1] for _ in range(n))
    finally:
        set_keyring(None)
        delete_keys([type(r).make_primary_key(r.pk) for r in records])
        client.delete(STORE_KEY)


def _instructions(settings: Settings) -> list[str]:
    n = 200 if settings.quick else 2000
    try:
        counts = _count([n], "benchmarks.keystore")
    except FileNotFoundError:
        return ["Instruction counts skipped: valgrind is not installed on this machine."]
    rows = []
    for what, name in COUNTED:
        store, env = counts[f"{name}_store"], counts[f"{name}_env"]
        rows.append(
            [what, f"{store:,.0f}", f"{env:,.0f}", f"{store - env:+,.0f}", f"{store / env:.4f}"]
        )
    return [
        f"Instructions per warm operation (callgrind, {n:,} operations each, the counting "
        "loop's cost subtracted; deterministic):",
        "",
        *table(["operation", "key store", "env key", "difference", "ratio"], rows),
    ]


class _Paired(Comparison):
    """A comparison whose ratio is the median of its per-round ratios: both sides run the same
    code but for the key ring, so the figure sought is a small difference, and pairing each
    round's two adjacent batches keeps the machine's load bursts (seconds long, on two shared
    cores) out of it."""

    __slots__ = ()

    @property
    def ratio(self) -> float:
        return statistics.median(self.round_ratios)

    @classmethod
    def of(cls, c: Comparison) -> _Paired:
        return cls(c.label, c.encrypted, c.plain, c.goal, c.floor)


def _envelope_op() -> Callable[[], Any]:
    secret = secret_values(0)["connection_url"]

    def envelope() -> None:
        decrypt_secret(encrypt_secret(secret))

    return envelope


async def run(settings: Settings) -> Section:
    section = Section("keystore", BENCHMARKS["keystore"].title)
    env_ring = get_keyring()
    client = redis.Redis.from_url(os.environ["REDIS_OM_URL"], decode_responses=True)
    with KmsServer() as server, _kms_environment(server):
        arn = server.create_key()
        kms = AwsKms(arn)
        record = KeyStore(client, kms, key=STORE_KEY).create()
        store_ring = StoreKeyRing(KeyStore(client, kms, key=STORE_KEY), ttl=WARM_TTL)
        use_store: Callable[[], None] = lambda: set_keyring(store_ring)  # noqa: E731
        use_env: Callable[[], None] = lambda: set_keyring(env_ring)  # noqa: E731
        rounds, batch = settings.roundtrip_rounds, settings.roundtrip_batch
        rows: list[Comparison] = []
        try:
            use_store()
            if get_keyring().current.key_id_hex != record.key_id:
                raise BenchmarkError("the store-backed ring does not use the store's active key")
            server.reset_requests()
            for flavour in FLAVOURS:
                instance = flavour.encrypted(**secret_values(0))
                for use in (use_store, use_env):
                    use()
                    await check_round_trip(flavour, flavour.encrypted, instance, encrypted=True)
                op = round_trip_op(flavour, flavour.encrypted, instance)
                comparison = await compare(
                    f"round trip, {flavour.name}",
                    op,
                    op,
                    rounds=rounds,
                    batch=batch,
                    goal=GOAL,
                    setup=(use_store, use_env),
                )
                rows.append(_Paired.of(comparison))
                section.goals.append((f"Key store round trip, {flavour.name}", rows[-1]))
            envelope = _envelope_op()
            envelopes = await compare(
                "envelope: `encrypt_secret` + `decrypt_secret`",
                envelope,
                envelope,
                rounds=settings.envelope_rounds,
                batch=settings.envelope_batch,
                setup=(use_store, use_env),
            )
            rows.append(_Paired.of(envelopes))
            warm_requests = server.requests()
            if warm_requests:
                raise BenchmarkError(f"KMS requests with a warm cache: {warm_requests}")
        finally:
            set_keyring(None)
        runs = 1 if settings.quick else 5
        cold: dict[str, list[dict[str, float]]] = {"env": [], "store": []}
        for i in range(runs):
            for mode in ("env", "store") if i % 2 == 0 else ("store", "env"):
                cold[mode].append(_cold(mode, arn))
    client.delete(STORE_KEY)
    client.close()

    def median(mode: str, part: str) -> float:
        return statistics.median(r[part] for r in cold[mode])

    header = ["case", "key store (median)", "env key (median)", *COMPARISON_HEADER[3:]]
    cold_rows = [
        [
            "first `save()` + `get()` of the process",
            fmt_time(median("store", "first")),
            fmt_time(median("env", "first")),
            fmt_time(median("store", "first") - median("env", "first"), signed=True),
        ],
        [
            "imports before it (library, model, redis-om)",
            fmt_time(median("store", "import")),
            fmt_time(median("env", "import")),
            fmt_time(median("store", "import") - median("env", "import"), signed=True),
        ],
    ]
    section.body += [
        "Warm cache: the same encrypted operation with a store-backed key ring (`StoreKeyRing`, "
        "its keys unwrapped once by KMS, then cached; a cache lifetime longer than the run, "
        "where a process refreshes once per `REDIS_SRE_KEY_CACHE_TTL`) and with "
        "the environment's key (`KeyRing`), both set with `set_keyring` before each batch, "
        f"{rounds} interleaved rounds of {batch} round trips ({settings.envelope_rounds} of "
        f"{settings.envelope_batch} envelopes). KMS is moto_server on loopback; it served no "
        "request while these figures were taken. Ratio: the median of the per-round ratios (each "
        "from two adjacent batches), not the ratio of the medians: the two sides differ by a "
        "few microseconds, less than the load of a shared machine moves either median.",
        "",
        *table(header, [c.row() for c in rows]),
        "",
        *_instructions(settings),
        "",
        f"Cold start: a new Python process per figure, {runs} of each kind, alternating "
        "(medians). With the key store the first record also imports boto3, makes the KMS "
        "client, reads the key store and makes the process's one KMS `Decrypt` (loopback "
        "moto_server here; a real KMS adds its network round trip, typically a few "
        "milliseconds within a region).",
        "",
        *table(["case", "key store", "env key", "difference"], cold_rows),
    ]
    return section


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    _child(int(sys.argv[2]))
