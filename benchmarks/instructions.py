"""Benchmark 6: instructions per operation, counted by valgrind (callgrind), not timed.

Timings on a shared two-core machine move by 10 to 40% between runs; instruction counts do not.
The operations of benchmarks 1 to 3 and 5 (the envelope's seal and open, the public API round
trip, the model's part of a read and a write, ``save()`` + ``get()``, ``add()`` and
``find().all()`` per record) run in a child process under ``valgrind --tool=callgrind``, each
inside its own ``math.fsum()`` call (a function nothing else here calls): callgrind counts only
inside it (``--toggle-collect``) and writes one part per call (``--dump-after``), so one child
run counts every workload, without the imports. An empty workload gives the per-call cost of the
counting loop, which is subtracted. The garbage collector is off while a workload is counted (its
work depends on where a collection happens to fall, not on the operation).

Skipped (reported as such) where valgrind is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import BENCHMARKS
from .harness import BenchmarkError, Section, Settings, table

__all__ = ["run"]

# (workload, its baseline, what it is, the AES-GCM floor it includes); baselines and floors are
# workloads too.
PAIRS = [
    ("api", "inline", "`encrypt_secret` + `decrypt_secret` vs inline AES-GCM (benchmark 2)", None),
    ("seal2", "inline_seal2", "`seal` of 2 secrets, bound, vs inline", "inline_seal2"),
    ("open2", "inline_open2", "`open_envelope` of 2 secrets, bound, vs inline", "inline_open2"),
    ("read", "read_plain", "a record built from stored fields, as `get` does", "inline_open2"),
    ("write", "write_plain", "`model_dump()` of a record, as `save` does", "inline_seal2"),
    ("round_trip_hash", "round_trip_hash_plain", "`save()` + `get()`, HashModel", "inline_both"),
    ("round_trip_json", "round_trip_json_plain", "`save()` + `get()`, JsonModel", "inline_both"),
    ("add_hash", "add_hash_plain", "`add()`, per record, HashModel", "inline_seal2"),
    ("add_json", "add_json_plain", "`add()`, per record, JsonModel", "inline_seal2"),
    ("find_hash", "find_hash_plain", "`find().all()`, per record, HashModel", "inline_open2"),
    ("find_json", "find_json_plain", "`find().all()`, per record, JsonModel", "inline_open2"),
]
_PART = re.compile(r"^(?:summary|totals):\s*(\d+)", re.MULTILINE)
# add() and find().all() run on this many records at a time; counted per record.
BULK_RECORDS = 100


def _workloads(bulk: int) -> dict[str, tuple[Callable[[], Any], int]]:
    """The operations, set up once, each with the number of records one call handles; run in
    the child process."""
    import asyncio

    from redis_encrypted_fields import decrypt_secret, encrypt_secret, get_keyring
    from redis_encrypted_fields.crypto.envelope import binding, open_envelope, seal
    from redis_encrypted_fields.model.mixin import _reading

    from .floor import SECRET, inline_ops, master_aead, record_aad
    from .models import (
        SyncHashEncrypted,
        SyncHashPlain,
        SyncJsonEncrypted,
        SyncJsonPlain,
        ensure_indexes,
        secret_values,
    )

    asyncio.run(ensure_indexes())  # find() needs this process's indexes
    enc, plain = SyncHashEncrypted(**secret_values(0)), SyncHashPlain(**secret_values(0))

    def stored(instance: Any) -> dict[str, str]:
        # What a hash read hands to the model: every field as text, "" for None.
        return {k: "" if v is None else str(v) for k, v in instance.model_dump().items()}

    enc_fields, plain_fields = stored(enc), stored(plain)

    def read(model: Any, fields: dict[str, str]) -> Callable[[], Any]:
        def build() -> Any:
            token = _reading.set(True)
            try:
                return model.model_validate(fields)
            finally:
                _reading.reset(token)

        return build

    ring = get_keyring()
    key = SyncHashEncrypted.make_primary_key(enc.pk)
    url, password = binding(key, "connection_url"), binding(key, "admin_password")
    sealed_url = seal(SECRET, ring, url)
    sealed_password = seal("admin-password", ring, password)

    def round_trip(model: Any) -> Callable[[], Any]:
        # Against the benchmark's Redis server: what the server does is not counted, only this
        # process's work (redis-om, redis-py, pydantic and the library).
        instance = model(**secret_values(0))

        def op() -> Any:
            instance.save()
            return model.get(instance.pk)

        return op

    def add(model: Any) -> Callable[[], Any]:
        instances = [model(**secret_values(i)) for i in range(1, bulk + 1)]
        model.add(instances)  # the records find() reads
        return lambda: model.add(instances)

    def find(model: Any) -> Callable[[], Any]:
        return lambda: model.find().all()

    unbound = inline_ops(master_aead(), *record_aad(b""))
    bound = inline_ops(master_aead(), *record_aad(url))
    one = {
        "empty": lambda: None,
        "api": lambda: decrypt_secret(encrypt_secret(SECRET)),
        "inline": unbound["round_trip"],
        "seal2": lambda: (seal(SECRET, ring, url), seal("admin-password", ring, password)),
        "inline_seal2": lambda: (bound["encrypt"](), bound["encrypt"]()),
        "open2": lambda: (
            open_envelope(sealed_url, ring, url),
            open_envelope(sealed_password, ring, password),
        ),
        "inline_open2": lambda: (bound["decrypt"](), bound["decrypt"]()),
        "inline_both": lambda: (
            bound["encrypt"](),
            bound["encrypt"](),
            bound["decrypt"](),
            bound["decrypt"](),
        ),
        "read": read(SyncHashEncrypted, enc_fields),
        "read_plain": read(SyncHashPlain, plain_fields),
        "write": enc.model_dump,
        "write_plain": plain.model_dump,
        "round_trip_hash": round_trip(SyncHashEncrypted),
        "round_trip_hash_plain": round_trip(SyncHashPlain),
        "round_trip_json": round_trip(SyncJsonEncrypted),
        "round_trip_json_plain": round_trip(SyncJsonPlain),
    }
    many = {
        "add_hash": add(SyncHashEncrypted),
        "add_hash_plain": add(SyncHashPlain),
        "add_json": add(SyncJsonEncrypted),
        "add_json_plain": add(SyncJsonPlain),
        "find_hash": find(SyncHashEncrypted),
        "find_hash_plain": find(SyncHashPlain),
        "find_json": find(SyncJsonEncrypted),
        "find_json_plain": find(SyncJsonPlain),
    }
    # find().all() also returns the round trip's record.
    return {
        **{name: (op, 1) for name, op in one.items()},
        **{name: (op, len(op()) if name.startswith("find") else bulk) for name, op in many.items()},
    }


def _child(n: int, n_bulk: int, bulk: int) -> None:
    """Run every workload inside its own ``math.fsum()`` call (what callgrind counts)."""
    import gc
    import math

    from .models import cleanup

    try:
        for name, (op, records) in _workloads(bulk).items():
            calls = n if records == 1 else n_bulk
            for _ in range(50 if records == 1 else 2):  # caches, lazily built schemas
                op()
            print(name, calls, records, flush=True)
            gc.collect()
            gc.disable()
            math.fsum((op(), 0.0)[1] for _ in range(calls))
            gc.enable()
    finally:
        cleanup()


def _count(args: list[int], module: str = "benchmarks.instructions") -> dict[str, float]:
    """Instructions per record of each workload ``python -m MODULE --child ARGS...`` runs: it
    prints ``name calls records`` for each and runs its calls in one ``math.fsum()`` call; the
    counting loop's cost (its ``empty`` workload) is subtracted."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise FileNotFoundError("valgrind")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        proc = subprocess.run(
            [
                valgrind,
                "--tool=callgrind",
                "--collect-atstart=no",
                "--toggle-collect=math_fsum",
                "--dump-after=math_fsum",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                module,
                "--child",
                *map(str, args),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            check=False,
        )
        if proc.returncode != 0:
            raise BenchmarkError(f"valgrind run failed: {proc.stderr[-2000:]}")
        lines = [line.split() for line in proc.stdout.splitlines() if line.strip()]
        names = [name for name, _, _ in lines]
        calls = {name: int(c) for name, c, _ in lines}
        records = {name: int(r) for name, _, r in lines}
        # One part per fsum() call, numbered in order: cg.out.1, cg.out.2, ...
        parts = sorted(Path(tmp).glob("cg.out.*"), key=lambda p: int(p.suffix[1:]))
        if len(parts) != len(names):
            raise BenchmarkError(f"expected {len(names)} callgrind parts, found {len(parts)}")
        texts = [p.read_text() for p in parts]
        counts = [int(_PART.search(t).group(1)) for t in texts]  # type: ignore[union-attr]
    # The counting loop's own cost, per call, out of every workload's count; then per record.
    total = dict(zip(names, counts, strict=True))
    empty = total.pop("empty") / calls["empty"]
    return {
        name: (count - empty * calls[name]) / (calls[name] * records[name])
        for name, count in total.items()
    }


async def run(settings: Settings) -> Section:
    section = Section("instructions", BENCHMARKS["instructions"].title)
    n, n_bulk, bulk = (200, 2, 20) if settings.quick else (2000, 10, BULK_RECORDS)
    try:
        counts = _count([n, n_bulk, bulk])
    except FileNotFoundError:
        section.body.append("Skipped: valgrind is not installed on this machine.")
        return section
    rows = []
    for name, base, what, floor_name in PAIRS:
        a, b = counts[name], counts[base]
        row = [what, f"{a:,.0f}", f"{b:,.0f}", f"{a - b:+,.0f}", f"{a / b:.2f}", "-", "-"]
        if floor_name is not None:
            floor = counts[floor_name]
            glue = a - b if name in ("seal2", "open2") else a - b - floor
            row[5:] = [f"{floor:,.0f}", f"{glue / floor:.2f}"]
        rows.append(row)
    header = [
        "operation",
        "library",
        "baseline",
        "difference",
        "ratio",
        "AES-GCM floor",
        "glue / floor",
    ]
    section.body += [
        f"Instructions per operation (x86-64, CPython {sys.version.split()[0]}), counted by "
        f"callgrind over {n:,} operations each ({n_bulk} calls of `add()` and of `find().all()` "
        f"on {bulk} records, counted per record), the counting loop's own cost subtracted, the "
        "garbage collector off. Deterministic: these figures do not move with the machine's "
        "load. The round trips, `add()` and `find()` count this process only (the server's work "
        "and the kernel's are not instructions of this process): the client's side of the "
        "ratios of sections 1 and 3.",
        "",
        "AES-GCM floor: the same AES-GCM work written inline (two seals, two opens, or both per "
        "record); glue / floor: the difference to the baseline less that floor, over the floor "
        "(for `seal` and `open_envelope`, the difference to the inline work over it). The glue "
        "is the library's Python: the validator hook, record binding, key ring, base64 and "
        "`EncryptedStr` construction; where it is negative, the library spares redis-om work "
        "the plain model does (`check()` validates an instance once, where redis-om validates "
        "it twice; `find()` leaves out redis-om's two conversion passes over each record, "
        "timestamps to `datetime` and base64 to `bytes`, for a model with no such fields).",
        "",
        *table(header, rows),
    ]
    return section


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    _child(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
