"""What the audit trail costs when it is off: ``python -m benchmarks.audit_cost``.

Side by side in one process, interleaved: the encrypted round trip (``save()`` + ``get()``) as
shipped, with the audit logger off and no hook, against the same round trip with the library's
audit entry point replaced by a function that does nothing (what no audit code at all would
cost). Also the same pair with the audit logger on, for scale. Needs ``REDIS_OM_URL``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import statistics
from typing import Any

from redis_encrypted_fields import audit, generate_master_key
from redis_encrypted_fields.crypto import stored

from .harness import time_batch

ROUNDS, BATCH = 31, 100


def _patch(track: Any) -> None:
    # The module that calls audit's track() for values (imported by name): the stored-value codec.
    stored.track = track  # type: ignore[attr-defined]


async def main() -> None:
    os.environ.setdefault("REDIS_SRE_MASTER_KEY", generate_master_key())
    from .models import FLAVOURS, cleanup, ensure_indexes, secret_values

    await ensure_indexes()
    model = FLAVOURS[0].encrypted  # HashModel, sync
    keys: list[str] = []

    def round_trip() -> None:
        m = model(**secret_values(len(keys)))
        m.save()
        keys.append(m.pk)
        model.get(m.pk)

    real = audit.track
    off: list[float] = []
    none: list[float] = []
    try:
        await time_batch(round_trip, BATCH)
        for i in range(ROUNDS):
            for variant in ("off", "none") if i % 2 == 0 else ("none", "off"):
                _patch(real if variant == "off" else (lambda *a, **k: None))
                (off if variant == "off" else none).append(await time_batch(round_trip, BATCH))
        _patch(real)
        logger = logging.getLogger("redis_encrypted_fields.audit")
        logger.addHandler(logging.StreamHandler(io.StringIO()))
        logger.setLevel(logging.INFO)
        on = [await time_batch(round_trip, BATCH) for _ in range(5)]
        logger.setLevel(logging.WARNING)
    finally:
        _patch(real)
        cleanup()
    m_off, m_none, m_on = statistics.median(off), statistics.median(none), statistics.median(on)
    print(f"round trip, audit off: {m_off * 1e6:.1f} us; without audit code: {m_none * 1e6:.1f} us")
    print(f"ratio off / none: {m_off / m_none:.3f} (difference {(m_off - m_none) * 1e6:+.2f} us)")
    print(f"audit on (logging to a buffer): {m_on * 1e6:.1f} us ({m_on / m_none:.3f}x)")


if __name__ == "__main__":
    asyncio.run(main())
