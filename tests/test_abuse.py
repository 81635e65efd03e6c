"""Abuse resistance: per-token rate limits, request size, security headers, secrets in logs."""

from __future__ import annotations

import secrets

import pytest

from service.config import DEFAULT_RATE_LIMITS, ConfigError, load_settings
from service.store import keys
from tests.conftest import bearer
from tests.imeis import HK, UNKNOWN


def _checkin(client, token, **kwargs):
    return client.post("/v1/checkin", json={"imei": HK}, headers=bearer(token), **kwargs)


# --- rate limits -------------------------------------------------------------------------


def test_token_over_its_limit_gets_429_with_retry_after(make_app, tokens):
    app = make_app(rate_limits={"agent": "3/minute"})
    client = app.test_client()
    agent = bearer(tokens["agent"])
    statuses = [client.get(f"/v1/devices/{HK}", headers=agent).status_code for _ in range(3)]
    assert statuses == [404] * 3
    limited = client.get(f"/v1/devices/{HK}", headers=agent)
    assert limited.status_code == 429
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    error = limited.get_json()["error"]
    assert error["code"] == "rate_limited" and error["message"]
    # Another token (here an admin) has its own budget.
    assert client.get(f"/v1/devices/{HK}", headers=bearer(tokens["admin"])).status_code == 404


def test_checkins_are_not_counted_against_the_token(make_app, tokens, redis):
    # One device token is shared by a whole fleet: its role limit never stops check-ins.
    app = make_app(rate_limits={"device": "2/minute"})
    client = app.test_client()
    statuses = [
        client.post("/v1/checkin", json={"imei": imei}, headers=bearer(tokens["device"]))
        for imei in (HK, UNKNOWN, HK, UNKNOWN)
    ]
    assert [r.status_code for r in statuses] == [200] * 4
    assert not redis.keys(f"{keys.RATE_LIMITS_PREFIX}*token:test-device*")


def test_a_device_over_its_limit_gets_429_and_nothing_recorded(make_app, tokens, redis):
    app = make_app(checkin_device_limit="2/minute")
    client = app.test_client()
    assert [_checkin(client, tokens["device"]).status_code for _ in range(2)] == [200] * 2
    before = redis.hgetall(keys.device(HK))
    facts = redis.xlen(keys.CHECKIN_FACTS)
    limited = _checkin(client, tokens["device"])
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.get_json()["error"]["code"] == "rate_limited"
    assert "device" in limited.get_json()["error"]["message"]
    assert redis.hgetall(keys.device(HK)) == before
    assert redis.xlen(keys.CHECKIN_FACTS) == facts
    # Another device on the same token is unaffected.
    other = client.post("/v1/checkin", json={"imei": UNKNOWN}, headers=bearer(tokens["device"]))
    assert other.status_code == 200
    # The counter is the device's own, with a TTL (it never outlives its window for long).
    (counter,) = redis.keys(f"rl:dev:{{{HK}}}:rate:*")
    assert 0 < redis.ttl(counter) <= 61


def test_the_device_limit_is_shared_by_every_app_instance(make_app, tokens):
    one = make_app(checkin_device_limit="2/minute").test_client()
    two = make_app(checkin_device_limit="2/minute").test_client()
    assert _checkin(one, tokens["device"]).status_code == 200
    assert _checkin(two, tokens["device"]).status_code == 200
    assert _checkin(one, tokens["device"]).status_code == 429
    assert _checkin(two, tokens["device"]).status_code == 429


def test_the_fleet_ceiling_limits_all_devices_together(make_app, tokens, redis):
    app = make_app(checkin_fleet_limit="2/minute")
    client = app.test_client()
    device = bearer(tokens["device"])
    first = client.post("/v1/checkin", json={"imei": HK}, headers=device)
    second = client.post("/v1/checkin", json={"imei": UNKNOWN}, headers=device)
    assert (first.status_code, second.status_code) == (200, 200)
    facts = redis.xlen(keys.CHECKIN_FACTS)
    third = client.post("/v1/checkin", json={"imei": UNKNOWN}, headers=device)
    assert third.status_code == 429
    assert 1 <= int(third.headers["Retry-After"]) <= 60
    assert "fleet" in third.get_json()["error"]["message"]
    assert redis.xlen(keys.CHECKIN_FACTS) == facts


def test_by_default_a_device_may_check_in_60_times_a_minute(make_app, tokens):
    from service.config import Settings

    app = make_app(checkin_device_limit=Settings().checkin_device_limit)
    client = app.test_client()
    assert {_checkin(client, tokens["device"]).status_code for _ in range(60)} == {200}
    assert _checkin(client, tokens["device"]).status_code == 429


def test_checkin_limits_default_and_from_the_environment():
    settings = load_settings(environ={})
    assert settings.checkin_device_limit == (60, 60)
    assert settings.checkin_fleet_limit is None
    settings = load_settings(
        environ={
            "REGIONLOCK_CHECKIN_DEVICE_LIMIT": "none",
            "REGIONLOCK_CHECKIN_FLEET_LIMIT": "20000/second",
        }
    )
    assert settings.checkin_device_limit is None
    assert settings.checkin_fleet_limit == (20000, 1)


@pytest.mark.parametrize("value", ["lots", "0/minute", "5/fortnight"])
def test_bad_checkin_limits_stop_start_up(value):
    with pytest.raises(ConfigError, match="REGIONLOCK_CHECKIN_DEVICE_LIMIT"):
        load_settings(environ={"REGIONLOCK_CHECKIN_DEVICE_LIMIT": value})


def test_one_budget_per_token_across_endpoints(make_app, tokens):
    app = make_app(rate_limits={"admin": "3/minute"})
    client = app.test_client()
    admin = bearer(tokens["admin"])
    assert _checkin(client, tokens["admin"]).status_code == 200  # limited per device instead
    assert client.get(f"/v1/devices/{HK}", headers=admin).status_code == 200
    assert client.get("/v1/audit", headers=admin).status_code == 200
    assert client.get("/v1/policy", headers=admin).status_code == 200
    assert client.get("/v1/policy", headers=admin).status_code == 429


def test_limits_are_per_role(make_app, tokens):
    app = make_app(rate_limits={"agent": "1/minute"})
    client = app.test_client()
    for role in ("agent", "compliance"):
        assert client.get(f"/v1/devices/{HK}", headers=bearer(tokens[role])).status_code == 404
    assert client.get(f"/v1/devices/{HK}", headers=bearer(tokens["agent"])).status_code == 429
    assert client.get(f"/v1/devices/{HK}", headers=bearer(tokens["compliance"])).status_code == 404


def test_requests_without_a_valid_token_are_limited_per_address(make_app, tokens):
    app = make_app(rate_limits={"anonymous": "2/minute"})
    client = app.test_client()
    stranger = bearer("rl_" + secrets.token_urlsafe(32))
    statuses = [
        client.post("/v1/checkin", json={"imei": HK}, headers=stranger).status_code,
        client.post("/v1/checkin", json={"imei": HK}).status_code,
        client.post("/v1/checkin", json={"imei": HK}, headers=stranger).status_code,
    ]
    assert statuses == [401, 401, 429]
    other_address = client.post(
        "/v1/checkin", json={"imei": HK}, environ_base={"REMOTE_ADDR": "192.0.2.7"}
    )
    assert other_address.status_code == 401
    # A valid token is not counted against the address.
    assert _checkin(client, tokens["device"]).status_code == 200


def test_keys_health_and_docs_are_never_limited(make_app, tokens):
    app = make_app(rate_limits={"anonymous": "1/minute", "device": "1/minute"})
    client = app.test_client()
    for _ in range(5):
        assert client.get("/v1/keys", headers=bearer(tokens["device"])).status_code == 200
        assert client.get("/v1/openapi.json").status_code == 200
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200


def test_counters_are_keyed_by_token_name_never_the_token(make_app, tokens, redis):
    app = make_app()
    client = app.test_client()
    client.get(f"/v1/devices/{HK}", headers=bearer(tokens["agent"]))
    limit_keys = redis.keys(f"{keys.RATE_LIMITS_PREFIX}*")
    assert limit_keys and any("token:test-agent" in key for key in limit_keys)
    everything = " ".join(redis.keys("*"))
    assert tokens["agent"] not in everything


def test_default_limits_are_generous_for_device_fleets():
    settings = load_settings(environ={})
    assert settings.rate_limits == dict(DEFAULT_RATE_LIMITS)
    assert int(settings.rate_limits["device"].split("/")[0]) >= 10_000


def test_rate_limits_from_the_environment():
    settings = load_settings(
        environ={"REGIONLOCK_RATE_LIMITS": "device=100/second;5000/minute, agent=10/minute"}
    )
    assert settings.rate_limits["device"] == "100/second;5000/minute"
    assert settings.rate_limits["agent"] == "10/minute"
    assert settings.rate_limits["admin"] == DEFAULT_RATE_LIMITS["admin"]


@pytest.mark.parametrize(
    "value", ["device", "robot=1/minute", "device=lots", "device=10/fortnight"]
)
def test_bad_rate_limits_stop_start_up(value):
    with pytest.raises(ConfigError, match="REGIONLOCK_RATE_LIMITS"):
        load_settings(environ={"REGIONLOCK_RATE_LIMITS": value})


# --- request size ------------------------------------------------------------------------


def test_body_over_the_limit_is_413_and_records_nothing(make_app, tokens, redis):
    app = make_app(max_body_bytes=2048)
    client = app.test_client()
    body = b'{"imei": "%s", "model": "%s"}' % (HK.encode(), b"x" * 4096)
    response = client.post(
        "/v1/checkin",
        data=body,
        content_type="application/json",
        headers=bearer(tokens["device"]),
    )
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"
    assert redis.keys("rl:dev:*") == []


def test_default_body_limit_is_one_mebibyte(client, tokens):
    huge = b'{"imei": "%s", "pad": "%s"}' % (HK.encode(), b"x" * (1 << 20))
    response = client.post(
        "/v1/checkin",
        data=huge,
        content_type="application/json",
        headers=bearer(tokens["device"]),
    )
    assert response.status_code == 413


def test_max_body_bytes_from_the_environment():
    assert load_settings(environ={"REGIONLOCK_MAX_BODY_BYTES": "4096"}).max_body_bytes == 4096
    with pytest.raises(ConfigError):
        load_settings(environ={"REGIONLOCK_MAX_BODY_BYTES": "-1"})


# --- security headers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "authorized"),
    [
        ("POST", "/v1/checkin", True),
        ("POST", "/v1/checkin", False),
        ("GET", f"/v1/devices/{UNKNOWN}", True),
        ("GET", "/v1/keys", True),
        ("GET", "/v1/openapi.json", False),
        ("GET", "/healthz", False),
        ("GET", "/readyz", False),
        ("GET", "/metrics", False),
        ("GET", "/docs", False),
        ("GET", "/no/such/page", False),
        ("GET", "/console/sign-in", False),
        ("GET", "/console/no/such/page", False),
        ("GET", "/console/static/console.css", False),
    ],
)
def test_security_headers_on_every_response(client, tokens, method, path, authorized):
    headers = bearer(tokens["admin"]) if authorized else {}
    response = client.open(path, method=method, json={"imei": HK}, headers=headers)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert "Strict-Transport-Security" not in response.headers  # plain HTTP
    if path.startswith("/v1/") and path != "/v1/keys":
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")


def test_hsts_only_over_tls(client, tokens):
    response = client.get("/healthz", base_url="https://regionlock.example")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")


# --- secrets stay out of logs ------------------------------------------------------------


def test_tokens_never_reach_the_logs(make_app, tokens, captured_logs, closed_port_url):
    app = make_app(checkin_device_limit="1/minute")
    client = app.test_client()
    unknown = "rl_" + secrets.token_urlsafe(32)
    _checkin(client, tokens["device"])  # 200
    client.post(
        "/v1/checkin",
        data=b"{bad",
        content_type="application/json",
        headers=bearer(tokens["device"]),
    )  # 400
    _checkin(client, tokens["device"])  # 429 (the device's own limit)
    _checkin(client, unknown)  # 401
    _checkin(client, tokens["agent"])  # 403
    client.post("/v1/checkin", json={"imei": "1"}, headers=bearer(tokens["admin"]))  # 422
    client.post(
        f"/v1/devices/{HK}/unlock", json={"reason": "r"}, headers=bearer(tokens["compliance"])
    )  # 201
    down = make_app(redis_url=closed_port_url).test_client()
    _checkin(down, tokens["device"])  # 503
    text = captured_logs.getvalue()
    for status in (200, 400, 429, 401, 403, 422, 201, 503):
        assert f'"status":{status}' in text, status
    for secret in (*tokens.values(), unknown):
        assert secret not in text
    assert "Authorization" not in text and "Bearer" not in text


@pytest.fixture
def closed_port_url():
    """A Redis URL nothing listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def test_the_token_cache_keeps_digests_not_tokens(make_app, tokens):
    app = make_app(token_cache_s=60)
    client = app.test_client()
    assert _checkin(client, tokens["device"]).status_code == 200
    cache = app.extensions["regionlock"].tokens._entries
    assert len(cache) == 1
    assert tokens["device"] not in cache and all(len(k) == 64 for k in cache)


def test_a_revoked_token_stops_working_within_1_s_on_every_instance(make_app, tokens, redis):
    # Issue 17.2: two app instances (two workers or hosts) on one Redis, each with the default
    # token cache; the token is revoked from a third process's point of view (the store the CLI
    # uses), and both instances refuse it within 1 s.
    import time

    from service.config import Settings
    from service.store.tokens import TokenStore

    assert Settings().token_cache_s <= 0.5
    instances = [make_app(token_cache_s=Settings().token_cache_s).test_client() for _ in range(2)]
    agent = bearer(tokens["agent"])
    for client in instances:  # both have the token cached now
        assert client.get(f"/v1/devices/{HK}", headers=agent).status_code == 404
    TokenStore(redis).revoke("test-agent")
    revoked_at = time.monotonic()
    refused_after = {}
    while len(refused_after) < 2 and time.monotonic() - revoked_at < 3:
        for i, client in enumerate(instances):
            if i not in refused_after:
                if client.get(f"/v1/devices/{HK}", headers=agent).status_code == 401:
                    refused_after[i] = time.monotonic() - revoked_at
        time.sleep(0.02)
    assert sorted(refused_after) == [0, 1]
    assert max(refused_after.values()) < 1.0, refused_after
