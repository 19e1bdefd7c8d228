"""Which server a client talks to: a standalone server or a Redis Cluster, told by the server.

The maintenance tools must see every record of a model. On a standalone server one ``SCAN``
does; on a cluster every primary holds a share of the keys, so each is scanned on its own, and a
script may only touch keys of one hash slot. A plain client pointed at one node of a cluster, or
a cluster that does not cover every slot, would let a run report on part of the data: refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterCrossSlotError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import EncryptionError
from ..steps import Request, Steps

__all__ = [
    "Script",
    "TopologyError",
    "check",
    "describe",
    "evaluate",
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


# --- calling a batch script ---------------------------------------------------------------------

# What a node answers when a key is not (or no longer, or not yet wholly) its own, or when it is
# gone: those calls are sent again through redis-py's cluster pipeline, which follows
# redirections and refreshes its map of the slots. A redirection is answered before a script
# runs: nothing is done twice.
_ELSEWHERE = (
    AskError,
    ClusterCrossSlotError,
    ClusterDownError,
    MovedError,
    TryAgainError,
    RedisConnectionError,
    RedisTimeoutError,
)


@dataclass(slots=True)
class Script:
    """A Lua batch script, called by its SHA1 once loaded."""

    text: str
    sha: str = ""


def evaluate(
    script: Script,
    keys: Sequence[str],
    shared: Sequence[Any],
    args: Sequence[Any] = (),
    starts: Sequence[int] = (),
) -> Request:
    """One call of a batch script over ``keys`` (ARGV: ``shared``, then each key's part of
    ``args``, which begins at ``starts[i]``); its reply has one entry per key, in order.

    On a standalone server that is one call. On a cluster a script may only name keys of one
    hash slot: one call per slot. The sync client sends each node its calls in one plain
    pipeline on that node's connection; calls a node redirects (MOVED, ASK, TRYAGAIN: a slot
    being migrated) or cannot take (it is gone: a failover) are sent again through redis-py's
    cluster pipeline. (Measured on 20,000 records: every call through the cluster pipeline
    rotated at a seventh of the standalone speed, its Python work per command being the cost.)
    The asyncio client sends everything through its cluster pipeline.
    """

    def request(client: Any) -> Any:
        if not is_cluster(client):
            return client.evalsha(script.sha, len(keys), *keys, *shared, *args)
        call = _Call(script, keys, shared, args, starts)
        if _is_async(client):
            return call.run_async(client)
        return call.run(client)

    return request


class _Call:
    __slots__ = ("args", "bounds", "keys", "script", "shared")

    def __init__(
        self,
        script: Script,
        keys: Sequence[str],
        shared: Sequence[Any],
        args: Sequence[Any],
        starts: Sequence[int],
    ) -> None:
        self.script, self.keys, self.shared, self.args = script, keys, shared, args
        self.bounds = [*starts, len(args)] if starts else None

    def argv(self, positions: Sequence[int]) -> list[Any]:
        bounds, args = self.bounds, self.args
        if bounds is None:
            return [*self.shared]
        return [*self.shared, *(a for i in positions for a in args[bounds[i] : bounds[i + 1]])]

    def run(self, client: Any) -> list[Any]:
        calls = self.slot_calls(client, list(range(len(self.keys))))
        by_node: dict[str, tuple[Any, list[tuple[list[int], list[Any]]]]] = {}
        nodes_manager, keyslot = client.nodes_manager, client.keyslot
        for call in calls:
            node = nodes_manager.get_node_from_slot(keyslot(self.keys[call[0][0]]))
            by_node.setdefault(node.name, (node, []))[1].append(call)
        found: dict[int, Any] = {}
        redirected: list[int] = []
        for node, node_calls in by_node.values():
            try:
                replies = self.on_node(node.redis_connection, node_calls)
            except _ELSEWHERE:
                replies = [None] * len(node_calls)  # the node is gone: all of it again
            for (group, _), reply in zip(node_calls, replies, strict=True):
                if reply is None or isinstance(reply, Exception):
                    redirected += group
                else:
                    found.update(zip(group, reply, strict=True))
        if redirected:
            found.update(zip(redirected, self.by_slot(client, sorted(redirected)), strict=True))
        return [found[i] for i in range(len(self.keys))]

    def on_node(self, connection: Any, calls: list[tuple[list[int], list[Any]]]) -> list[Any]:
        """Each call's reply, or ``None`` where the node sends it elsewhere."""
        for attempt in range(2):
            pipe = connection.pipeline(transaction=False)
            for group, argv in calls:
                names = [self.keys[i] for i in group]
                pipe.evalsha(self.script.sha, len(names), *names, *argv)
            replies = pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in replies):
                # A replica promoted by a failover has not loaded the script (SCRIPT LOAD is
                # not replicated); its SHA1 stays the same. Calls that failed did nothing.
                connection.script_load(self.script.text)
                continue
            for reply in replies:
                if isinstance(reply, Exception) and not isinstance(reply, _ELSEWHERE):
                    raise reply
            return [None if isinstance(r, Exception) else r for r in replies]
        raise AssertionError("unreachable")

    async def run_async(self, client: Any) -> list[Any]:
        positions = list(range(len(self.keys)))
        return await self.by_slot_async(client, positions)

    def slot_calls(self, client: Any, positions: list[int]) -> list[tuple[list[int], list[Any]]]:
        keys = [self.keys[i] for i in positions]
        return [
            ([positions[j] for j in group], self.argv([positions[j] for j in group]))
            for group in slot_groups(client, keys)
        ]

    def by_slot(self, client: Any, positions: list[int]) -> list[Any]:
        calls = self.slot_calls(client, positions)
        for attempt in range(2):
            pipe = client.pipeline()
            for group, argv in calls:
                names = [self.keys[i] for i in group]
                pipe.execute_command("EVALSHA", self.script.sha, len(names), *names, *argv)
            try:
                return _in_order(positions, calls, pipe.execute())
            except NoScriptError:
                # A replica promoted by a failover has not loaded the script (SCRIPT LOAD is
                # not replicated): load it on every primary and send the batch again.
                if attempt:
                    raise
                self.script.sha = _text(client.script_load(self.script.text))
        raise AssertionError("unreachable")

    async def by_slot_async(self, client: Any, positions: list[int]) -> list[Any]:
        calls = self.slot_calls(client, positions)
        for attempt in range(2):
            pipe = client.pipeline()
            for group, argv in calls:
                names = [self.keys[i] for i in group]
                pipe.execute_command("EVALSHA", self.script.sha, len(names), *names, *argv)
            try:
                return _in_order(positions, calls, await pipe.execute())
            except NoScriptError:
                if attempt:
                    raise
                self.script.sha = _text(await client.script_load(self.script.text))
        raise AssertionError("unreachable")


def _in_order(
    positions: list[int], calls: list[tuple[list[int], list[Any]]], replies: Sequence[Any]
) -> list[Any]:
    found: dict[int, Any] = {}
    for (group, _), reply in zip(calls, replies, strict=True):
        found.update(zip(group, reply, strict=True))
    return [found[i] for i in positions]


def _is_async(client: Any) -> bool:
    return isinstance(client, AsyncRedisCluster)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _first(info: Any) -> dict[str, Any]:
    # A cluster client may answer per node ({node: reply}); any node's view will do.
    if isinstance(info, dict) and info and all(isinstance(v, dict) for v in info.values()):
        first: dict[str, Any] = next(iter(info.values()))
        return first
    return info if isinstance(info, dict) else {}
