"""Benchmark 7: rotation on a 3-primary Redis Cluster beside the standalone server.

The same records (hash records with two encrypted fields, planted as in benchmark 4) live on
the standalone server (``REDIS_OM_URL``) and on a cluster of three primaries started here from
the same ``redis-server`` binary (``REDIS_OM_CLUSTER_URL``: an existing one). ``ops.rotate``
re-wraps both under a fresh key, alternating over several rounds in one run; the cluster's three
servers share this machine's cores with the standalone one and with this process. Peak Python
memory of a cluster run over a tenth of the records and over all of them shows that it stays
flat.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import redis
import redis_om
from redis.cluster import RedisCluster

from redis_encrypted_fields import EncryptedModel, EncryptedStr, KeyRing, MasterKey, ops

from . import BENCHMARKS
from .harness import BenchmarkError, Comparison, Section, Settings, fmt_time, table
from .models import RUN_PREFIX
from .rotation import peak, plant

__all__ = ["GOAL", "run"]

GOAL = 2.0  # cluster per-record time at most twice the standalone one: throughput ≥ 0.5x

# ruff: noqa: UP045  (Optional: see models.py)


class ClusterRotationRecord(EncryptedModel, redis_om.HashModel, index=True):
    name: str
    connection_url: EncryptedStr
    admin_password: Optional[EncryptedStr] = None

    class Meta:
        global_key_prefix = RUN_PREFIX
        model_key_prefix = "cluster-rotation"


def _sizes(settings: Settings) -> tuple[int, int]:
    """Records, rounds."""
    return (600, 1) if settings.quick else (100_000, 3)


@contextmanager
def _cluster() -> Iterator[str]:
    url = os.environ.get("REDIS_OM_CLUSTER_URL")
    if url:
        yield url
        return
    from devtools.redis_stack import RedisStackCluster

    with RedisStackCluster(primaries=3) as started:
        yield started.url


def _delete(c: Any, prefix: str) -> None:
    for key in list(c.scan_iter(match=prefix + "*", count=2000)):
        c.delete(key)


def _rotate(c: Any, ring: KeyRing, n: int) -> ops.Report:
    report = ops.rotate(ClusterRotationRecord, client=c, keyring=ring, batch_size=1000)
    if not report.ok or report.records != n:
        raise BenchmarkError(f"{report.summary()} (expected {n} records)")
    return report


async def run(settings: Settings) -> Section:
    n, rounds = _sizes(settings)
    section = Section("cluster", BENCHMARKS["cluster"].title)
    prefix = ClusterRotationRecord.make_key("")
    standalone = redis.Redis.from_url(os.environ["REDIS_OM_URL"], decode_responses=True)
    with _cluster() as url:
        cluster = RedisCluster.from_url(url, decode_responses=True)
        try:
            plant(standalone, prefix, n)
            plant(cluster, prefix, n)
            ring = KeyRing(MasterKey.generate())
            for c in (standalone, cluster):
                ops.migrate(ClusterRotationRecord, client=c, keyring=ring, batch_size=1000)
            on_standalone: list[float] = []
            on_cluster: list[float] = []
            for _ in range(rounds):
                ring = KeyRing(MasterKey.generate(), ring.keys)
                for c, into in ((standalone, on_standalone), (cluster, on_cluster)):
                    start = time.perf_counter()
                    _rotate(c, ring, n)
                    into.append((time.perf_counter() - start) / n)
            ring = KeyRing(MasterKey.generate(), ring.keys)
            peak_all = peak(lambda: _rotate(cluster, ring, n))
            _delete(cluster, prefix)
            tenth = n // 10
            plant(cluster, prefix, tenth)
            ops.migrate(ClusterRotationRecord, client=cluster, keyring=ring, batch_size=1000)
            ring = KeyRing(MasterKey.generate(), ring.keys)
            peak_tenth = peak(lambda: _rotate(cluster, ring, tenth))
        finally:
            _delete(cluster, prefix)
            _delete(standalone, prefix)
            cluster.close()
            standalone.close()
    cluster_s, standalone_s = statistics.median(on_cluster), statistics.median(on_standalone)
    throughput = standalone_s / cluster_s
    rows = [
        ["standalone server", f"{n:,}", f"{1 / standalone_s:,.0f}", fmt_time(standalone_s)],
        ["cluster, 3 primaries", f"{n:,}", f"{1 / cluster_s:,.0f}", fmt_time(cluster_s)],
    ]
    mem_rows = [
        [f"cluster `ops.rotate`, {tenth:,} records", f"{peak_tenth / 2**20:.2f} MiB"],
        [f"cluster `ops.rotate`, {n:,} records", f"{peak_all / 2**20:.2f} MiB"],
    ]
    section.body += [
        f"{n:,} hash records with two encrypted fields on each; batch size 1,000; median of "
        f"{rounds} alternating rounds, each moving every record to a fresh master key. On the "
        "cluster a batch is read and written with one script call per hash slot, each node's "
        "calls sent in one pipeline on its own connection.",
        "",
        *table(["`ops.rotate` on", "records", "records/s", "per record"], rows),
        "",
        f"**cluster throughput: {throughput:.2f}x the standalone one** (goal ≥ {1 / GOAL:.1f}x: "
        f"{'met' if throughput >= 1 / GOAL else '**not met**'}).",
        "",
        *table(["run", "peak"], mem_rows),
        "",
        f"Memory of a cluster run does not grow with the record count: "
        f"{peak_all / max(peak_tenth, 1):.2f}x the peak for ten times the records.",
    ]
    figure = Comparison(
        "cluster / standalone `rotate`, per record", on_cluster, on_standalone, GOAL
    )
    section.goals.append(("Cluster: `rotate` per record, cluster / standalone", figure))
    return section
