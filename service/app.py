"""The Flask application factory."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, request
from redis.cluster import RedisCluster

from service.api.openapi import ErrorResponsesPlugin, RegionlockApi
from service.config import ConfigError, Settings, load_settings
from service.crypto.signing import KeyRing
from service.devices.checkin import CheckinService
from service.engine.bundle import load_bundle_dir
from service.evidence import Evidence, GeoIP, GpsGeocoder
from service.evidence.mcc import mcc_mnc_of_imsi
from service.policy.runtime import PolicyCache
from service.store.audit import AuditStore
from service.store.client import connect_redis
from service.store.devices import DeviceStore
from service.store.policy import PolicyStore
from service.store.tokens import TokenStore
from service.web.auth import TokenCache
from service.web.errors import OutageBreaker, register_error_handlers, unavailable_response

log = logging.getLogger(__name__)


@dataclass
class Regionlock:
    """The parts one app uses, made once per process."""

    settings: Settings
    redis: Any
    evidence: Evidence
    token_store: TokenStore
    tokens: TokenCache
    devices: DeviceStore
    audit: AuditStore
    policy_store: PolicyStore
    policies: PolicyCache
    checkin: CheckinService
    keys: KeyRing
    breaker: OutageBreaker = field(default_factory=OutageBreaker)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: settings from the environment, overridden by CONFIG (tests)."""
    settings = load_settings(config)
    if not settings.redis_url:
        raise ConfigError(
            "no Redis URL: set REGIONLOCK_REDIS_URL, or start with `regionlock serve` "
            "(`make run`), which starts the embedded Redis"
        )
    # The seed bundle is read and checked now, so a bad one stops start-up naming its path.
    seed_bundle = load_bundle_dir(settings.policies_dir)

    app = Flask(__name__)
    app.config.update(
        SETTINGS=settings,
        API_TITLE="regionlock",
        API_VERSION="1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="v1/openapi.json",
        MAX_CONTENT_LENGTH=settings.extra.get("max_content_length", settings.max_body_bytes),
        JSON_SORT_KEYS=False,
    )

    client = connect_redis(settings.redis_url, settings)
    evidence = Evidence(GeoIP(settings.geoip_db), GpsGeocoder())
    _log_ip_database(evidence.geoip)
    token_store = TokenStore(client)
    devices = DeviceStore(
        client,
        decisions_kept=settings.decisions_kept,
        facts_maxlen=settings.facts_stream_maxlen,
        retention_days=settings.facts_retention_days,
    )
    policy_store = PolicyStore(client)
    policies = PolicyCache(policy_store, lambda: seed_bundle, poll_s=settings.policy_poll_s)
    app.extensions["regionlock"] = Regionlock(
        settings=settings,
        redis=client,
        evidence=evidence,
        token_store=token_store,
        tokens=TokenCache(token_store, settings.token_cache_s),
        devices=devices,
        audit=AuditStore(client),
        policy_store=policy_store,
        policies=policies,
        checkin=CheckinService(evidence, devices, policies, mcc_mnc_of_imsi),
        # Made on first start (var/keys, 0600); the private keys never leave that folder.
        keys=KeyRing(settings.key_ring_dir).ensure(),
    )
    _init_hardening(app, settings, cluster=isinstance(client, RedisCluster))

    api = RegionlockApi(app, spec_kwargs={"extra_plugins": [ErrorResponsesPlugin()]})
    api.spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    from service.api import docs, ops
    from service.api.audit.routes import blp as audit_blp
    from service.api.checkin.routes import blp as checkin_blp
    from service.api.devices.routes import blp as devices_blp
    from service.api.keys.routes import blp as keys_blp
    from service.api.policy.routes import blp as policy_blp
    from service.console import bp as console_bp

    for blueprint in (checkin_blp, devices_blp, audit_blp, policy_blp):
        api.register_blueprint(blueprint)
    api.register_blueprint(keys_blp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(console_bp)
    register_error_handlers(app)
    return app


def _log_ip_database(geoip: GeoIP) -> None:
    """Say at start-up which IP database answers, and warn when it is stale (also /readyz)."""
    info = geoip.database_info()
    log.info("IP database: %s, built %s", geoip.source, info["built_at"][:10])
    warning = geoip.stale_warning()
    if warning:
        log.warning(warning)


def _init_hardening(app: Flask, settings: Settings, cluster: bool) -> None:
    """Request ids and JSON request logs, metrics, rate limits, security headers.

    Order matters: the request timer starts before the rate limiter runs (hooks run in the
    order they were added), so a 429 is logged and timed like any other answer.
    """
    from service.web.hardening import init_rate_limits, security_headers
    from service.web.logs import init_request_logging
    from service.web.metrics import REQUESTS

    def observe(endpoint: str, method: str, status: int) -> None:
        REQUESTS.labels(endpoint, method, status).inc()

    init_request_logging(app, observe=observe)

    @app.before_request
    def _fail_fast_while_redis_is_away():
        # Before the rate limiter, which would otherwise be the first to wait on Redis.
        # /v1/openapi.json needs no Redis; /readyz always probes for real.
        path = request.path
        if (
            path.startswith("/v1/")
            and path != "/v1/openapi.json"
            and app.extensions["regionlock"].breaker.is_open()
        ):
            return unavailable_response()
        return None

    init_rate_limits(app, settings, cluster=cluster)
    app.after_request(security_headers)
