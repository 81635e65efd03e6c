"""The device document: what support sees of one device (GET /v1/devices/<imei>, the console)."""

from __future__ import annotations

from service.engine.compiler import CompiledPolicy
from service.engine.model import Override, iso_utc
from service.store.devices import DeviceStore
from service.store.identities import IdentityStore
from service.store.records import DeviceRecord


def override_out(override: Override | None, etag: str | None = None) -> dict | None:
    """The API form of an override (times as ISO-8601 UTC), with its ETag (what If-Match on
    DELETE .../override names)."""
    if override is None:
        return None
    return {**override.to_dict(), "etag": etag}


def device_document(
    devices: DeviceStore,
    policy: CompiledPolicy,
    imei: str,
    identities: IdentityStore | None = None,
) -> dict | None:
    """The device's record as support sees it (API and console alike), or None when never
    seen nor overridden; POLICY is the one being served (for the distributor's name). IMEI is
    the device's primary (see devices/identity.py); with IDENTITIES the document lists its
    other IMEIs (``imeis``: the primary first) and those it shares with other devices."""
    snapshot = devices.snapshot(imei)
    if snapshot.record is None and snapshot.override is None:
        return None
    record = snapshot.record or DeviceRecord()
    identity = identities.identity(imei) if identities is not None else None
    aliases = identity.aliases if identity is not None else ()
    distributor_id = record.distributor or policy.distributor_of(imei, aliases)
    distributor = None
    if distributor_id:
        info = policy.distributor(distributor_id)
        distributor = {
            "id": distributor_id,
            "name": info.name if info else None,
            "territories": list(info.territories) if info else [],
        }
    return {
        "imei": imei,
        "imeis": [imei, *aliases],
        # IMEIs another device reports too (cloned or reused), and which devices those are.
        "shared_imeis": list(identity.shared) if identity is not None else [],
        "shared_with": dict(identity.shared_with) if identity is not None else {},
        "tac": imei[:8],
        "distributor": distributor,
        "activation": record.activation,
        "first_seen": iso_utc(record.first_seen) if record.first_seen is not None else None,
        "last_checkin": _last_checkin(record),
        "verdict": record.verdict,
        "reasons": record.reasons,
        "observed": record.observed,
        "lock_at": record.lock_at,
        "policy_version": record.policy_version,
        "override": override_out(snapshot.override, snapshot.override_etag),
        # From the same read as the rest: the history is a field of the record.
        "decisions": record.decisions(),
        "proven_at": _iso_or_none(record.proven),
        "unproven_checkins": record.unproven_checkins,
        "last_unproven_at": _iso_or_none(record.last_unproven),
    }


def _iso_or_none(at: float | None) -> str | None:
    return iso_utc(at) if at is not None else None


def _last_checkin(record: DeviceRecord) -> dict | None:
    if record.facts is None:
        return None
    return {
        "at": iso_utc(record.facts.at),
        "places": record.facts.places,
        **record.device,
    }
