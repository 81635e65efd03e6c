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


# KEYS: device hash, decisions list, [facts stream]. ARGV: now, decision entry, decisions kept,
# facts maxlen, facts JSON, then field/value pairs for the device hash.
_RECORD_CHECKIN = """
redis.call('HSETNX', KEYS[1], 'first_seen', ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
if KEYS[3] then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'facts', ARGV[5])
end
return 1
"""


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
        self._record = redis.register_script(_RECORD_CHECKIN)

    def snapshot(self, imei: str, fields: tuple[str, ...] | None = None) -> DeviceSnapshot:
        """Record (all fields, or only FIELDS) and override of a device, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        if fields is None:
            pipe.hgetall(keys.device(imei))
        else:
            pipe.hmget(keys.device(imei), fields)
        pipe.get(keys.device_override(imei))
        record, override = pipe.execute()
        if fields is not None:
            record = {
                name: value for name, value in zip(fields, record, strict=True) if value is not None
            }
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
        # One script call (atomic, one reply) instead of a MULTI of seven commands: the write
        # half of a check-in is on the hot path.
        flat: list = []
        for name, value in fields.items():
            flat.extend((name, value))
        facts_json = orjson.dumps({"imei": imei, "at": now, **facts})
        stream_keys = [] if self.cluster else [keys.CHECKIN_FACTS]
        self._record(
            keys=[keys.device(imei), keys.device_decisions(imei), *stream_keys],
            args=[
                repr(now),
                orjson.dumps(decision_entry),
                self.decisions_kept,
                self.facts_maxlen,
                facts_json,
                *flat,
            ],
        )
        if self.cluster:
            # In a cluster the facts stream lives in another slot: it cannot join the device's
            # script, so it follows it (it only feeds simulation).
            self.redis.xadd(
                keys.CHECKIN_FACTS,
                {"facts": facts_json},
                maxlen=self.facts_maxlen,
                approximate=True,
            )

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
