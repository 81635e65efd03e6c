"""Shared fixtures: a real Redis (embedded or REGIONLOCK_REDIS_URL), the app, tokens."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import redis as redis_lib

from service.store.server import EmbeddedRedis
from service.store.tokens import ROLES, TokenStore
from tests.geodb import build_mmdb, default_test_networks

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_url():
    """A real Redis for the whole run: REGIONLOCK_REDIS_URL if set (it is flushed!), else an
    embedded redis-server in a temporary folder."""
    configured = os.environ.get("REGIONLOCK_REDIS_URL")
    if configured:
        yield configured
        return
    with tempfile.TemporaryDirectory(prefix="regionlock-test-redis-") as folder:
        with EmbeddedRedis(Path(folder), appendonly=False) as server:
            yield server.url


@pytest.fixture
def redis(redis_url):
    """A client on a flushed database; flushed again afterwards."""
    client = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def geo():
    """A small GeoIP City database built with mmdb-writer, and example IPs per label."""
    networks, ips = default_test_networks()
    with tempfile.TemporaryDirectory(prefix="regionlock-test-geo-") as folder:
        path = build_mmdb(Path(folder) / "test-city.mmdb", networks)
        yield {"path": str(path), "ips": ips}


@pytest.fixture
def make_app(redis, redis_url, geo, tmp_path):
    """Build apps on the test Redis and GeoIP database; keyword arguments override settings."""
    from service.app import create_app

    apps = []

    def factory(**overrides):
        config = {
            "redis_url": redis_url,
            "geoip_db": geo["path"],
            "policies_dir": ROOT / "policies",
            "var_dir": tmp_path / "var",
            "policy_poll_s": 0.1,
            "token_cache_s": 0,
            # Tests check one IMEI in far more often than a phone would; the check-in limits
            # are tested with their own settings (tests/test_abuse.py).
            "checkin_device_limit": None,
            # Production fails fast after 0.5 s; a test machine under load (2 shared cores)
            # can stall a healthy Redis call longer than that, which turned a check-in into
            # a 503 and a later read of the device into a 404. Outage tests stop Redis
            # (refused at once) and do not depend on this.
            "redis_timeout_s": 5.0,
        }
        config.update(overrides)
        app = create_app(config)
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["regionlock"].policies.stop()


@pytest.fixture
def app(make_app):
    """The app with default test settings."""
    return make_app()


@pytest.fixture
def client(app):
    """A Flask test client."""
    return app.test_client()


@pytest.fixture
def tokens(redis):
    """One token per role, named after the role."""
    store = TokenStore(redis)
    return {role: store.create(name=f"test-{role}", role=role) for role in ROLES}


def bearer(token: str) -> dict:
    """Authorization header for TOKEN."""
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def checkin(client, tokens):
    """``checkin(imei, **body)``: a device token's check-in through the app; its answer
    (asserted 200). Test modules that check in otherwise define their own."""

    def run(imei_, **body):
        response = client.post(
            "/v1/checkin", json={"imei": imei_, **body}, headers=bearer(tokens["device"])
        )
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    return run


@pytest.fixture
def captured_logs():
    """Every log line (DEBUG and up), formatted as the server writes it."""
    import io
    import logging

    from service.web.logs import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(previous)


def audit_entries(redis) -> list[dict]:
    """The audit trail's entries, oldest first, without the seed bundle's own publish (version
    1, written when the first worker starts): what the test itself caused."""
    from service.store import keys

    return [f for _, f in redis.xrange(keys.AUDIT) if f["actor"] != "seed"]
