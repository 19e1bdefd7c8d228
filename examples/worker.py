"""The example's background worker: pings every stored instance, every ``PING_INTERVAL_SECONDS``.

It connects with the decrypted URLs and logs only their masks. Run it next to the API (same
``REDIS_OM_URL`` and ``REDIS_SRE_MASTER_KEY``), from this folder: ``python worker.py [--once]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from fastapi_app import RedisInstance, ping_url
from redis_om import NotFoundError

from redis_encrypted_fields import DecryptionError, get_keyring

log = logging.getLogger("redis_instances_worker")


def ping_all() -> dict[str, bool]:
    """Ping every instance once; by pk, whether it answered."""
    results: dict[str, bool] = {}
    for pk in RedisInstance.all_pks():
        try:
            instance = RedisInstance.get(pk)
        except NotFoundError:  # deleted since the scan
            continue
        except DecryptionError as exc:
            # One unreadable record must not stop the others; its details are for the operator.
            log.error("instance %s: %s", pk, exc)
            continue
        reachable, error = ping_url(instance.connection_url)
        shown = instance.model_dump(mode="json")["connection_url"]  # the mask, never the URL
        state = "up" if reachable else f"down ({error})"
        log.info("instance %s %r at %s: %s", pk, instance.name, shown, state)
        results[pk] = reachable
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--once", action="store_true", help="ping every instance once and exit")
    parser.add_argument(
        "--interval",
        type=float,
        default=float(os.environ.get("PING_INTERVAL_SECONDS", "30")),
        help="seconds between rounds (default: $PING_INTERVAL_SECONDS or 30)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    get_keyring()  # no or a malformed master key: fail now, not on the first record
    while True:
        results = ping_all()
        log.info("round done: %d of %d instances up", sum(results.values()), len(results))
        if args.once:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    raise SystemExit(main())
