"""Redis Cluster (issue 11): models, migrate/rotate/status (sync, async, CLI) on a real cluster,
never a report over part of the keyspace, faults. The shared 3-primary cluster comes from
conftest; the fault tests start their own, with replicas."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cluster_models import (
    ASYNC_MODELS,
    MODELS,
    ClusterAccount,
    ClusterTenant,
)
from fault_models import FaultAccount
from redis.cluster import RedisCluster
from security_support import cli
from support import aw, new_key

from redis_encrypted_fields import DecryptionError, get_keyring, ops
from redis_encrypted_fields.crypto.envelope import PREFIX, binding, seal
from redis_encrypted_fields.keys.ring import MasterKey
from redis_encrypted_fields.model import saving as models
from redis_encrypted_fields.ops import batch
from redis_encrypted_fields.ops.topology import TopologyError

TESTS = Path(__file__).parent
URL = os.environ["REDIS_OM_CLUSTER_URL"]


def cluster(url: str = URL) -> RedisCluster:
    return RedisCluster.from_url(url, decode_responses=True)


def prefix_of(model: Any) -> str:
    return str(model.make_key(model._meta.primary_key_pattern.format(pk="")))


def is_json(model: Any) -> bool:
    import aredis_om
    import redis_om

    return issubclass(model, (redis_om.JsonModel, aredis_om.JsonModel))


def wipe(model: Any, c: RedisCluster | None = None) -> None:
    c = c or cluster()
    for key in list(c.scan_iter(match=prefix_of(model) + "*", count=1000)):
        c.delete(key)


def plant(model: Any, n: int, c: RedisCluster | None = None) -> dict[str, str]:
    """Plaintext records, as older code stored them; returns pk -> password."""
    c = c or cluster()
    wipe(model, c)
    passwords: dict[str, str] = {}
    pipe = c.pipeline()
    for i in range(n):
        pk = f"p{i:05d}"
        passwords[pk] = f"pw-{i}-{random.random()}"
        key = prefix_of(model) + pk
        if is_json(model):
            doc = {
                "pk": pk,
                "name": "n",
                "admin": {"user": "root", "password": passwords[pk]},
                "replicas": [{"user": "r", "password": passwords[pk] + "-r"}],
            }
            pipe.json().set(key, "$", doc)
        else:
            pipe.hset(key, mapping={"pk": pk, "name": "n", "password": passwords[pk]})
    pipe.execute()
    return passwords


async def passwords_of(model: Any, pks: list[str]) -> dict[str, str]:
    out = {}
    for pk in pks:
        got = await aw(model.get(pk))
        out[pk] = str(got.admin.password if is_json(model) else got.password)
    return out


def use_keys(monkeypatch: pytest.MonkeyPatch, current: str, *previous: str) -> None:
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", current)
    monkeypatch.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", ",".join(previous))


@pytest.fixture(params=MODELS, ids=lambda m: m.__name__)
def model(request: pytest.FixtureRequest) -> Any:
    return request.param


def stats(c: RedisCluster, command: str) -> dict[str, int]:
    """Calls of ``command`` per primary."""
    out = {}
    for node in c.get_primaries():
        info = node.redis_connection.info("commandstats")
        out[node.name] = int(info.get(f"cmdstat_{command}", {}).get("calls", 0))
    return out


# --- the models themselves -------------------------------------------------------------------


async def test_models_save_read_keep_and_clear_on_a_cluster(model: Any) -> None:
    if is_json(model):
        m = model(name="c", admin={"user": "u", "password": "pw"}, replicas=[])
    else:
        m = model(name="c", password="pw", api_token="tok")
    await aw(m.save())
    got = await aw(model.get(m.pk))
    payload = json.loads(got.model_dump_json())
    await aw(model(**payload).save())  # masks sent back keep the secrets
    again = await aw(model.get(m.pk))
    if is_json(model):
        assert again.admin.password == "pw"
    else:
        assert (again.password, again.api_token) == ("pw", "tok")
        again.api_token = None
        await aw(again.save())
        assert (await aw(model.get(m.pk))).api_token is None


async def test_a_save_keeping_a_secret_never_reverts_a_concurrent_change_on_a_cluster(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transaction of a save that keeps a stored secret works on a cluster (one key, one
    slot): a password another writer changes between its read and its write survives."""
    if is_json(model):
        m = model(name="c", admin={"user": "u", "password": "old"}, replicas=[])
        path, json_path = "admin.password", "$.admin.password"
    else:
        m = model(name="c", password="old", api_token="tok")
        path = json_path = "password"
    await aw(m.save())
    key = model.make_primary_key(m.pk)
    new = f"changed-meanwhile-{random.random()}"
    real, reads = models.resolve_masks, []

    def racing(*args: Any, **kwargs: Any) -> None:
        reads.append(1)
        if len(reads) == 1:  # another writer, right after the save's first read
            envelope = seal(new, get_keyring(), binding(key, path))
            if is_json(model):
                cluster().json().set(key, json_path, envelope)
            else:
                cluster().hset(key, path, envelope)
        real(*args, **kwargs)

    monkeypatch.setattr(models, "resolve_masks", racing)
    payload = json.loads(m.model_dump_json())
    payload["name"] = "renamed"
    await aw(model(**payload).save())
    got = await aw(model.get(m.pk))
    password = got.admin.password if is_json(model) else got.password
    assert (password, got.name, len(reads)) == (new, "renamed", 2)


# --- ops on a cluster ------------------------------------------------------------------------


async def test_migrate_rotate_status_on_every_primary(
    model: Any, monkeypatch: pytest.MonkeyPatch, master_key: str
) -> None:
    c = cluster()
    passwords = plant(model, 120, c)
    run_async = model in ASYNC_MODELS
    values = 2 if is_json(model) else 1  # JSON: the admin's and one replica's password

    async def run(name: str, **kwargs: Any) -> ops.Report:
        if run_async:
            report: ops.Report = await getattr(ops, "a" + name)(model, **kwargs)
            return report
        return getattr(ops, name)(model, **kwargs)

    scans, keys = stats(c, "scan"), stats(c, "keys")
    report = await run("migrate", batch_size=17)
    assert (report.records, report.encrypted, report.ok) == (120, 120 * values, True)
    # Every primary was scanned, never with KEYS.
    after = stats(c, "scan")
    assert all(after[n] > scans[n] for n in scans)
    assert stats(c, "keys") == keys
    for node in c.get_primaries():  # the records really are spread over the primaries
        assert node.redis_connection.dbsize() > 0
    new = new_key()
    use_keys(monkeypatch, new, master_key)
    report = await run("rotate", batch_size=17)
    assert (report.rewrapped, report.failures, report.ok) == (120 * values, [], True)
    use_keys(monkeypatch, new)  # the old key is gone: everything still reads
    status = await run("status")
    assert status.ok
    assert status.keys_in_use() == [
        (MasterKey.from_base64(new).key_id_hex, "current", 240 // 2 * values)
    ]
    sample = random.sample(sorted(passwords), 10)
    assert await passwords_of(model, sample) == {pk: passwords[pk] for pk in sample}


def test_a_write_racing_the_rotation_is_not_overwritten(
    monkeypatch: pytest.MonkeyPatch, master_key: str
) -> None:
    plant(ClusterAccount, 30)
    ops.migrate(ClusterAccount)
    use_keys(monkeypatch, new_key(), master_key)
    real = batch.write_request

    def racing(script: Any, keys: Any, args: Any, *rest: Any) -> Any:
        send = real(script, keys, args, *rest)

        def request(c: Any) -> Any:
            if any(k.endswith("p00003") for k in keys):
                ClusterAccount(pk="p00003", name="x", password="changed-by-app").save()
            return send(c)

        return request

    monkeypatch.setattr(batch, "write_request", racing)
    report = ops.rotate(ClusterAccount, batch_size=8)
    assert report.ok
    assert ClusterAccount.get("p00003").password == "changed-by-app"


def test_undecryptable_values_are_reported_on_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    plant(ClusterAccount, 12)
    ops.migrate(ClusterAccount)
    use_keys(monkeypatch, new_key())
    report = ops.rotate(ClusterAccount)
    assert not report.ok
    assert len(report.failures) == 12
    (group,) = [g for g in report.groups() if g.failed]
    assert (group.state, group.role, group.count) == ("undecryptable", "unknown", 12)


# --- the command line -------------------------------------------------------------------------


def test_cli_works_on_each_models_own_database(master_key: str) -> None:
    for m in MODELS:
        wipe(m)
    plant(ClusterAccount, 80)
    plant(ClusterTenant, 20)
    # REDIS_OM_URL names the standalone server: the models' own database must win.
    proc = cli("status", "cluster_models:ClusterAccount")
    assert proc.returncode == 1, proc.stderr  # plaintext
    assert "status: 80 records" in proc.stdout.splitlines()[-1]
    assert "ClusterAccount.password: 80 plaintext" in proc.stdout
    proc = cli("migrate", "cluster_models")
    assert proc.returncode == 0, proc.stderr
    proc = cli("rotate", "cluster_models", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    proc = cli("status", "cluster_models", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["records"] >= 100
    assert all(s["server"].startswith("Redis Cluster") for s in report["scanned"])


def test_cli_url_may_name_any_node() -> None:
    plant(ClusterAccount, 30)
    other = cluster().get_primaries()[-1]
    url = f"redis://{other.host}:{other.port}"
    proc = cli("migrate", "cluster_models:ClusterAccount", "--url", url)
    assert proc.returncode == 0, proc.stderr
    assert "migrate: 30 records; changed 30 values" in proc.stdout


def test_a_plain_client_on_a_cluster_node_is_refused() -> None:
    node = cluster().get_primaries()[0]
    plain = redis.Redis(host=node.host, port=node.port, decode_responses=True)
    with pytest.raises(TopologyError, match="node of a Redis Cluster"):
        ops.status(ClusterAccount, client=plain)


def test_a_run_finding_nothing_on_a_cluster_says_where_it_looked() -> None:
    wipe(ClusterAccount)
    proc = cli("status", "cluster_models:ClusterAccount")
    assert proc.returncode == 0
    assert "no records of ClusterAccount found on Redis Cluster (127.0.0.1:" in proc.stderr
    assert "cluster.account:*" in proc.stderr


def test_errors_on_a_cluster_are_one_line() -> None:
    proc = cli("status", "cluster_models:ClusterAccount", "--url", "redis://127.0.0.1:1")
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1


def test_sigkill_of_the_tool_then_rerun_loses_nothing(
    monkeypatch: pytest.MonkeyPatch, master_key: str
) -> None:
    c = cluster()
    passwords = plant(ClusterAccount, 6000, c)
    ops.migrate(ClusterAccount, client=c)
    new = new_key()
    use_keys(monkeypatch, new, master_key)
    new_id = MasterKey.from_base64(new).key_id
    args = [
        sys.executable,
        "-m",
        "redis_encrypted_fields",
        "rotate",
        "cluster_models:ClusterAccount",
    ]
    proc = subprocess.Popen([*args, "--batch-size", "50"], cwd=TESTS, env=dict(os.environ))
    node = c.get_primaries()[0].redis_connection
    first = node.scan(0, match=prefix_of(ClusterAccount) + "*", count=1000)[1][:20]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if any(_kid(node.hget(k, "password").encode()) == new_id for k in first):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = ops.status(ClusterAccount, client=c).states["ClusterAccount.password"]
    assert 0 < done[f"key:{new_id.hex()}"] < 6000, done  # killed mid-run
    rerun = subprocess.run(args, cwd=TESTS, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    use_keys(monkeypatch, new)
    assert ops.status(ClusterAccount, client=c).ok
    sample = random.sample(sorted(passwords), 300)
    assert {pk: ClusterAccount.get(pk).password for pk in sample} == {
        pk: passwords[pk] for pk in sample
    }


# --- faults: a cluster of its own, with replicas ---------------------------------------------


@pytest.fixture(scope="module")
def fault_cluster() -> Iterator[Any]:
    from devtools.redis_stack import RedisStackCluster

    with RedisStackCluster(primaries=3, replicas_per_primary=1, node_timeout_ms=1000) as c:
        FaultAccount._meta.database = cluster(c.url)
        yield c


def wait_ok(c: Any, timeout: float = 30.0) -> None:
    """Until every primary that was killed has been replaced by its replica, and every live node
    serves every slot again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        promoted = all(
            replica.alive and redis.Redis(port=replica.port).role()[0] == b"master"
            for primary, replica in zip(c.primaries, c.replicas, strict=False)
            if not primary.alive
        )
        if promoted and all(c.state_ok(n) for n in c.nodes if n.alive):
            return
        time.sleep(0.1)
    raise AssertionError("the cluster did not recover")


def plant_replicated(c: Any, n: int) -> dict[str, str]:
    client = cluster(c.url)
    passwords = plant(FaultAccount, n, client)
    ops.migrate(FaultAccount, client=client)
    for node in client.get_primaries():
        node.redis_connection.execute_command("WAIT", 1, 5000)  # on the replicas before a kill
    return passwords


def check_all(c: Any, passwords: dict[str, str]) -> None:
    client = cluster(c.url)
    FaultAccount._meta.database = client
    for pk, password in passwords.items():
        stored = client.hget(prefix_of(FaultAccount) + pk, "password")
        assert stored.startswith(PREFIX), pk  # encrypted once, never twice
        assert FaultAccount.get(pk).password == password


def test_sigkill_of_a_primary_during_rotate(fault_cluster: Any, master_key: str) -> None:
    passwords = plant_replicated(fault_cluster, 6000)
    new = new_key()
    env = {**os.environ, "REDIS_SRE_MASTER_KEY": new, "REDIS_SRE_PREVIOUS_MASTER_KEYS": master_key}
    args = [sys.executable, "-m", "redis_encrypted_fields", "rotate", "fault_models:FaultAccount"]
    args += ["--url", fault_cluster.url, "--batch-size", "200"]
    new_id = MasterKey.from_base64(new).key_id
    victim = fault_cluster.primaries[1]
    probe = redis.Redis(port=victim.port)
    proc = subprocess.Popen(
        args, cwd=TESTS, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        # Kill the primary once rotate has started writing on it.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            sample = [probe.hget(k, "password") for k in probe.scan(0, count=200)[1][:50]]
            if any(v and _kid(v) == new_id for v in sample):
                break
            time.sleep(0.01)
        victim.kill()
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The run either completed after the failover or stopped with one clear line.
    assert proc.returncode in (0, 2), err
    if proc.returncode == 2:
        assert len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err
    wait_ok(fault_cluster)
    rerun = subprocess.run(args, cwd=TESTS, env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr
    status = subprocess.run(
        [*args[:3], "status", *args[4:]],
        cwd=TESTS,
        env={**env, "REDIS_SRE_PREVIOUS_MASTER_KEYS": ""},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REDIS_SRE_MASTER_KEY", new)
        mp.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", "")
        check_all(fault_cluster, passwords)


def _kid(envelope: bytes) -> bytes | None:
    from redis_encrypted_fields.crypto.envelope import parse

    try:
        return parse(envelope.decode()).key_id
    except (DecryptionError, UnicodeDecodeError):
        return None


def migrate_slot(client: RedisCluster, slot: int) -> None:
    """Move ``slot`` to another primary the way redis-cli --cluster reshard does, slowly, so that
    a run in progress meets MOVED and ASK replies."""
    source = client.nodes_manager.get_node_from_slot(slot)
    target = next(n for n in client.get_primaries() if n.name != source.name)
    src, dst = source.redis_connection, target.redis_connection
    src_id, dst_id = src.execute_command("CLUSTER MYID"), dst.execute_command("CLUSTER MYID")
    dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
    while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 25):
        src.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)
        time.sleep(0.005)
    for node in client.get_primaries():
        node.redis_connection.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)


def test_moved_and_ask_during_a_run_are_followed(fault_cluster: Any, master_key: str) -> None:
    wait_ok(fault_cluster)
    client = cluster(fault_cluster.url)
    FaultAccount._meta.database = client
    wipe(FaultAccount, client)
    passwords: dict[str, str] = {}
    pipe = client.pipeline()
    for i in range(3000):
        # Half of them in one hash slot, which moves to another primary during the run.
        pk = f"{{moving}}{i:05d}" if i % 2 else f"p{i:05d}"
        passwords[pk] = f"pw-{i}"
        key = prefix_of(FaultAccount) + pk
        pipe.hset(key, mapping={"pk": pk, "name": "n", "password": passwords[pk]})
    pipe.execute()
    slot = client.keyslot(prefix_of(FaultAccount) + "{moving}00001")
    new = new_key()
    ring = __import__("redis_encrypted_fields").KeyRing.from_base64(new, [master_key])
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["report"] = ops.rotate(
                FaultAccount, client=cluster(fault_cluster.url), keyring=ring, batch_size=50
            )
        except Exception as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    migrate_slot(cluster(fault_cluster.url), slot)
    worker.join(timeout=120)
    assert "error" not in outcome, repr(outcome.get("error"))
    report = outcome["report"]
    assert report.ok, report.summary()
    assert report.encrypted + report.rewrapped >= 3000 - report.unchanged
    after = ops.status(FaultAccount, client=cluster(fault_cluster.url), keyring=ring)
    assert after.ok, after.summary()
    assert after.records == 3000
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REDIS_SRE_MASTER_KEY", new)
        mp.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", "")
        check_all(fault_cluster, dict(random.sample(sorted(passwords.items()), 200)))


def test_uncovered_slots_stop_the_run(fault_cluster: Any) -> None:
    wait_ok(fault_cluster)
    client = cluster(fault_cluster.url)
    FaultAccount._meta.database = client
    node = client.get_primaries()[0].redis_connection
    slot = client.keyslot(prefix_of(FaultAccount) + "anything")
    owner = client.nodes_manager.get_node_from_slot(slot).redis_connection
    owner.execute_command("CLUSTER DELSLOTSRANGE", slot, slot)
    try:
        with pytest.raises(TopologyError, match="does not serve every hash slot"):
            ops.status(FaultAccount, client=client)
        proc = cli("status", "fault_models:FaultAccount", "--url", fault_cluster.url)
        assert proc.returncode == 2
        (line,) = proc.stderr.splitlines()
        assert "does not serve every hash slot" in line
    finally:
        owner.execute_command("CLUSTER ADDSLOTSRANGE", slot, slot)
    assert node.ping()
