"""The Flask application factory."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, request
from redis.cluster import RedisCluster

from service.api.openapi import ErrorResponsesPlugin, RegionlockApi
from service.api.parsing import ImeiConverter, imei_parameter_schema
from service.config import ConfigError, Settings, load_settings
from service.console.security import SESSION_IDLE
from service.crypto.device_keys import MASTER_KEY_NAME
from service.crypto.secrets import load_shared_secret
from service.crypto.signing import KEK_NAME, KeyRing
from service.devices.checkin import CheckinLimits, CheckinService
from service.devices.proofs import DeviceProofs
from service.devices.stats import StatsService
from service.engine.loading import load_bundle_dir
from service.evidence import Evidence, GeoIP, GpsGeocoder
from service.evidence.mcc import mcc_mnc_of_imsi
from service.policy.runtime import PolicyCache
from service.store.audit import AuditStore
from service.store.client import connect_redis
from service.store.devices import DeviceStore
from service.store.fleet_stats import StatsStore
from service.store.identities import IdentityStore
from service.store.policy import PolicyStore
from service.store.secret_ids import SecretIdStore
from service.store.sessions import ConsoleSessionStore
from service.store.signing_keys import SigningKeyStore
from service.store.tokens import TokenStore
from service.web.auth import TokenCache
from service.web.deployment import DeploymentChecks
from service.web.errors import OutageBreaker, register_error_handlers, unavailable_response
from service.web.metrics import Metrics

log = logging.getLogger(__name__)

# /v1 paths answered while Redis is away: the OpenAPI document, and the key set (the last one
# read; the token is checked against the worker's cache, see service.web.auth).
SERVED_FROM_MEMORY = frozenset({"/v1/openapi.json", "/v1/keys"})


@dataclass
class Regionlock:
    """The parts one app uses, made once per process."""

    settings: Settings
    redis: Any
    evidence: Evidence
    token_store: TokenStore
    tokens: TokenCache
    devices: DeviceStore
    identities: IdentityStore
    audit: AuditStore
    policy_store: PolicyStore
    policies: PolicyCache
    checkin: CheckinService
    keys: KeyRing
    metrics: Metrics
    sessions: ConsoleSessionStore
    deployment: DeploymentChecks
    # The unlock master key's raw bytes (SPEC §11): unlock codes derive each device's key.
    unlock_master_key: bytes
    # The fleet overview (SPEC §14): stats report and CSV exports, for the API and the console.
    stats: StatsService
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
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
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
        overview=settings.stats == "on",
    )
    identities = IdentityStore(client)
    policy_store = PolicyStore(client)
    policies = PolicyCache(policy_store, lambda: seed_bundle, poll_s=settings.policy_poll_s)
    audit = AuditStore(client)
    # Every host signs with the deployment's keys, kept in Redis and sealed under the
    # key-encryption key handed to every host (made on first start on a single host).
    kek = load_shared_secret(KEK_NAME, settings.key_ring_dir / KEK_NAME, settings.signing_kek_file)
    keys = KeyRing(
        SigningKeyStore(client),
        kek,
        refresh_s=settings.keys_refresh_s,
        activation_delay_s=settings.key_activation_delay_s,
    )
    # The unlock master key (SPEC §11): device keys and check-in proof keys derive from it.
    master_key = load_shared_secret(
        MASTER_KEY_NAME, settings.key_ring_dir / MASTER_KEY_NAME, settings.unlock_master_key_file
    )
    deployment = DeploymentChecks(SecretIdStore(client))
    deployment.add_secret(kek)
    deployment.add_secret(master_key)
    deployment.add_step(
        # Not audited: nothing was changed by anyone (rotations and imports by the CLI are).
        lambda: keys.ensure(legacy_dir=settings.key_ring_dir)
    )
    app.extensions["regionlock"] = Regionlock(
        settings=settings,
        redis=client,
        evidence=evidence,
        token_store=token_store,
        tokens=TokenCache(token_store, settings.token_cache_s),
        devices=devices,
        identities=identities,
        audit=audit,
        policy_store=policy_store,
        policies=policies,
        checkin=CheckinService(
            evidence,
            devices,
            policies,
            mcc_mnc_of_imsi,
            identities=identities,
            proofs=DeviceProofs(master_key.value, settings.device_proof),
            limits=CheckinLimits(
                device=settings.checkin_device_limit, fleet=settings.checkin_fleet_limit
            ),
        ),
        keys=keys,
        sessions=ConsoleSessionStore(client, idle_s=int(SESSION_IDLE.total_seconds())),
        deployment=deployment,
        unlock_master_key=master_key.value,
        stats=StatsService(StatsStore(client), audit),
        # Made here, not at import: multiprocess mode follows the settings, whatever was
        # imported first; each app has its own registry.
        metrics=Metrics(settings.metrics_dir),
    )
    # /metrics: the policy version each worker serves (the Grafana dashboard's panel).
    app.extensions["regionlock"].metrics.watch_policy_version(policies.loaded_version)

    # Simulation jobs (SPEC §12.5): their records and rq queue (service/policy/simulation_jobs.py).
    from service.policy.simulation_jobs import build_simulations

    app.extensions["regionlock_simulations"] = build_simulations(settings, client)
    _init_hardening(app, settings, cluster=isinstance(client, RedisCluster))

    api = RegionlockApi(app, spec_kwargs={"extra_plugins": [ErrorResponsesPlugin()]})
    api.spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    # <imei:...> path parameters, documented with the IMEI pattern.
    app.url_map.converters["imei"] = ImeiConverter
    api.register_converter(ImeiConverter, imei_parameter_schema)
    from service.api import docs, ops
    from service.api.audit.routes import blp as audit_blp
    from service.api.checkin.routes import blp as checkin_blp
    from service.api.devices.routes import blp as devices_blp
    from service.api.keys.routes import blp as keys_blp
    from service.api.policy.routes import blp as policy_blp
    from service.api.stats.routes import blp as stats_blp
    from service.console import bp as console_bp

    for blueprint in (checkin_blp, devices_blp, audit_blp, policy_blp):
        api.register_blueprint(blueprint)
    api.register_blueprint(keys_blp)
    # Four eyes on sanctions (SPEC §12.4): its module also answers the 202 of policy_blp.
    from service.api.policy.approvals import blp as approvals_blp

    api.register_blueprint(approvals_blp)
    api.register_blueprint(stats_blp)  # fleet overview and reports (SPEC §14)

    from service.api.policy.simulations import blp as simulations_blp  # SPEC §12.5

    api.register_blueprint(simulations_blp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(console_bp)  # adds the console's secret key to the checks
    register_error_handlers(app)
    # The shared secrets agree with the deployment's, the first signing key exists: or no
    # start (SecretMismatch names both ids). With Redis away, they run at its return.
    deployment.start()
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

    init_request_logging(app, observe=app.extensions["regionlock"].metrics.observe_request)

    @app.before_request
    def _refuse_while_the_deployment_disagrees():
        # Start-up checks left pending by a Redis outage run at its return; a host whose
        # secrets turn out not to be the deployment's then serves nothing (logged once).
        checks = app.extensions["regionlock"].deployment
        if not checks.ready() and checks.refused is not None:
            return unavailable_response()
        return None

    @app.before_request
    def _fail_fast_while_redis_is_away():
        # Before the rate limiter, which would otherwise be the first to wait on Redis.
        # /v1/openapi.json needs no Redis; /readyz always probes for real.
        path = request.path
        if (
            path.startswith("/v1/")
            and path not in SERVED_FROM_MEMORY
            and app.extensions["regionlock"].breaker.is_open()
        ):
            return unavailable_response()
        return None

    init_rate_limits(app, settings, cluster=cluster)
    app.after_request(security_headers)
