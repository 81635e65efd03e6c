"""The service unchanged against a local 3-master Redis Cluster (keys hash-tagged per device)."""

from __future__ import annotations

import time

import pytest
from redis.cluster import RedisCluster

from service.store import keys
from service.store.tokens import TokenStore
from tests.conftest import bearer
from tests.imeis import HK, UNKNOWN
from tests.redis_cluster import LocalCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as local:
        yield local


@pytest.fixture
def cluster_app(cluster, make_app):
    # Flushed before the app starts: each test's app is a new deployment with secrets of its
    # own, whose ids must not meet those an earlier test's app recorded (SPEC §15).
    fresh = RedisCluster.from_url(cluster.url)
    for node in fresh.get_primaries():
        fresh.flushdb(target_nodes=node)
    fresh.close()
    app = make_app(redis_url=cluster.url)
    client = app.extensions["regionlock"].redis
    assert isinstance(client, RedisCluster)
    for node in client.get_primaries():
        client.flushdb(target_nodes=node)
    store = TokenStore(client)
    roles = ("device", "agent", "compliance", "editor", "auditor", "admin")
    tokens = {role: store.create(f"c-{role}", role) for role in roles}
    yield app, client, tokens


def test_device_keys_share_one_slot_and_spread_across_nodes(cluster_app):
    _, client, _ = cluster_app
    slot = client.keyslot
    assert slot(keys.device(HK)) == slot(keys.device_override(HK))
    assert slot(keys.TOKENS_BY_HASH) == slot(keys.TOKENS_BY_NAME)
    assert slot(keys.POLICY_ACTIVE) == slot(keys.POLICY_VERSIONS)
    nodes = {client.get_node_from_key(keys.device(f"{i:015d}")).name for i in range(50)}
    assert len(nodes) == 3


def test_checkin_unlock_and_audit_on_a_cluster(cluster_app):
    app, client, tokens = cluster_app
    http = app.test_client()

    def checkin(imei, network):
        response = http.post(
            "/v1/checkin",
            json={"imei": imei, "sim": {"network": network}},
            headers=bearer(tokens["device"]),
        )
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    assert checkin(HK, "310260")["verdict"] == "lock"  # gray import (US)
    assert checkin(UNKNOWN, "36801")["verdict"] == "lock"  # Cuba
    unlock = http.post(
        f"/v1/devices/{HK}/unlock",
        json={"reason": "ok", "ticket": "T"},
        headers=bearer(tokens["agent"]),
    )
    assert unlock.status_code == 201
    assert checkin(HK, "310260")["verdict"] == "allow"
    record = http.get(f"/v1/devices/{HK}", headers=bearer(tokens["agent"])).get_json()
    assert [d["verdict"] for d in record["decisions"]] == ["allow", "lock"]
    audit = http.get("/v1/audit", headers=bearer(tokens["auditor"])).get_json()["entries"]
    # Newest first: the unlock, then the seed bundle's publish as version 1 (issue 12.4).
    assert [(e["action"], e["actor"]) for e in audit] == [
        ("device.unlock", "c-agent"),
        ("policy.publish", "seed"),
    ]
    assert client.xlen(keys.CHECKIN_FACTS) == 3


def test_publish_reaches_workers_on_a_cluster(cluster_app, make_app, cluster):
    app, client, tokens = cluster_app
    other_worker = make_app(redis_url=cluster.url)
    http = app.test_client()
    other = other_worker.test_client()
    first = other.post(
        "/v1/checkin",
        json={"imei": UNKNOWN, "sim": {"network": "20801"}},
        headers=bearer(tokens["device"]),
    ).get_json()
    assert first["verdict"] == "allow" and first["policy_version"] == 1
    current = http.get("/v1/policy", headers=bearer(tokens["editor"])).get_json()
    bundle = {k: current[k] for k in ("name", "next_checkin_s", "rules", "distributors")}
    bundle["rules"][0]["regions"].append("FR")
    published = http.post(
        "/v1/policy",
        json={"bundle": bundle, "note": "add FR", "expected_version": 1, "force": True},
        headers=bearer(tokens["editor"]),
    )
    assert published.status_code == 201, published.get_json()
    deadline = time.monotonic() + 1.0
    while True:
        answer = other.post(
            "/v1/checkin",
            json={"imei": UNKNOWN, "sim": {"network": "20801"}},
            headers=bearer(tokens["device"]),
        ).get_json()
        if answer["policy_version"] == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert answer["policy_version"] == 2 and answer["verdict"] == "lock"


def test_retention_sweep_reaches_every_primary(cluster_app):
    """The sweep's SCAN visits each master and its compare-and-set stays within a slot."""
    from service.devices.retention import sweep
    from service.engine.model import DAY_S
    from tests.imeis import imei

    app, client, _ = cluster_app
    rl = app.extensions["regionlock"]
    phones = [imei(f"4901542012{i:04d}") for i in range(12)]
    long_ago = time.time() - 100 * DAY_S
    for phone in phones:
        rl.checkin.decide({"imei": phone, "sim": {"network": "20801"}}, None, long_ago)
    assert len({client.get_node_from_key(keys.device(p)).name for p in phones}) > 1
    seen = [
        i for rows in rl.devices.field_batches(("facts",), batch=5, scan_count=5) for i, _ in rows
    ]
    assert sorted(seen) == sorted(phones)
    report = sweep(rl.devices, retention_days=90)
    assert (report.devices, report.devices_changed) == (12, 12)
    assert all("facts" not in client.hgetall(keys.device(p)) for p in phones)
    assert rl.devices.snapshot(phones[0]).record.verdict == "allow"


def test_idempotency_keys_on_a_cluster(cluster_app):
    """Issue 12.7: the publish's record shares the {policy} slot (one MULTI/EXEC) and the
    activation reset's the device's slot (one script): both replay on a cluster."""
    import orjson

    app, client, tokens = cluster_app
    http = app.test_client()
    editor = {**bearer(tokens["editor"]), "Idempotency-Key": "c-pub"}
    current = http.get("/v1/policy", headers=editor).get_json()
    bundle = {k: current[k] for k in ("name", "next_checkin_s", "rules", "distributors")}
    bundle["rules"][0]["regions"].append("FR")
    body = {"bundle": bundle, "note": "add FR", "expected_version": 1, "force": True}
    first = http.post("/v1/policy", json=body, headers=editor)
    second = http.post("/v1/policy", json=body, headers=editor)
    assert first.status_code == second.status_code == 201, second.get_json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert first.get_json()["version"] == second.get_json()["version"] == 2
    assert client.get(keys.POLICY_ACTIVE) in ("2", b"2")

    client.hset(
        keys.device(HK),
        mapping={
            "state": orjson.dumps({"bindings": {"gray-market": True}}),
            "activation": orjson.dumps({"at": "x", "places": {}, "in_territory": False}),
        },
    )
    agent = {**bearer(tokens["agent"]), "Idempotency-Key": "c-reset"}
    reset = http.delete(f"/v1/devices/{HK}/activation", json={"reason": "r"}, headers=agent)
    again = http.delete(f"/v1/devices/{HK}/activation", json={"reason": "r"}, headers=agent)
    assert reset.status_code == again.status_code == 204
    assert again.headers["Idempotent-Replayed"] == "true"


def test_checkin_limits_on_a_cluster(cluster, make_app):
    # The device counter shares the device's slot; the fleet counter lives on another node:
    # both are counted by the device read's (non-transactional) pipeline.
    app = make_app(
        redis_url=cluster.url, checkin_device_limit="2/minute", checkin_fleet_limit="3/minute"
    )
    client = app.extensions["regionlock"].redis
    for node in client.get_primaries():
        client.flushdb(target_nodes=node)
    device = bearer(TokenStore(client).create("c-limits", "device"))
    http = app.test_client()
    assert client.keyslot(keys.device_checkin_rate(HK, 1)) == client.keyslot(keys.device(HK))

    def checkin(imei):
        return http.post("/v1/checkin", json={"imei": imei}, headers=device)

    assert [checkin(HK).status_code for _ in range(2)] == [200, 200]
    refused = checkin(HK)
    assert refused.status_code == 429 and "device" in refused.get_json()["error"]["message"]
    # The fleet has now counted three check-ins (the refused one too): a fourth device is over.
    assert checkin(UNKNOWN).status_code == 429


def test_a_cached_token_is_confirmed_by_the_device_read_on_a_cluster(cluster, make_app):
    # Issue 17.2: the revocation counter ({tokens} slot) is read in the device read's pipeline
    # beside the device's keys (another slot), and the alias index beside them; a token revoked
    # elsewhere is refused by the next check-in.
    app = make_app(redis_url=cluster.url, token_cache_s=0.5)
    client = app.extensions["regionlock"].redis
    for node in client.get_primaries():
        client.flushdb(target_nodes=node)
    store = TokenStore(client)
    device = bearer(store.create("c-cached", "device"))
    http = app.test_client()
    body = {"imei": HK, "imeis": [HK, UNKNOWN], "sim": {"network": "45400"}}
    assert http.post("/v1/checkin", json=body, headers=device).status_code == 200
    time.sleep(0.6)  # past the 0.5 s cache: the check-in's own read vouches for the token
    assert http.post("/v1/checkin", json=body, headers=device).status_code == 200
    assert client.smembers(keys.imei_alias(UNKNOWN)) == {HK}
    store.revoke("c-cached")
    assert http.post("/v1/checkin", json=body, headers=device).status_code == 401


def test_fleet_counters_and_locked_index_on_a_cluster(cluster_app):
    """SPEC §14 on a 3-master cluster: each device's counters and index entry are written by
    its own script in its own slot (shards tagged by slot), summed over every node on read;
    unlocks, locks, lapses, exports and the roll-up work across nodes."""
    import csv
    import io
    from datetime import UTC, datetime

    from service.devices.stats import StatsSweeper
    from service.store.shards import slot_tag
    from tests.imeis import imei

    app, client, tokens = cluster_app
    http = app.test_client()
    # Devices of no distributor, in Cuba: spread over the three nodes.
    devices = [imei(f"4901542{i:07d}") for i in range(30)]
    assert len({client.get_node_from_key(keys.device(d)).name for d in devices}) == 3
    for device in devices:
        response = http.post(
            "/v1/checkin",
            json={"imei": device, "sim": {"network": "36801"}},
            headers=bearer(tokens["device"]),
        )
        assert response.status_code == 200 and response.get_json()["verdict"] == "lock"
        shard = keys.locked_index(slot_tag(device))
        assert client.keyslot(shard) == client.keyslot(keys.device(device))
    unlocked, timeboxed = devices[0], devices[1]
    for device, expires in ((unlocked, None), (timeboxed, 1)):
        body = {"reason": "investigated", **({"expires_in_s": expires} if expires else {})}
        response = http.post(
            f"/v1/devices/{device}/unlock", json=body, headers=bearer(tokens["compliance"])
        )
        assert response.status_code == 201, response.get_json()
    today = datetime.now(UTC).date().isoformat()
    stats = http.get(f"/v1/stats?from={today}", headers=bearer(tokens["auditor"])).get_json()
    day = stats["days"][0]
    assert day["checkins"] == 30
    assert day["verdicts"]["lock"]["by_region"] == {"CU": 30}
    assert day["overrides"]["unlock"] == {"compliance": 2}
    assert stats["locked_now"]["total"] == 28
    time.sleep(1.2)
    assert StatsSweeper(app.extensions["regionlock"].stats.store).lapse() == 1
    export = http.get("/v1/reports/locked-devices", headers=bearer(tokens["auditor"]))
    rows = list(csv.DictReader(io.StringIO(export.get_data(as_text=True))))
    assert sorted(r["imei"] for r in rows) == sorted(set(devices) - {unlocked})
    stats = http.get(f"/v1/stats?from={today}", headers=bearer(tokens["auditor"])).get_json()
    assert stats["locked_now"]["total"] == 29
    # The roll-up reads every node's shards and drops them.
    sweeper = StatsSweeper(app.extensions["regionlock"].stats.store)
    tomorrow_midday = (time.time() // 86400 + 1) * 86400 + 43200
    assert sweeper.roll_up(tomorrow_midday) == [today.replace("-", "")]
    again = http.get(f"/v1/stats?from={today}", headers=bearer(tokens["auditor"])).get_json()
    assert again["days"] == stats["days"]
    assert all(
        client.exists(keys.stats_shard(slot_tag(d), today.replace("-", ""))) == 0 for d in devices
    )


def test_simulation_jobs_on_a_cluster(cluster_app, make_app, cluster, redis_url):
    """SPEC §12.5 on a Cluster: the check-in writes the sampling index in the device's slot;
    jobs are refused without a jobs Redis, and with one they sample the cluster's devices."""
    from service.policy.simulation_jobs import JobRunner, WorkerContext
    from service.store.sampling import SamplingIndex
    from service.store.simulations import SimulationStore
    from tests.fleet import sanctioning_russia
    from tests.imeis import imei

    app, client, tokens = cluster_app
    http = app.test_client()
    devices = [imei(f"49015420{n:06d}") for n in range(40)]
    for n, one in enumerate(devices):
        network = "25001" if n < 10 else "310260"  # 10 in Russia, the rest in the US
        answer = http.post(
            "/v1/checkin",
            json={"imei": one, "sim": {"network": network}},
            headers=bearer(tokens["device"]),
        )
        assert answer.status_code == 200
    index = SamplingIndex(client)
    counts = index.counts()
    assert sum(counts) == 40
    assert sorted(index.imeis_at(range(40), counts)) == sorted(devices)

    # No jobs Redis beside a Cluster: refused, naming the setting.
    body = {"bundle": sanctioning_russia()}
    refused = http.post("/v1/policy/simulations", json=body, headers=bearer(tokens["editor"]))
    assert refused.status_code == 503 and refused.get_json()["error"]["code"] == "jobs_unavailable"

    # With one: the job's records stay on the cluster, the queue on the single Redis.
    with_jobs = make_app(redis_url=cluster.url, jobs_redis_url=redis_url)
    started = with_jobs.test_client().post(
        "/v1/policy/simulations",
        json={**body, "sample": 25, "seed": 3},
        headers=bearer(tokens["editor"]),
    )
    assert started.status_code == 202
    context = WorkerContext.on(client, batch=7)
    job_id = started.get_json()["id"]
    assert JobRunner(context).run(job_id) == "done"
    report = SimulationStore(client).get(job_id)["report"]
    assert report["evaluated"] == 25 and report["fleet"] == 40
    interval = report["intervals"]["changes"]["allow->lock"]
    assert interval["low"] <= 10 <= interval["high"]
    census = SimulationStore(client).create(
        {"bundle": sanctioning_russia(), "active_version": 1, "seed": 1}
    )
    assert JobRunner(context).run(census) == "done"
    assert SimulationStore(client).get(census)["report"]["changes"] == {"allow->lock": 10}


def test_the_servers_direct_check_in_on_a_cluster_decides_with_the_blocking_client(
    cluster, make_app
):
    """A cluster's device read spans slots: no coalescing connection, the blocking client."""
    import asyncio

    import orjson

    from service.api.checkin.fast import DirectCheckin

    fresh = RedisCluster.from_url(cluster.url)  # a new deployment (see cluster_app)
    for node in fresh.get_primaries():
        fresh.flushdb(target_nodes=node)
    fresh.close()
    app = make_app(redis_url=cluster.url, token_cache_s=0.5)
    client = app.extensions["regionlock"].redis
    token = TokenStore(client).create("c-direct", "device")
    app.extensions["regionlock"].tokens.for_checkin(token)
    direct = DirectCheckin(app)
    headers = {"authorization": f"Bearer {token}"}
    body = orjson.dumps({"imei": UNKNOWN, "sim": {"network": "36801"}})
    status, _, content = asyncio.run(direct.handle_async(headers, body, "203.186.10.20", False))
    assert status == 200 and orjson.loads(content)["verdict"] == "lock"
    assert direct._coalesced is None
    assert app.extensions["regionlock"].devices.decisions(UNKNOWN)[0]["verdict"] == "lock"
