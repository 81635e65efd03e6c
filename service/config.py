"""Typed settings, read once from defaults, the environment and an optional test mapping."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Generous on purpose: a maker usually ships one device token in all of its firmware, so the
# device limit is a fleet-wide circuit breaker, not a per-phone quota. People get less.
DEFAULT_RATE_LIMITS: Mapping[str, str] = {
    "device": "60000/minute",
    "agent": "600/minute",
    "compliance": "600/minute",
    "editor": "300/minute",
    "auditor": "600/minute",
    "admin": "3000/minute",
    # Requests to /v1 without a valid token, counted per client IP.
    "anonymous": "300/minute",
}


class ConfigError(ValueError):
    """A configuration value could not be understood."""


@dataclass(frozen=True)
class Settings:
    """Everything the service can be told; see the README's configuration table."""

    redis_url: str | None = None
    geoip_db: str | None = None
    policies_dir: Path = ROOT / "policies"
    bind: str = "127.0.0.1:8080"
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    var_dir: Path = ROOT / "var"
    # How long recorded check-in facts are kept (SPEC §4 privacy: bounded, default 90 days).
    facts_retention_days: int = 90
    # Bounded per-device decision history and bounded stream of check-in facts.
    decisions_kept: int = 10
    facts_stream_maxlen: int = 1_000_000
    # Seconds between checks for a newly published policy version (SPEC §6: within 1 s).
    policy_poll_s: float = 0.5
    # Seconds a verified token is cached in a worker (revocation takes at most this long, on
    # every worker: 0.5 keeps it within 1 s; docs/decisions.md "Token revocation").
    token_cache_s: float = 0.5
    # Redis socket timeouts: a check-in fails fast with 503 instead of hanging a worker.
    redis_timeout_s: float = 0.5
    retry_after_s: int = 5
    # The deployment's secret files (made on first start when absent); None means var_dir/keys.
    keys_dir: Path | None = None
    # Files every host of a deployment must share (SPEC §15); None: made under key_ring_dir.
    signing_kek_file: Path | None = None
    secret_key_file: Path | None = None
    # The unlock master key every host shares (SPEC §11); None: var/keys/unlock-master-key,
    # made on first start.
    unlock_master_key_file: Path | None = None
    # Check-in proofs (SPEC §13): off, observe (counted, never refused) or required.
    device_proof: str = "observe"
    # Seconds between re-reads of the signing keys by a worker, and between a rotation and the
    # new key's first signature (longer than the re-read interval plus clock skew, SPEC §15).
    keys_refresh_s: float = 1.0
    key_activation_delay_s: float = 10.0
    # Per-role request limits (flask-limiter syntax, ";" between several), "anonymous" per IP.
    rate_limits: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_RATE_LIMITS))
    # POST /v1/checkin's own limits, (requests, window seconds) or None: per device (IMEI) and
    # for the whole fleet, counted in Redis in fixed windows by the check-in's device read
    # (docs/decisions.md "Check-in rate limits"). Other calls keep rate_limits.
    checkin_device_limit: tuple[int, int] | None = (60, 60)
    checkin_fleet_limit: tuple[int, int] | None = None
    # Largest request body accepted (413 beyond it).
    max_body_bytes: int = 1 << 20
    # Largest body of the /v1/policy calls: a bundle may carry a million allocations (~50 MB).
    policy_max_body_bytes: int = 64 << 20
    # Key signing the console's session cookies; None: $REGIONLOCK_SECRET_KEY, else the file
    # secret_key_file, else var/keys/console-secret-key made on first start (console/security.py).
    secret_key: str | bytes | None = None
    # Console cookie sent over HTTPS only; None: $REGIONLOCK_SECURE_COOKIES decides.
    secure_cookies: bool | None = None
    # prometheus-client's multiprocess folder (one file per worker, /metrics sums them); None:
    # metrics are this process's own. `regionlock serve` sets it (var/prometheus by default).
    metrics_dir: Path | None = None
    # Fleet overview (SPEC §14): the day counters and the locked index kept by the check-in's
    # and the overrides' scripts; "off" stops keeping them (REGIONLOCK_STATS=on|off).
    stats: str = "on"
    # Seconds between the stats sweeper's rounds (lapsed time-boxed unlocks leave the index);
    # REGIONLOCK_STATS_SWEEP_S.
    stats_sweep_s: float = 5.0

    # Simulation jobs (SPEC §12.5): the single Redis of their rq queue; None: the main Redis
    # when it is a standalone one (beside a Cluster, jobs are refused until it is set).
    jobs_redis_url: str | None = None
    # Seconds a worker holds a simulation job between checkpoints before another may resume
    # it, and devices replayed between checkpoints.
    simulation_lease_s: float = 60.0
    simulation_batch: int = 10_000

    @property
    def key_ring_dir(self) -> Path:
        """Where the signing keys live: REGIONLOCK_KEYS_DIR, else var/keys."""
        return self.keys_dir if self.keys_dir is not None else self.var_dir / "keys"


_ENV = {
    "REGIONLOCK_REDIS_URL": "redis_url",
    "REGIONLOCK_GEOIP_DB": "geoip_db",
    "REGIONLOCK_POLICIES": "policies_dir",
    "REGIONLOCK_BIND": "bind",
    "REGIONLOCK_TRUSTED_PROXIES": "trusted_proxies",
    "REGIONLOCK_VAR_DIR": "var_dir",
    "REGIONLOCK_FACTS_RETENTION_DAYS": "facts_retention_days",
    "REGIONLOCK_KEYS_DIR": "keys_dir",
    "REGIONLOCK_SIGNING_KEK_FILE": "signing_kek_file",
    "REGIONLOCK_SECRET_KEY_FILE": "secret_key_file",
    "REGIONLOCK_UNLOCK_MASTER_KEY_FILE": "unlock_master_key_file",
    "REGIONLOCK_DEVICE_PROOF": "device_proof",
    "REGIONLOCK_KEY_ACTIVATION_DELAY_S": "key_activation_delay_s",
    "REGIONLOCK_RATE_LIMITS": "rate_limits",
    "REGIONLOCK_CHECKIN_DEVICE_LIMIT": "checkin_device_limit",
    "REGIONLOCK_CHECKIN_FLEET_LIMIT": "checkin_fleet_limit",
    "REGIONLOCK_MAX_BODY_BYTES": "max_body_bytes",
    "REGIONLOCK_POLICY_MAX_BODY_BYTES": "policy_max_body_bytes",
    "REGIONLOCK_JOBS_REDIS_URL": "jobs_redis_url",
    "REGIONLOCK_SIMULATION_LEASE_S": "simulation_lease_s",
    "REGIONLOCK_SIMULATION_BATCH": "simulation_batch",
    # prometheus-client's own variable: whoever already sets it for other tools keeps working.
    "PROMETHEUS_MULTIPROC_DIR": "metrics_dir",
    "REGIONLOCK_STATS": "stats",
    "REGIONLOCK_STATS_SWEEP_S": "stats_sweep_s",
}


def _parse_bind(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"REGIONLOCK_BIND must be host:port, got {value!r}")
    return host.strip("[]"), int(port)


def _parse_proxies(value: Any) -> tuple:
    if isinstance(value, tuple | list):
        items = value
    else:
        items = [p.strip() for p in str(value).split(",") if p.strip()]
    try:
        return tuple(ipaddress.ip_network(p, strict=False) for p in items)
    except ValueError as exc:
        raise ConfigError(f"REGIONLOCK_TRUSTED_PROXIES: {exc}") from None


def _parse_rate_limits(value: Any) -> dict[str, str]:
    """``role=limit,role=limit`` (or a mapping) merged over the defaults, each limit checked."""
    from limits import parse_many

    if isinstance(value, Mapping):
        given = {str(k): str(v) for k, v in value.items()}
    else:
        given = {}
        for item in (p.strip() for p in str(value).split(",")):
            role, sep, limit = item.partition("=")
            if not item:
                continue
            if not sep:
                raise ConfigError(f"REGIONLOCK_RATE_LIMITS: expected role=limit, got {item!r}")
            given[role.strip()] = limit.strip()
    merged = dict(DEFAULT_RATE_LIMITS)
    for role, limit in given.items():
        if role not in DEFAULT_RATE_LIMITS:
            known = ", ".join(DEFAULT_RATE_LIMITS)
            raise ConfigError(f"REGIONLOCK_RATE_LIMITS: unknown role {role!r} (one of: {known})")
        try:
            if not parse_many(limit):
                raise ValueError(limit)
        except ValueError:
            raise ConfigError(
                f"REGIONLOCK_RATE_LIMITS: {role}: {limit!r} is not a limit like 600/minute"
            ) from None
        merged[role] = limit
    return merged


def _parse_one_limit(name: str, value: Any) -> tuple[int, int] | None:
    """One fixed-window limit like ``60/minute`` or ``2/10 seconds`` as (requests, window
    seconds); ``none`` (or empty) for no limit."""
    from limits import parse

    if value is None or (isinstance(value, tuple) and len(value) == 2):
        return value
    text = str(value).strip()
    if text.lower() in ("", "none", "off"):
        return None
    try:
        item = parse(text)
    except ValueError:
        item = None
    if item is None or item.amount < 1:
        raise ConfigError(f"{name}: {text!r} is not a limit like 60/minute (or none)")
    return (int(item.amount), int(item.get_expiry()))


def _optional_path(value: Any) -> Path | None:
    return Path(value) if value not in (None, "") else None


def _optional_str(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _optional_bool(name: str, value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be on or off (1/0, true/false), got {value!r}")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
    if number <= 0:
        raise ConfigError(f"{name} must be positive, got {number}")
    return number


#: REGIONLOCK_DEVICE_PROOF's values (SPEC §13).
DEVICE_PROOF_MODES = ("off", "observe", "required")


def _one_of(name: str, value: Any, choices: tuple[str, ...]) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return text


def _number(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None


def _positive_number(name: str, value: Any) -> float:
    number = _number(name, value)
    if not number > 0:
        raise ConfigError(f"{name} must be positive, got {number}")
    return number


# How each field is read from the text of an environment variable (or a test's value).
_COERCE: dict[str, Any] = {
    "redis_url": lambda name, v: _optional_str(v),
    "geoip_db": lambda name, v: _optional_str(v),
    "policies_dir": lambda name, v: Path(v),
    "bind": lambda name, v: str(v),
    "trusted_proxies": lambda name, v: _parse_proxies(v),
    "var_dir": lambda name, v: Path(v),
    "facts_retention_days": _positive_int,
    "decisions_kept": _positive_int,
    "facts_stream_maxlen": _positive_int,
    "policy_poll_s": _number,
    "token_cache_s": _number,
    "redis_timeout_s": _number,
    "retry_after_s": _positive_int,
    "keys_dir": lambda name, v: _optional_path(v),
    "rate_limits": lambda name, v: _parse_rate_limits(v),
    "checkin_device_limit": lambda name, v: _parse_one_limit("REGIONLOCK_CHECKIN_DEVICE_LIMIT", v),
    "checkin_fleet_limit": lambda name, v: _parse_one_limit("REGIONLOCK_CHECKIN_FLEET_LIMIT", v),
    "max_body_bytes": _positive_int,
    "policy_max_body_bytes": _positive_int,
    "secret_key": lambda name, v: v if isinstance(v, bytes) and v else _optional_str(v),
    "secure_cookies": _optional_bool,
    "metrics_dir": lambda name, v: _optional_path(v),
    "signing_kek_file": lambda name, v: _optional_path(v),
    "secret_key_file": lambda name, v: _optional_path(v),
    "unlock_master_key_file": lambda name, v: _optional_path(v),
    "device_proof": lambda name, v: _one_of("REGIONLOCK_DEVICE_PROOF", v, DEVICE_PROOF_MODES),
    "keys_refresh_s": _positive_number,
    "jobs_redis_url": lambda name, v: _optional_str(v),
    "simulation_lease_s": _positive_number,
    "simulation_batch": _positive_int,
    "key_activation_delay_s": _positive_number,
    "stats": lambda name, v: _one_of("REGIONLOCK_STATS", v, ("on", "off")),
    "stats_sweep_s": _positive_number,
}


def _coerce(name: str, value: Any) -> Any:
    return _COERCE[name](name, value)


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build Settings: defaults, then REGIONLOCK_* variables, then explicit overrides."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for var, name in _ENV.items():
        if var in environ:
            values[name] = environ[var]
    known = {f.name for f in fields(Settings)}
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ConfigError(f"unknown setting {key!r} (one of: {', '.join(sorted(known))})")
        values[key] = value
    settings = replace(Settings(), **{k: _coerce(k, v) for k, v in values.items()})
    _parse_bind(settings.bind)
    if settings.key_activation_delay_s <= settings.keys_refresh_s:
        raise ConfigError(
            "REGIONLOCK_KEY_ACTIVATION_DELAY_S must be longer than the key re-read interval "
            f"({settings.keys_refresh_s} s)"
        )
    return settings
