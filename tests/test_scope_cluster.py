"""Per-tenant keys on the suite's Redis Cluster: scope keys, shred and rotate."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from redis.cluster import RedisCluster
from scope_cluster_models import CLUSTER_URL, AsyncClusterLedger, ClusterLedger
from support import aw, new_key

from redis_encrypted_fields import ShreddedKeyError, ops, set_keyring, shred_scope
from redis_encrypted_fields.keys.scope import scope_keys, scope_redis_key


def cluster() -> RedisCluster:
    return RedisCluster.from_url(CLUSTER_URL, decode_responses=True)


def wipe(model: Any) -> None:
    c = cluster()
    prefix = model.make_key("")
    for key in list(c.scan_iter(match=prefix + "*", count=1000)):
        c.delete(key)


@pytest.fixture(params=[ClusterLedger, AsyncClusterLedger], ids=lambda m: m.__name__)
def model(request: pytest.FixtureRequest) -> Any:
    wipe(request.param)
    return request.param


async def run(name: str, model: Any) -> ops.Report:
    if model is AsyncClusterLedger:
        report: ops.Report = await getattr(ops, f"a{name}")(model)
        return report
    report = getattr(ops, name)(model)
    return report


async def test_scope_keys_shred_and_rotate_on_a_cluster(
    model: Any, monkeypatch: pytest.MonkeyPatch, master_key: str
) -> None:
    # Enough tenants that their scope keys land on every primary.
    tenants = [f"c-{uuid.uuid4().hex[:10]}" for _ in range(12)]
    records = []
    for t in tenants:
        record = model(tenant_id=t, password=f"pw-{t}")
        await aw(record.save())
        records.append(record)
    c = cluster()
    slots = {c.keyslot(scope_redis_key("tenant", t)) // 5462 for t in tenants}
    assert len(slots) > 1
    for record in records:
        back = await aw(model.get(record.pk))
        assert back.password.get_secret_value() == f"pw-{record.tenant_id}"
    result = shred_scope("tenant", tenants[0], models=[model])
    assert result.records == {model.__name__: 1}
    scope_keys.clear()
    with pytest.raises(ShreddedKeyError):
        await aw(model.get(records[0].pk))
    status = await run("status", model)
    assert [g.count for g in status.groups() if g.state == "shredded"] == [1]
    # A new master key: every scope key (on every primary) is re-wrapped under it.
    monkeypatch.setenv("REDIS_SRE_MASTER_KEY", new_key())
    monkeypatch.setenv("REDIS_SRE_PREVIOUS_MASTER_KEYS", master_key)
    set_keyring(None)
    report = await run("rotate", model)
    assert report.scope_keys_rewrapped >= len(tenants) - 1
    assert report.rewrapped == 0
    monkeypatch.delenv("REDIS_SRE_PREVIOUS_MASTER_KEYS")
    set_keyring(None)
    scope_keys.clear()
    for record in records[1:]:
        back = await aw(model.get(record.pk))
        assert back.password.get_secret_value() == f"pw-{record.tenant_id}"
