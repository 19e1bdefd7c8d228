"""Shared pytest setup: a real Redis Stack server for the whole session.

``pytest_configure`` runs before any test module is imported, which matters:
redis-om binds a model's connection from ``REDIS_OM_URL`` when the model class
is defined. If ``REDIS_OM_URL`` is already set (e.g. by
``python devtools/redis_stack.py``, or pointing at your own server), it is used
as-is; otherwise a private server is started here and stopped at the end.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis
from hypothesis import settings

# Property-based tests: `make test` (and CI) tries the same examples on every run, so that a
# result changes only with the code; `make fuzz` explores new examples, many more of them.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

if TYPE_CHECKING:
    from devtools.kms_server import KmsServer
    from devtools.redis_stack import RedisStackCluster, RedisStackServer
    from devtools.vault_server import VaultServer

_server: RedisStackServer | None = None
_cluster: RedisStackCluster | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _server, _cluster
    from devtools.redis_stack import RedisStackCluster, RedisStackError, RedisStackServer

    if config.getoption("help", False):
        return
    # A Redis Cluster (3 primaries) for the cluster tests, shared by the session; its models
    # name it in Meta.database when their module is imported. REDIS_OM_CLUSTER_URL: your own.
    if not os.environ.get("REDIS_OM_CLUSTER_URL"):
        cluster = RedisStackCluster(primaries=3)
        try:
            cluster.start()
        except RedisStackError as exc:
            pytest.exit(
                f"could not start a Redis Cluster for the tests: {exc}",
                returncode=pytest.ExitCode.INTERNAL_ERROR,
            )
        _cluster = cluster
        os.environ["REDIS_OM_CLUSTER_URL"] = cluster.url
    if os.environ.get("REDIS_OM_URL"):
        return
    # pytest-xdist controller: let each worker start (and FLUSHALL) its own server.
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return
    server = RedisStackServer()
    try:
        server.start()
    except RedisStackError as exc:
        pytest.exit(
            f"could not start Redis Stack for the tests: {exc}",
            returncode=pytest.ExitCode.INTERNAL_ERROR,
        )
    _server = server
    os.environ["REDIS_OM_URL"] = server.url


def pytest_unconfigure(config: pytest.Config) -> None:
    global _server, _cluster
    if _cluster is not None:
        os.environ.pop("REDIS_OM_CLUSTER_URL", None)
        _cluster.stop()
        _cluster = None
    if _server is not None:
        os.environ.pop("REDIS_OM_URL", None)
        _server.stop()
        _server = None


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the Redis Stack server the tests (and redis-om) use."""
    return os.environ["REDIS_OM_URL"]


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis[str]]:
    """A ``decode_responses=True`` client for inspecting what is stored.

    The database is not flushed (that would drop redis-om's indexes): tests
    work on records of their own.
    """
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def kms_server() -> Iterator[KmsServer]:
    """One moto_server (AWS KMS and Secrets Manager) for the session, on a free loopback port,
    started by the first test that needs it."""
    from devtools.kms_server import KmsServer

    with KmsServer() as server:
        yield server


@pytest.fixture(scope="session")
def vault_server() -> Iterator[VaultServer]:
    """One OpenBao dev server (``bao server -dev``, transit mounted) for the session, on a free
    loopback port, started by the first test that needs it."""
    from devtools.vault_server import VaultServer

    with VaultServer() as server:
        server.enable_transit()
        yield server


@pytest.fixture(scope="session")
def silent_endpoint() -> Iterator[tuple[str, int]]:
    """A loopback port that accepts connections and never sends a byte."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)  # kept open, never answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


SESSION_KEY = "V2hlbiBpbiBkb3VidCwgdXNlIGJydXRlIGZvcmNlLiE="  # 32 bytes, tests only


@pytest.fixture(autouse=True)
def master_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test starts with one known master key in the environment and default settings."""
    from redis_encrypted_fields import set_keyring, set_plaintext_reads

    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", SESSION_KEY)
    monkeypatch.delenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", raising=False)
    monkeypatch.delenv("REDIS_SRE_REJECT_PLAINTEXT", raising=False)
    monkeypatch.delenv("REDIS_SRE_WRITE_FORMAT", raising=False)
    set_keyring(None)
    set_plaintext_reads(None)
    yield SESSION_KEY
    set_keyring(None)
    set_plaintext_reads(None)


@pytest.fixture(scope="session", autouse=True)
async def _indexes() -> None:
    """RediSearch indexes for every model the test modules define (sync and async registries),
    on the standalone server: redis-om's migrator cannot create indexes through a cluster
    client, and models on the test cluster are not searched (see README, Redis Cluster)."""
    import aredis_om
    import redis.asyncio
    import redis_om

    url = os.environ["REDIS_OM_URL"]
    redis_om.Migrator(conn=redis.Redis.from_url(url, decode_responses=True)).run()
    await aredis_om.Migrator(conn=redis.asyncio.Redis.from_url(url, decode_responses=True)).run()
