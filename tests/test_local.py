"""devtools/local.py: the local KMS and the local Redis Cluster a user starts by hand.

Each command runs as the user runs it (a subprocess, from the repository), its printed
environment is used as the user would use it, then it is stopped with Ctrl-C (SIGINT).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from devtools.local import READY
from devtools.redis_stack import REPO_ROOT

LOCAL = REPO_ROOT / "devtools" / "local.py"
KEY_ID = re.compile(r"\b[0-9a-f]{16}\b")


@dataclass
class Running:
    """A local.py command, started, with what it printed up to ``READY``."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    @property
    def exports(self) -> dict[str, str]:
        found = {}
        for line in self.lines:
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").partition("=")
                found[name] = shlex.split(value)[0]
        return found

    def stop(self) -> int:
        """Ctrl-C, as a user stops it; its exit status."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=30)


def start(*args: str) -> Running:
    # Without the test session's servers and keys in the environment: as from a new shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_OM", "AWS_"))}
    proc = subprocess.Popen(
        [sys.executable, str(LOCAL), *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    running = Running(proc)
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            running.lines.append(line.rstrip("\n"))
            if line.startswith(READY):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(timeout=90):
        proc.kill()
        proc.wait()
        pytest.fail(f"local.py {' '.join(args)} did not get ready: {running.lines}")
    return running


@pytest.fixture
def started() -> Iterator[list[Running]]:
    """Commands started by a test; killed if the test ends before stopping them."""
    runs: list[Running] = []
    yield runs
    for run in runs:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def answers(url: str) -> bool:
    host, port = url.split("://", 1)[1].split("/")[0].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redis_encrypted_fields", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_kms_command_prints_an_environment_the_key_store_works_with(
    started: list[Running],
) -> None:
    run = start("kms", "--redis")
    started.append(run)
    exports = run.exports
    assert exports["REDIS_SRE_KMS_KEY_ID"] == "alias/redis-encrypted-fields"
    assert exports["AWS_ENDPOINT_URL_KMS"].startswith("http://127.0.0.1:")
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= set(exports)
    (arn,) = re.findall(r"arn:aws:kms:[^\s)]+", "\n".join(run.lines))

    # The user's shell: the exports, and nothing of the test session's servers or keys.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "AWS_"))},
        **exports,
    }
    created = cli(env, "keys", "create")
    assert created.returncode == 0, created.stderr
    (key_id,) = KEY_ID.findall(created.stdout)
    listed = cli(env, "keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (record,) = json.loads(listed.stdout)
    assert (record["key_id"], record["state"], record["kms_key_id"]) == (key_id, "active", arn)
    # The key store lives in the Redis it started, wrapped by its KMS key.
    stored = redis.Redis.from_url(exports["REDIS_OM_URL"]).hkeys("redis-encrypted-fields:keystore")
    assert stored == [key_id.encode()]

    assert run.stop() == 0
    assert not answers(exports["AWS_ENDPOINT_URL_KMS"])
    assert not answers(exports["REDIS_OM_URL"])


def test_the_cluster_command_prints_a_cluster_to_connect_to_and_its_redis_cli(
    started: list[Running],
) -> None:
    run = start("cluster")
    started.append(run)
    url = run.exports["REDIS_OM_CLUSTER_URL"]
    (primaries,) = [line for line in run.lines if line.startswith("# primaries: ")]
    nodes = primaries.removeprefix("# primaries: ").split()
    assert len(nodes) == 3
    assert url in nodes

    cluster: RedisCluster[str] = RedisCluster.from_url(url, decode_responses=True)
    try:
        keys = [f"local:{i}" for i in range(30)]  # spread over the three primaries' slots
        for key in keys:
            cluster.set(key, key.upper())
        assert [cluster.get(key) for key in keys] == [key.upper() for key in keys]
        assert all(redis.Redis.from_url(node).dbsize() > 0 for node in nodes)
    finally:
        cluster.close()

    # The redis-cli line as printed (with the LD_LIBRARY_PATH it needs), run by a shell.
    (command,) = [line for line in run.lines if "redis-cli" in line and not line.startswith("#")]
    for key in ("local:0", "local:7"):  # -c follows the redirection to the key's node
        got = subprocess.run(
            ["sh", "-c", f"{command} GET {key}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert got.returncode == 0, got.stderr
        assert got.stdout.strip() == key.upper()

    assert run.stop() == 0
    assert not any(answers(node) for node in nodes)


def test_kms_server_runs_as_a_script(tmp_path: Path) -> None:
    # From another folder and without PYTHONPATH, as the user ran it: devtools is no package
    # on sys.path then.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for args in (["kms_server.py", "--help"], ["local.py", "kms", "--help"]):
        done = subprocess.run(
            [sys.executable, str(REPO_ROOT / "devtools" / args[0]), *args[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "REDIS_SRE_KMS_KEY_ID" in done.stdout
