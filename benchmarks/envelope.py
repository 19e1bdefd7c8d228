"""Benchmark 2: the envelope floor. The library's encrypt + decrypt of one secret versus the same
AES-GCM work written inline with ``cryptography``.

The inline baseline does what any envelope scheme must: a fresh 256-bit data key and two nonces,
wrap the data key under the master key, encrypt the secret under the data key; then unwrap and
decrypt. It uses associated data of the same lengths as the library (so the AES work is the
same) and skips everything else the library does: key ring lookup, record binding, the byte
layout, base64, parsing and validation. The master key's ``AESGCM`` is built once, as the
library's key ring does.
"""

from __future__ import annotations

from redis_encrypted_fields import decrypt_secret, encrypt_secret, get_keyring
from redis_encrypted_fields.crypto.envelope import binding, open_envelope, seal

from . import BENCHMARKS
from .floor import RECORD_KEY, SECRET, inline_ops, master_aead, record_aad
from .harness import COMPARISON_HEADER, BenchmarkError, Section, Settings, compare, table

__all__ = ["GOAL", "run"]

GOAL = 1.5
FIELD = "connection_url"


async def run(settings: Settings) -> Section:
    section = Section("envelope", BENCHMARKS["envelope"].title)
    master = master_aead()
    context = binding(RECORD_KEY, FIELD)
    unbound = inline_ops(master, *record_aad(b""))
    bound = inline_ops(master, *record_aad(context))

    def api_round_trip() -> str:
        return decrypt_secret(encrypt_secret(SECRET))

    def model_round_trip() -> str:
        # What EncryptedModel does per field: seal on save, open on read, bound to record+field.
        sealed = seal(SECRET, get_keyring(), binding(RECORD_KEY, FIELD))
        return open_envelope(sealed, get_keyring(), binding(RECORD_KEY, FIELD))

    sealed = seal(SECRET, get_keyring(), context)

    def model_seal() -> str:
        return seal(SECRET, get_keyring(), binding(RECORD_KEY, FIELD))

    def model_open() -> str:
        return open_envelope(sealed, get_keyring(), binding(RECORD_KEY, FIELD))

    for name, op in {
        "api": api_round_trip,
        "model": model_round_trip,
        "inline": unbound["round_trip"],
        "inline bound": bound["round_trip"],
        "open": model_open,
        "inline decrypt": bound["decrypt"],
    }.items():
        if op() != SECRET:
            raise BenchmarkError(f"{name} did not give the secret back")

    rounds, batch = settings.envelope_rounds, settings.envelope_batch
    rows = [
        await compare(
            "`encrypt_secret` + `decrypt_secret` (public API, unbound)",
            api_round_trip,
            unbound["round_trip"],
            rounds=rounds,
            batch=batch,
            goal=GOAL,
        ),
        await compare(
            "`seal` + `open_envelope` bound to record+field (per field in an EncryptedModel)",
            model_round_trip,
            bound["round_trip"],
            rounds=rounds,
            batch=batch,
            goal=GOAL,
        ),
        await compare(
            "encrypt half: `seal` (bound)", model_seal, bound["encrypt"], rounds=rounds, batch=batch
        ),
        await compare(
            "decrypt half: `open_envelope` (bound)",
            model_open,
            bound["decrypt"],
            rounds=rounds,
            batch=batch,
        ),
    ]
    section.goals += [("Envelope, public API", rows[0]), ("Envelope, model path", rows[1])]
    header = ["case", "library (median)", *COMPARISON_HEADER[2:]]
    header[2] = "inline AES-GCM (median)"
    section.body += [
        f"Secret of {len(SECRET)} characters. Baseline: inline `cryptography` AES-256-GCM with a "
        "fresh data key (`AESGCM.generate_key`, two `os.urandom(12)` nonces), wrap + encrypt, "
        "unwrap + decrypt, with associated data of the library's lengths. "
        f"{rounds} interleaved rounds of {batch} operations; figures per operation. "
        "The two halves have no goal; they show where the difference lies.",
        "",
        *table(header, [c.row() for c in rows]),
    ]
    return section
