"""Per-device state: the record, recent decisions, the override, and check-in facts."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from service.store import keys

DAY_S = 86_400


def is_cluster(redis) -> bool:
    """True when the client talks to a Redis Cluster."""
    from redis.cluster import RedisCluster

    return isinstance(redis, RedisCluster)


@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    """What a check-in reads before deciding: the record hash and the override (if any)."""

    record: dict
    override: dict | None

    @property
    def state(self) -> dict:
        """The engine state kept between check-ins ({} for a new device)."""
        raw = self.record.get("state")
        return orjson.loads(raw) if raw else {}

    @property
    def activation(self) -> dict | None:
        """The activation record, once there is one."""
        raw = self.record.get("activation")
        return orjson.loads(raw) if raw else None


class DeviceStore:
    """Reads and writes device records; every multi-key write is one MULTI on one slot."""

    def __init__(
        self,
        redis,
        decisions_kept: int = 20,
        facts_maxlen: int = 2_000_000,
        retention_days: int = 90,
    ):
        self.redis = redis
        self.decisions_kept = decisions_kept
        self.facts_maxlen = facts_maxlen
        self.retention_days = retention_days
        self.cluster = is_cluster(redis)

    def snapshot(self, imei: str) -> DeviceSnapshot:
        """Record and override of a device, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.device(imei))
        pipe.get(keys.device_override(imei))
        record, override = pipe.execute()
        return DeviceSnapshot(
            record=record or {}, override=orjson.loads(override) if override else None
        )

    def record_checkin(
        self,
        imei: str,
        *,
        now: float,
        fields: dict,
        decision_entry: dict,
        facts: dict,
    ) -> None:
        """Write the outcome of one check-in: record fields, decision history, facts stream."""
        pipe = self.redis.pipeline(transaction=True)
        device_key = keys.device(imei)
        pipe.hsetnx(device_key, "first_seen", repr(now))
        pipe.hset(device_key, mapping=fields)
        decisions_key = keys.device_decisions(imei)
        pipe.lpush(decisions_key, orjson.dumps(decision_entry))
        pipe.ltrim(decisions_key, 0, self.decisions_kept - 1)
        facts_fields = {"imei": imei, "at": repr(now), "facts": orjson.dumps(facts)}
        if self.cluster:
            # In a cluster the facts stream lives in another slot: it cannot join the device's
            # MULTI, so it follows it (it only feeds simulation).
            pipe.execute()
            self.redis.xadd(
                keys.CHECKIN_FACTS, facts_fields, maxlen=self.facts_maxlen, approximate=True
            )
        else:
            pipe.xadd(keys.CHECKIN_FACTS, facts_fields, maxlen=self.facts_maxlen, approximate=True)
            pipe.execute()

    def trim_facts(self, now: float) -> int:
        """Drop check-in facts older than the retention period; returns how many went."""
        cutoff_ms = int((now - self.retention_days * DAY_S) * 1000)
        return self.redis.xtrim(keys.CHECKIN_FACTS, minid=f"{cutoff_ms}-0", approximate=False)

    def decisions(self, imei: str, limit: int | None = None) -> list[dict]:
        """The device's recent decisions, newest first."""
        end = -1 if limit is None else limit - 1
        return [orjson.loads(raw) for raw in self.redis.lrange(keys.device_decisions(imei), 0, end)]

    def set_override(
        self, imei: str, override: dict, ttl_s: int | None, audit_fields: dict
    ) -> None:
        """Store OVERRIDE (replacing any other) and its audit entry; TTL_S makes it lapse."""
        self._with_audit(
            lambda pipe: pipe.set(keys.device_override(imei), orjson.dumps(override), ex=ttl_s),
            audit_fields,
        )

    def delete_override(self, imei: str, audit_fields: dict) -> bool:
        """Remove the device's override; False (and no audit entry) when it had none."""
        if not self.redis.exists(keys.device_override(imei)):
            return False
        self._with_audit(lambda pipe: pipe.delete(keys.device_override(imei)), audit_fields)
        return True

    def policy_reasons(self, imei: str) -> list[dict]:
        """What the policy alone said at the last check-in: [{code, rule, kind, action}]."""
        raw = self.redis.hget(keys.device(imei), "policy_reasons")
        return orjson.loads(raw) if raw else []

    def override(self, imei: str) -> dict | None:
        """The device's active override (a lapsed time-boxed one is gone by its TTL)."""
        raw = self.redis.get(keys.device_override(imei))
        return orjson.loads(raw) if raw else None

    def _with_audit(self, write, audit_fields: dict) -> None:
        # One MULTI where the keys may share it; in a cluster the audit stream is another slot.
        pipe = self.redis.pipeline(transaction=not self.cluster)
        write(pipe)
        pipe.xadd(keys.AUDIT, audit_fields)
        pipe.execute()

    def exists(self, imei: str) -> bool:
        """True when the device has checked in at least once."""
        return bool(self.redis.exists(keys.device(imei)))
