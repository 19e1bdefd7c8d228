"""The environment factory: ``get_keyring()``, the ring in force, and ``set_keyring()``.

Above ``ring``, ``store``, ``store_ring`` and ``secrets_manager``: the environment describes a
static ring (``REDIS_SRE_MASTER_KEY``, ``REDIS_SRE_PREVIOUS_MASTER_KEYS``), or, with
``REDIS_SRE_KMS_KEY_ID`` set, a key store's ring, or, with ``REDIS_SRE_MASTER_KEY_SECRET`` set,
the ring of an AWS Secrets Manager secret.
"""

from __future__ import annotations

import os
import threading

from ..errors import MasterKeyError
from .ring import ENV_MASTER_KEY, ENV_PREVIOUS_MASTER_KEYS, KeyRing, parse_env
from .secrets_manager import ENV_MASTER_KEY_SECRET, SecretsManagerKeyRing
from .store import ENV_KEY_CACHE_TTL, ENV_KMS_KEY_ID
from .store_ring import ENVIRONMENT, StoreKeyRing

__all__ = ["get_keyring", "set_keyring"]

# The ring in force. Set in code with set_keyring(); otherwise read from the environment at use
# time (the design note's rotation script changes os.environ in a running process) and parsed
# again only when the variables' text changes. With REDIS_SRE_KMS_KEY_ID set, the environment
# describes a key store (StoreKeyRing). Only the ring in force is kept: a ring the variables no
# longer describe is dropped with its keys (and what was derived from them), so no key outlives
# its configuration; the variables set again to the same text keep their ring.
_lock = threading.Lock()
_configured: KeyRing | None = None


def set_keyring(keyring: KeyRing | None) -> None:
    """Use this ring (a ``KeyRing``, or a ``StoreKeyRing``) instead of the environment;
    ``None`` returns to the environment, read afresh."""
    global _configured, _env_ring, _fast
    _configured = keyring
    with _lock:
        _env_ring = None
        _fast = None


# get_keyring() runs for every secret sealed or opened, and os.environ.get() costs ~1.7 us (key
# encoding, Mapping machinery): twice that per secret. On POSIX, os.environ keeps its bytes in a
# dict (``_data``) that every os.environ write updates with new bytes objects; the cache holds
# that dict and the bytes objects it had, and is valid while they are still there (identity
# checks, ~0.1 us). The text is read through os.environ only when they changed.
_RAW_KEYS = (
    os.fsencode(ENV_MASTER_KEY),
    os.fsencode(ENV_PREVIOUS_MASTER_KEYS),
    os.fsencode(ENV_KMS_KEY_ID),
)
# Checked like the key store's variables (after the three above), whether set or not.
_SECRET_NAMES = (ENV_MASTER_KEY_SECRET,)
_POSIX = os.name == "posix"

# The ring in force, with the text of the variables that made it.
_env_ring: tuple[tuple[str | None, ...], KeyRing] | None = None
_K_CURRENT, _K_PREVIOUS, _K_KMS = _RAW_KEYS
# The fast path: (os.environ's byte dict, the three values' bytes objects in it, the key store's
# variables and their bytes objects (None without a key store), their ring).
_StoreRaw = tuple[tuple[bytes, object], ...]
_fast: tuple[dict[bytes, bytes], object, object, object, _StoreRaw | None, KeyRing] | None = None


def get_keyring() -> KeyRing:
    """The ring in force: the one set in code, else the one the environment describes."""
    configured = _configured
    if configured is not None:
        return configured
    fast = _fast
    if fast is not None:
        data, raw_current, raw_previous, raw_kms, store_raw, ring = fast
        try:
            same = os.environ._data is data  # type: ignore[attr-defined]
        except AttributeError:  # os.environ replaced by a plain mapping
            same = False
        if (
            same
            and data.get(_K_CURRENT) is raw_current
            and data.get(_K_PREVIOUS) is raw_previous
            and data.get(_K_KMS) is raw_kms
            and (store_raw is None or all(data.get(k) is v for k, v in store_raw))
        ):
            return ring
    return _read_environ()


def _read_environ() -> KeyRing:
    global _env_ring, _fast
    data = getattr(os.environ, "_data", None) if _POSIX else None
    names: tuple[str, ...] = (
        ENV_MASTER_KEY,
        ENV_PREVIOUS_MASTER_KEYS,
        ENV_KMS_KEY_ID,
        *_SECRET_NAMES,
    )
    if (os.environ.get(ENV_KMS_KEY_ID) or "").strip():
        names += ENVIRONMENT
    elif (os.environ.get(ENV_MASTER_KEY_SECRET) or "").strip():
        names += (ENV_KEY_CACHE_TTL,)
    raw_names = [os.fsencode(n) for n in names]
    # The bytes before the text: if the environment changes in between, the cache is stale at once.
    raw = [data.get(n) for n in raw_names] if type(data) is dict else None
    texts = tuple(os.environ.get(n) for n in names)
    cached = _env_ring
    ring = cached[1] if cached is not None and cached[0] == texts else None
    if ring is None:
        secret = (texts[3] or "").strip()
        if texts[2] is not None and texts[2].strip():
            if secret:
                raise MasterKeyError(
                    f"both {ENV_KMS_KEY_ID} (a key store) and {ENV_MASTER_KEY_SECRET} (a Secrets "
                    "Manager secret) are set: set one, the source of the master keys"
                )
            ring = StoreKeyRing.from_env()
        elif secret:
            ring = SecretsManagerKeyRing.from_env()
        elif texts[2] is not None:
            try:
                ring = _parse_env(texts[0], texts[1])
            except MasterKeyError as exc:
                # An empty KMS key id (a template's unset value) is not "use the environment's
                # key": say so, or the user hunts for a master key they never meant to set.
                raise MasterKeyError(
                    f"{ENV_KMS_KEY_ID} is set but empty: set it to the KMS key (id, ARN or "
                    f"alias) to use the key store, or unset it and set {ENV_MASTER_KEY} ({exc})"
                ) from None
        else:
            ring = _parse_env(texts[0], texts[1])
    with _lock:
        _env_ring = (texts, ring)
        if raw is None:
            _fast = None
        else:
            store_raw = tuple(zip(raw_names[3:], raw[3:], strict=True)) if len(names) > 3 else None
            _fast = (data, raw[0], raw[1], raw[2], store_raw, ring)  # type: ignore[assignment]
    return ring


def _parse_env(current: str | None, previous: str | None) -> KeyRing:
    # The factory's one call that parses key text: once per change of that text (the tests
    # count calls through it).
    return parse_env(current, previous)
