"""Which server a client talks to: a standalone server or a Redis Cluster, told by the server.

The maintenance tools must see every record of a model. On a standalone server one ``SCAN``
does; on a cluster every primary holds a share of the keys, so each is scanned on its own, and a
script may only touch keys of one hash slot. A plain client pointed at one node of a cluster, or
a cluster that does not cover every slot, would let a run report on part of the data: refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ._driver import Steps
from .errors import EncryptionError

__all__ = [
    "TopologyError",
    "check",
    "describe",
    "fingerprint",
    "is_cluster",
    "nodes",
    "slot_groups",
]

_SLOTS = 16384


class TopologyError(EncryptionError):
    """The tool cannot see the whole keyspace (a cluster node, uncovered slots, a lost node)."""


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a Redis Cluster client (sync or asyncio)."""
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

    return isinstance(client, (RedisCluster, AsyncRedisCluster))


def describe(client: Any) -> str:
    """Where ``client`` points, for messages: ``redis://host:port/db``; never a password."""
    if is_cluster(client):
        shown = ", ".join(f"{n.host}:{n.port}" for n in client.get_primaries())
        return f"Redis Cluster ({shown or 'no primaries known'})"
    pool = getattr(client, "connection_pool", None)
    kwargs: dict[str, Any] = getattr(pool, "connection_kwargs", {}) or {}
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={db}"
    connection_class = getattr(pool, "connection_class", None)
    scheme = "rediss" if "SSL" in getattr(connection_class, "__name__", "") else "redis"
    return f"{scheme}://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"


def check(client: Any) -> Steps[None]:
    """Refuse a client that cannot see the whole keyspace (raises ``TopologyError``)."""
    if is_cluster(client):
        # Each primary's own view: a node that lost or dropped slots knows it first.
        primaries = list(client.get_primaries())
        reply = yield lambda c: c.execute_command("CLUSTER INFO", target_nodes=primaries)
        views = [reply] if len(primaries) == 1 else list(reply.values())
        for info in views:
            info = _first(info)
            state = str(info.get("cluster_state", ""))
            assigned = int(info.get("cluster_slots_assigned", 0))
            failing = int(info.get("cluster_slots_fail", 0)) + int(
                info.get("cluster_slots_pfail", 0)
            )
            if state != "ok" or assigned != _SLOTS or failing:
                raise TopologyError(
                    f"{describe(client)} does not serve every hash slot (cluster_state:{state}, "
                    f"{assigned} of {_SLOTS} slots assigned, {failing} failing): a run would "
                    "miss the records in the others. Fix the cluster (CLUSTER INFO), then run "
                    "again"
                )
        return
    info = yield lambda c: c.info("cluster")
    if str(_first(info).get("cluster_enabled", 0)) == "1":
        raise TopologyError(
            f"{describe(client)} is a node of a Redis Cluster, and a plain client sees only that "
            "node's keys: pass a cluster client (redis.cluster.RedisCluster, or "
            "redis.asyncio.cluster.RedisCluster), as the model's Meta.database would be. The "
            "command line detects this itself"
        )


def fingerprint(client: Any) -> Steps[Any]:
    """What every primary says it serves: its id, slots, and slots being migrated or imported.

    Taken before and after a pass over the keyspace: if it changed (a reshard, a failover), keys
    may have moved from a node not yet scanned to one already scanned, and the pass may have
    missed them. ``None`` on a standalone server.
    """
    if not is_cluster(client):
        return None
    primaries = list(client.get_primaries())
    reply = yield lambda c: c.execute_command("CLUSTER NODES", target_nodes=primaries)
    replies = [reply] if len(primaries) == 1 else list(reply.values())
    seen = []
    for view in replies:
        for entry in view.values():
            if "myself" in str(entry.get("flags", "")):
                slots = tuple(tuple(map(str, r)) for r in entry.get("slots", []))
                moving = tuple(
                    (str(m.get("slot")), str(m.get("state"))) for m in entry.get("migrations", [])
                )
                seen.append((str(entry.get("node_id")), slots, moving))
    return tuple(sorted(seen))


def nodes(client: Any) -> list[Any]:
    """The nodes to scan: every primary of a cluster, or ``[None]`` (the server itself)."""
    if is_cluster(client):
        return list(client.get_primaries())
    return [None]


def slot_groups(client: Any, keys: Sequence[str]) -> list[list[int]]:
    """Positions of ``keys`` grouped so that a script may take each group at once: one group on
    a standalone server, one per hash slot on a cluster (in order of first appearance)."""
    if not is_cluster(client):
        return [list(range(len(keys)))]
    keyslot: Callable[[str], int] = client.keyslot
    groups: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(keyslot(key), []).append(i)
    return list(groups.values())


def _first(info: Any) -> dict[str, Any]:
    # A cluster client may answer per node ({node: reply}); any node's view will do.
    if isinstance(info, dict) and info and all(isinstance(v, dict) for v in info.values()):
        first: dict[str, Any] = next(iter(info.values()))
        return first
    return info if isinstance(info, dict) else {}
