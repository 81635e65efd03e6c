"""Operations: /healthz (up), /readyz (Redis reachable and a policy loaded), /metrics."""

from __future__ import annotations

import redis as redis_lib
from flask import Blueprint, Response, current_app, jsonify

from service.store.client import ping

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    """The process is up."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """Ready when Redis answers and a policy version is loaded (an answer also closes this
    worker's outage breaker).

    Warnings (an IP database more than 180 days old) are listed but do not make it unready:
    a stale database still answers, and taking every instance out of a load balancer for it
    would stop all check-ins."""
    rl = current_app.extensions["regionlock"]
    checks: dict[str, object] = {}
    try:
        ping(rl.redis)
        # This process's breaker may still be open from the outage: Redis is back, so /v1
        # calls answered by this worker try it again (a ready worker never answers 503).
        rl.breaker.reset()
        checks["redis"] = "ok"
        checks["policy_version"] = rl.policies.current().version
    except (redis_lib.RedisError, redis_lib.exceptions.RedisClusterException) as exc:
        rl.metrics.redis_error(exc)
        checks["redis"] = f"unreachable ({type(exc).__name__})"
    ready = checks.get("redis") == "ok" and checks.get("policy_version") is not None
    geoip = rl.evidence.geoip
    info = geoip.database_info()
    checks["ip_database"] = {"built_at": info["built_at"], "age_days": geoip.age_days()}
    body: dict[str, object] = {"status": "ready" if ready else "not ready", "checks": checks}
    warning = geoip.stale_warning()
    if warning:
        body["warnings"] = [warning]
    response = jsonify(body)
    response.status_code = 200 if ready else 503
    if not ready:
        response.headers["Retry-After"] = str(rl.settings.retry_after_s)
    return response


@bp.get("/metrics")
def prometheus_metrics():
    """Prometheus exposition: requests, verdicts, decision latency, Redis errors."""
    body, content_type = current_app.extensions["regionlock"].metrics.render()
    return Response(body, content_type=content_type)
