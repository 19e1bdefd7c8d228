"""The AES-GCM floor: the work any envelope scheme must do for one secret, written inline.

Sealing: a fresh 256-bit data key and two nonces, wrap the data key under the master key, encrypt
the secret under the data key. Opening: unwrap, decrypt. Associated data has the library's
lengths (labels, key id, record binding), so the AES work is the same; everything else the
library does (key ring, binding, byte layout, base64, parsing, checks) is left out. The master
key's ``AESGCM`` is built once, as the library's key ring does.

The floor bounds every ratio from below: a model round trip cannot cost less than the plain one
plus two seals and two opens, whatever the library does.
"""

from __future__ import annotations

import base64
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from redis_encrypted_fields import get_keyring
from redis_encrypted_fields.crypto.envelope import binding

from .harness import time_batch

__all__ = ["RECORD_KEY", "SECRET", "Floor", "inline_ops", "master_aead", "measure", "record_aad"]

SECRET = "redis://default:pw-00042-Xq7vT2mN9s@redis-00042.internal:6379/0"
RECORD_KEY = "bench:sync-hash-encrypted:01JDZ3N7Q8X2K5M9P4R6T1V0WY"


def master_aead() -> AESGCM:
    """The current master key (``REDIS_SRE_MASTER_KEY``) as an ``AESGCM``."""
    return AESGCM(base64.b64decode(os.environ["REDIS_SRE_MASTER_KEY"]))


def record_aad(context: bytes) -> tuple[bytes, bytes]:
    """Associated data of the library's lengths: (wrap, data) for a record binding ``context``."""
    key_id = get_keyring().current.key_id
    return b"REFv2/dek\x02" + key_id + context, b"REFv2/data\x02" + context


def inline_ops(
    master: AESGCM, wrap_aad: bytes, data_aad: bytes, secret: str = SECRET
) -> dict[str, Callable[[], str]]:
    """Inline seal + open (``round_trip``), and each half alone (``encrypt``, ``decrypt``)."""
    dek = AESGCM.generate_key(bit_length=256)
    dek_nonce, nonce = os.urandom(12), os.urandom(12)
    wrapped = master.encrypt(dek_nonce, dek, wrap_aad)
    ciphertext = AESGCM(dek).encrypt(nonce, secret.encode(), data_aad)

    def round_trip() -> str:
        dek = AESGCM.generate_key(bit_length=256)
        dek_nonce, nonce = os.urandom(12), os.urandom(12)
        wrapped = master.encrypt(dek_nonce, dek, wrap_aad)
        ciphertext = AESGCM(dek).encrypt(nonce, secret.encode(), data_aad)
        unwrapped = master.decrypt(dek_nonce, wrapped, wrap_aad)
        return AESGCM(unwrapped).decrypt(nonce, ciphertext, data_aad).decode()

    def encrypt() -> str:
        dek = AESGCM.generate_key(bit_length=256)
        dek_nonce, nonce = os.urandom(12), os.urandom(12)
        master.encrypt(dek_nonce, dek, wrap_aad)
        AESGCM(dek).encrypt(nonce, secret.encode(), data_aad)
        return secret

    def decrypt() -> str:
        unwrapped = master.decrypt(dek_nonce, wrapped, wrap_aad)
        return AESGCM(unwrapped).decrypt(nonce, ciphertext, data_aad).decode()

    return {"round_trip": round_trip, "encrypt": encrypt, "decrypt": decrypt}


@dataclass(frozen=True, slots=True)
class Floor:
    """Seconds per secret of the inline AES-GCM work (medians)."""

    seal: float
    open: float


async def measure(rounds: int = 31, batch: int = 500) -> Floor:
    """The floor per secret, for a secret of the benchmark's length bound to a record field."""
    wrap_aad, data_aad = record_aad(binding(RECORD_KEY, "connection_url"))
    ops = inline_ops(master_aead(), wrap_aad, data_aad)
    await time_batch(ops["encrypt"], batch)
    await time_batch(ops["decrypt"], batch)
    seal, open_ = [], []
    for _ in range(rounds):
        seal.append(await time_batch(ops["encrypt"], batch))
        open_.append(await time_batch(ops["decrypt"], batch))
    return Floor(statistics.median(seal), statistics.median(open_))
