"""Benchmarks for issue 5: what encryption costs a redis-om user, measured side by side.

Run all of them and rewrite ``BENCHMARKS.md`` with ``make bench``, i.e.::

    .venv/bin/python devtools/redis_stack.py .venv/bin/python -m benchmarks

Each benchmark is a module with ``async def run(settings: Settings) -> Section``, listed in
``BENCHMARKS``. A listed module that does not exist yet (``rotation``, which waits for the
operations module) is reported as pending; adding the module is all it takes to run it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BENCHMARKS", "Spec"]


@dataclass(frozen=True, slots=True)
class Spec:
    module: str
    title: str
    pending: str = "pending"


BENCHMARKS: dict[str, Spec] = {
    "roundtrip": Spec("benchmarks.roundtrip", "1. Model round trip: `save()` + `get()`"),
    "envelope": Spec("benchmarks.envelope", "2. Envelope floor: encrypt + decrypt of one secret"),
    "bulk": Spec("benchmarks.bulk", "3. Bulk: `add()` and `find().all()`"),
    "rotation": Spec(
        "benchmarks.rotation",
        "4. Rotation and migration throughput, peak memory",
        pending="pending: operations issue",
    ),
    "profile": Spec("benchmarks.hotspots", "5. Where the time goes"),
    "instructions": Spec("benchmarks.instructions", "6. Instructions per operation (valgrind)"),
    "cluster": Spec("benchmarks.cluster", "7. Rotation on a Redis Cluster"),
    "search": Spec("benchmarks.search", "8. Search on an encrypted field (blind index)"),
    "keystore": Spec(
        "benchmarks.keystore", "9. Master keys from the key store (KMS) vs the environment"
    ),
    "memory": Spec("benchmarks.memory", "10. Peak memory of `find().all()`"),
    "typed": Spec("benchmarks.typed", "11. `Encrypted[T]` field types against `EncryptedStr`"),
    "audit": Spec(
        "benchmarks.audit_trail",
        "12. Audit trail: off, and with the stream, metrics and anomaly rules on",
    ),
    "scopes": Spec("benchmarks.scopes", "13. Per-tenant keys (`KeyScope`)"),
}
