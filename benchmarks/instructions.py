"""Benchmark 6: instructions per operation, counted by valgrind (callgrind), not timed.

Timings on a shared two-core machine move by 10 to 40% between runs; instruction counts do not.
The same operations as benchmarks 2 and 5 (no network: the model's part of a read and a write,
the envelope's seal and open, the public API round trip) run in a child process under
``valgrind --tool=callgrind``, each inside its own ``sorted()`` call: callgrind counts only
inside ``sorted`` (``--toggle-collect``) and writes one part per call (``--dump-after``), so
one child run counts every workload, without the imports. An empty workload gives the per-call
cost of the counting loop, which is subtracted.

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

# (workload, its baseline, what it is); baselines are workloads too.
PAIRS = [
    ("api", "inline", "`encrypt_secret` + `decrypt_secret` vs inline AES-GCM (benchmark 2)"),
    ("seal2", "inline_seal2", "`seal` of 2 secrets, bound, vs inline"),
    ("open2", "inline_open2", "`open_envelope` of 2 secrets, bound, vs inline"),
    ("read", "read_plain", "a record built from stored fields, as `get`/`find` do"),
    ("write", "write_plain", "`model_dump()` of a record, as `save` does"),
    ("round_trip_hash", "round_trip_hash_plain", "`save()` + `get()`, HashModel (client side)"),
    ("round_trip_json", "round_trip_json_plain", "`save()` + `get()`, JsonModel (client side)"),
]
_PART = re.compile(r"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


def _workloads() -> dict[str, Callable[[], Any]]:
    """The operations, set up once; run in the child process."""
    from redis_encrypted_fields import decrypt_secret, encrypt_secret, get_keyring
    from redis_encrypted_fields.envelope import binding, open_envelope, seal
    from redis_encrypted_fields.models import _reading

    from .floor import SECRET, inline_ops, master_aead, record_aad
    from .models import (
        SyncHashEncrypted,
        SyncHashPlain,
        SyncJsonEncrypted,
        SyncJsonPlain,
        secret_values,
    )

    enc, plain = SyncHashEncrypted(**secret_values(0)), SyncHashPlain(**secret_values(0))

    def stored(instance: Any) -> dict[str, str]:
        # What a hash read hands to the model: every field as text, "" for None.
        return {k: "" if v is None else str(v) for k, v in instance.model_dump().items()}

    enc_fields, plain_fields = stored(enc), stored(plain)

    def read(model: Any, fields: dict[str, str]) -> Callable[[], Any]:
        def build() -> Any:
            token = _reading.set(True)
            try:
                return model(**fields)
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
        _ROUND_TRIP_RECORDS.append(model.make_primary_key(instance.pk))

        def op() -> Any:
            instance.save()
            return model.get(instance.pk)

        return op

    unbound = inline_ops(master_aead(), *record_aad(b""))
    bound = inline_ops(master_aead(), *record_aad(url))
    return {
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
        "read": read(SyncHashEncrypted, enc_fields),
        "read_plain": read(SyncHashPlain, plain_fields),
        "write": enc.model_dump,
        "write_plain": plain.model_dump,
        "round_trip_hash": round_trip(SyncHashEncrypted),
        "round_trip_hash_plain": round_trip(SyncHashPlain),
        "round_trip_json": round_trip(SyncJsonEncrypted),
        "round_trip_json_plain": round_trip(SyncJsonPlain),
    }


_ROUND_TRIP_RECORDS: list[str] = []


def _child(n: int) -> None:
    """Run every workload inside its own ``sorted()`` call (what callgrind counts)."""
    from .models import delete_keys

    try:
        for name, op in _workloads().items():
            for _ in range(50):  # caches, lazily built schemas
                op()
            print(name, flush=True)
            # A constant key: sorted() only compares equal ints, the same for every workload.
            sorted(range(n), key=lambda _: (op(), 0)[1])
    finally:
        delete_keys(_ROUND_TRIP_RECORDS)


def _count(n: int, module: str = "benchmarks.instructions") -> dict[str, float]:
    """Instructions per operation of each workload ``python -m MODULE --child N`` runs (its
    names on stdout, each in its own ``sorted()`` call), less those of its ``empty`` one."""
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
                "--toggle-collect=builtin_sorted",
                "--dump-after=builtin_sorted",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                module,
                "--child",
                str(n),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            check=False,
        )
        if proc.returncode != 0:
            raise BenchmarkError(f"valgrind run failed: {proc.stderr[-2000:]}")
        names = proc.stdout.split()
        # One part per sorted() call, numbered in order: cg.out.1, cg.out.2, ... The workloads'
        # calls are the last ones (imports may sort things before them).
        parts = sorted(Path(tmp).glob("cg.out.*"), key=lambda p: int(p.suffix[1:]))
        if len(parts) < len(names):
            raise BenchmarkError(f"expected {len(names)} callgrind parts, found {len(parts)}")
        texts = [p.read_text() for p in parts[len(parts) - len(names) :]]
        counts = [int(_PART.search(t).group(1)) for t in texts]  # type: ignore[union-attr]
    per_op = {name: count / n for name, count in zip(names, counts, strict=True)}
    empty = per_op.pop("empty")
    return {name: value - empty for name, value in per_op.items()}


async def run(settings: Settings) -> Section:
    section = Section("instructions", BENCHMARKS["instructions"].title)
    n = 200 if settings.quick else 2000
    try:
        counts = _count(n)
    except FileNotFoundError:
        section.body.append("Skipped: valgrind is not installed on this machine.")
        return section
    rows = []
    for name, base, what in PAIRS:
        a, b = counts[name], counts[base]
        rows.append([what, f"{a:,.0f}", f"{b:,.0f}", f"{a - b:+,.0f}", f"{a / b:.2f}"])
    floor_open, floor_seal = counts["inline_open2"], counts["inline_seal2"]
    read_gap = counts["read"] - counts["read_plain"]
    write_gap = counts["write"] - counts["write_plain"]
    section.body += [
        f"Instructions per operation (x86-64, CPython {sys.version.split()[0]}), counted by "
        f"callgrind over {n:,} operations each, the counting loop's own cost subtracted. "
        "Deterministic: these figures do not move with the machine's load.",
        "",
        *table(["operation", "library", "baseline", "difference", "ratio"], rows),
        "",
        f"Reading a record with two secrets costs {read_gap:,.0f} instructions more than the "
        f"plain record, of which the AES-GCM floor of two opens is {floor_open:,.0f} "
        f"({floor_open / read_gap:.0%}); writing one costs {write_gap:,.0f} more, of which the "
        f"floor of two seals is {floor_seal:,.0f} ({floor_seal / write_gap:.0%}). The rest is "
        "the library's Python: the validator hook, record binding, key ring, base64 and "
        "`EncryptedStr` construction. The round trips count this process only (the server's "
        "work and the kernel's are not instructions of this process): the client's side of "
        "the round trip ratio of section 1.",
    ]
    return section


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    _child(int(sys.argv[2]))
