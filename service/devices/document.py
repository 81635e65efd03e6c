"""The device document: what support sees of one device (GET /v1/devices/<imei>, the console)."""

from __future__ import annotations

import orjson

from service.engine.compiler import CompiledPolicy
from service.engine.model import iso_utc
from service.store.devices import DeviceStore


def override_out(override: dict | None) -> dict | None:
    """The API form of a stored override (times as ISO-8601 UTC)."""
    if override is None:
        return None
    out = dict(override)
    out["created_at"] = iso_utc(override["created_at"])
    out["expires_at"] = iso_utc(override["expires_at"]) if override.get("expires_at") else None
    return out


def _json(record: dict, name: str, default=None):
    raw = record.get(name)
    return orjson.loads(raw) if raw else default


def device_document(devices: DeviceStore, policy: CompiledPolicy, imei: str) -> dict | None:
    """The device's record as support sees it (API and console alike), or None when never
    seen nor overridden; POLICY is the one being served (for the distributor's name)."""
    snapshot = devices.snapshot(imei)
    record, override = snapshot.record, snapshot.override
    if not record and override is None:
        return None
    distributor_id = record.get("distributor") or policy.distributor_of(imei)
    distributor = None
    if distributor_id:
        info = policy.distributor(distributor_id)
        distributor = {
            "id": distributor_id,
            "name": info.name if info else None,
            "territories": list(info.territories) if info else [],
        }
    first_seen = record.get("first_seen")
    return {
        "imei": imei,
        "tac": imei[:8],
        "distributor": distributor,
        "activation": snapshot.activation,
        "first_seen": iso_utc(float(first_seen)) if first_seen else None,
        "last_checkin": _last_checkin(record),
        "verdict": record.get("verdict"),
        "reasons": _json(record, "reasons", []),
        "observed": _json(record, "observed", []),
        "lock_at": record.get("lock_at") or None,
        "policy_version": int(record["policy_version"]) if record.get("policy_version") else None,
        "override": override_out(override),
        "decisions": devices.decisions(imei),
    }


def _last_checkin(record: dict) -> dict | None:
    facts = _json(record, "facts")
    if facts is None:
        return None
    return {"at": iso_utc(facts["at"]), "places": facts["places"], **_json(record, "device", {})}
