"""Per-device state: the record, recent decisions, the override, and check-in facts."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from service.engine.model import iso_utc
from service.store import keys
from service.store.client import is_cluster


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


# KEYS: device hash, [facts stream].
# ARGV: now, decision entry (JSON), its outcome signature, decisions kept, facts maxlen,
#       facts (JSON), the number D of fields to delete, D field names, then field/value pairs.
# The decision history is one hash field, newest entry first, one "sig|since|count|json" line
# each (no list key: a key of its own costs more memory than a small device's whole record).
# It is run-length encoded: a check-in with the same outcome as the newest entry (same verdict,
# reasons and places) updates that entry instead of adding one, so a phone that checks in from
# home every day keeps one entry, not a month of identical ones.
_RECORD_CHECKIN = r"""
redis.call('HSETNX', KEYS[1], 'first_seen', ARGV[1])
local deleted = tonumber(ARGV[7])
if deleted > 0 then
  redis.call('HDEL', KEYS[1], unpack(ARGV, 8, 7 + deleted))
end
if #ARGV > 7 + deleted then
  redis.call('HSET', KEYS[1], unpack(ARGV, 8 + deleted))
end
local history = redis.call('HGET', KEYS[1], 'history')
local entry = ARGV[3] .. '|' .. ARGV[1] .. '|1|' .. ARGV[2]
local count = 1
if history then
  local newline = string.find(history, '\n', 1, true)
  local head = newline and string.sub(history, 1, newline - 1) or history
  local sig, since, n = string.match(head, '^([^|]*)|([^|]*)|(%d+)|')
  if sig == ARGV[3] then
    count = tonumber(n) + 1
    entry = sig .. '|' .. since .. '|' .. count .. '|' .. ARGV[2]
    if newline then
      history = entry .. string.sub(history, newline)
    else
      history = entry
    end
  else
    history = entry .. '\n' .. history
    local kept, lines, position = tonumber(ARGV[4]), 1, 0
    while true do
      position = string.find(history, '\n', position + 1, true)
      if not position then break end
      if lines >= kept then
        history = string.sub(history, 1, position - 1)
        break
      end
      lines = lines + 1
    end
  end
else
  history = entry
end
redis.call('HSET', KEYS[1], 'history', history)
if KEYS[2] then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'facts', ARGV[6])
end
return count
"""


def parse_history(history: str | None, limit: int | None = None) -> list[dict]:
    """Decision entries of a stored history field, newest first, times as ISO-8601 UTC."""
    if not history:
        return []
    out = []
    for line in history.split("\n")[:limit]:
        _, since, count, body = line.split("|", 3)
        entry = orjson.loads(body)
        entry["at"] = iso_utc(entry["at"])
        entry["since"] = iso_utc(float(since))
        entry["count"] = int(count)
        out.append(entry)
    return out


class DeviceStore:
    """Reads and writes device records; every multi-key write is one MULTI on one slot."""

    def __init__(
        self,
        redis,
        decisions_kept: int = 20,
        facts_maxlen: int = 1_000_000,
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
        outcome: str,
        facts: dict,
    ) -> None:
        """Write the outcome of one check-in: record fields (empty ones are removed), decision
        history (merged with the newest entry when OUTCOME, its signature, is the same), facts
        stream; one atomic script call."""
        # One script call (atomic, one reply) instead of a MULTI of many commands: the write
        # half of a check-in is on the hot path.
        deleted = [name for name, value in fields.items() if value in (None, "", b"[]", b"{}")]
        flat: list = []
        for name, value in fields.items():
            if value not in (None, "", b"[]", b"{}"):
                flat.extend((name, value))
        facts_json = orjson.dumps({"imei": imei, "at": now, **facts})
        stream_keys = [] if self.cluster else [keys.CHECKIN_FACTS]
        self._record(
            keys=[keys.device(imei), *stream_keys],
            args=[
                repr(now),
                orjson.dumps(decision_entry),
                outcome.replace("|", "/"),
                self.decisions_kept,
                self.facts_maxlen,
                facts_json,
                len(deleted),
                *deleted,
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

    def decisions(self, imei: str, limit: int | None = None) -> list[dict]:
        """The device's recent decisions, newest first; ``count`` check-ins with the same
        outcome since ``since`` are merged into one entry."""
        history = self.redis.hget(keys.device(imei), "history")
        return parse_history(history, limit)

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
