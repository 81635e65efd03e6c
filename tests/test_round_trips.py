"""At most two Redis round trips per check-in (issue 17.2), counted by Redis itself.

Redis counts every read of a client's socket (``total_reads_processed`` in INFO stats): a
pipelined batch sent at once is one read, so the difference across a check-in is the number of
round trips the service made (plus one for the INFO that asks). The test runs its own Redis, so
nothing else talks to it; the app's policy poller is off.
"""

from __future__ import annotations

import time

import pytest
import redis as redis_lib

from service.store.server import EmbeddedRedis
from service.store.tokens import TokenStore
from tests.conftest import bearer
from tests.imeis import EU, HK, HK2, UNKNOWN, imei

# A second IMEI a phone reports (SPEC §9: several SIM slots).
ALIAS = imei("35387923" + "425264")


@pytest.fixture
def lone_redis(tmp_path):
    """A Redis of this test alone."""
    with EmbeddedRedis(tmp_path / "redis", appendonly=False) as server:
        yield server


@pytest.fixture
def setup(make_app, lone_redis):
    client = redis_lib.Redis.from_url(lone_redis.url, decode_responses=True)
    store = TokenStore(client)
    token = store.create(name="fleet", role="device")
    app = make_app(
        redis_url=lone_redis.url,
        token_cache_s=0.5,  # the default: the check-in confirms it in its read
        policy_poll_s=0,
        checkin_device_limit=(1000, 60),  # counted in the read, as in production
        checkin_fleet_limit=(100_000, 1),
    )
    yield app.test_client(), client, store, token
    client.close()


def _reads(client) -> int:
    return int(client.info("stats")["total_reads_processed"])


def _round_trips(redis_client, call) -> int:
    """Round trips CALL made, as Redis counted them (its own INFO read taken out)."""
    before = _reads(redis_client)
    call()
    return _reads(redis_client) - before - 1


def _checkin(http, token, **body):
    response = http.post("/v1/checkin", json=body, headers=bearer(token))
    assert response.status_code == 200, response.get_json()
    return response


def test_a_checkin_costs_two_round_trips(setup):
    http, redis_client, _, token = setup
    # Warm-up: scripts loaded, token verified and cached, connections open.
    for phone in (EU, UNKNOWN):
        _checkin(http, token, imei=phone, sim={"network": "20801"})
    assert _round_trips(redis_client, lambda: None) == 0  # the counting itself adds nothing

    # A device seen before, its token from the cache confirmed by the device read...
    assert _round_trips(redis_client, lambda: _checkin(http, token, imei=EU)) == 2
    # ... also once the token cache's 0.5 s are over (the revocation counter read with the
    # device vouches for it).
    time.sleep(0.6)
    assert _round_trips(redis_client, lambda: _checkin(http, token, imei=EU)) == 2
    # A device never seen (the alias index is asked, in the same read, whether another device
    # already reports its IMEI).
    assert _round_trips(redis_client, lambda: _checkin(http, token, imei=HK)) == 2
    # A phone reporting two IMEIs: the alias index is written when they change (first time)...
    both = {"imei": HK2, "imeis": [HK2, ALIAS], "sim": {"network": "45400"}}
    assert _round_trips(redis_client, lambda: _checkin(http, token, **both)) == 3
    # ... and read, never written, while they stay the same.
    for _ in range(3):
        assert _round_trips(redis_client, lambda: _checkin(http, token, **both)) == 2


def test_a_token_revoked_elsewhere_is_refused_by_the_next_checkin(setup):
    http, redis_client, store, token = setup
    _checkin(http, token, imei=EU)
    store.revoke("fleet")  # another process (the CLI) revokes it: the counter moves
    refused = http.post("/v1/checkin", json={"imei": EU}, headers=bearer(token))
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "unauthorized"
    # Nothing was recorded for the refused check-in: the history still holds one entry.
    assert redis_client.hget(f"rl:dev:{{{EU}}}", "history").count("\n") == 0
    # A new token works at once (verified afresh), and stays at two round trips.
    fresh = store.create(name="fleet-2", role="device")
    _checkin(http, fresh, imei=EU)
    assert _round_trips(redis_client, lambda: _checkin(http, fresh, imei=EU)) == 2
