"""Per-device state: the record, recent decisions, the override, and check-in facts.

The stored forms are those of :mod:`service.store.records`; this module only moves them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis as redis_lib

from service.engine.model import DeviceState, Override
from service.store import batch, fleet_stats, keys, sampling
from service.store.client import is_cluster
from service.store.idempotency import (
    OUTCOME_UNKNOWN_MESSAGE,
    Operation,
    OutcomeUnknown,
    anonymous_operation,
    check_fingerprint,
    decode_record,
    encode_record,
)
from service.store.records import (
    DeviceRecord,
    decode_override,
    encode_override,
    encode_state,
)
from service.store.scan import hash_fields_reader, scan_batches, strings_reader

#: How long a used check-in proof is remembered: twice the window in which a proof's time is
#: accepted (300 s either side), so a proof is refused as a replay for as long as it could pass.
USED_PROOF_TTL_S = 600


class ResetConflict(RuntimeError):
    """The device's record kept changing under an activation reset (check-ins racing it)."""


@dataclass(frozen=True, slots=True)
class ActivationReset:
    """What an activation reset forgot (``activation``, ``bindings``); REPLAYED when the same
    operation (Idempotency-Key) had done it before: FORGOTTEN is what that first call forgot."""

    forgotten: dict
    replayed: bool = False


def override_etag(raw: str | bytes | None) -> str | None:
    """The entity tag of a stored override (quoted, as HTTP's ETag): a digest of its stored
    form, so any other override (even a like one made a moment later) has another."""
    if raw is None:
        return None
    data = raw.encode() if isinstance(raw, str) else raw
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def _text(value: str | bytes | None) -> str | None:
    """VALUE as text, whichever way the client decodes replies."""
    return value.decode() if isinstance(value, bytes) else value


class _Any:
    """The type of :data:`ANY`."""

    def __repr__(self) -> str:
        return "ANY"


#: ``change_override(expected=ANY)``: whatever the device holds.
ANY = _Any()


@dataclass(frozen=True, slots=True)
class OverrideChange:
    """What :meth:`DeviceStore.change_override` did: ``done`` (CURRENT: what it replaced or
    removed), ``changed`` (nothing written: CURRENT is what the device holds now) or ``replay``
    (the operation was applied before: RECORD is what it stored)."""

    outcome: str
    current: str | None = None
    record: dict | None = None


@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    """What a check-in reads before deciding: the record (None for a device never seen) and the
    override (if any), with the override's stored form (for its ETag)."""

    record: DeviceRecord | None
    override: Override | None
    override_raw: str | None = None
    # The counters the read incremented (``counters`` of :meth:`DeviceStore.snapshot`), in order.
    counts: tuple[int, ...] = ()
    # The replies of each ``along`` reader of :meth:`DeviceStore.snapshot`, in order.
    along: tuple[list, ...] = ()

    @property
    def override_etag(self) -> str | None:
        """The override's entity tag (see :func:`override_etag`)."""
        return override_etag(self.override_raw)

    @property
    def state(self) -> DeviceState:
        """The engine state kept between check-ins (the empty state for a new device)."""
        return self.record.state if self.record is not None else DeviceState()

    @property
    def activation(self) -> dict | None:
        """The activation record, once there is one."""
        return self.record.activation if self.record is not None else None


# KEYS: device hash, [used proof, when ARGV[9] is not ""], [facts stream], [the overview's
#       three shards, when ARGV[10] is not ""].
# ARGV: now, history entry tail ("<policy version>|<outcome>"), the outcome
#       (records.encode_outcome: the run-length key), decisions kept, facts maxlen,
#       facts (JSON), the number D of fields to delete, the proof status ("proven",
#       "unproven" or "" when none is counted), the used proof's TTL ("" for no proof), the
#       overview's packed argument ("" for none), D field names, then field/value pairs.
# A check-in with a proof first claims it (SET NX): a proof seen before is a replay, answered
# -1 with nothing written (SPEC §13: each proof is accepted once, and race-free).
# The decision history is one hash field, newest entry first, one compact
# "since|count|age|policy_version|outcome" line each (records.HistoryLine; no list key: a key
# of its own costs more memory than a small device's whole record). It is run-length encoded: a
# check-in with the same outcome as the newest entry (same verdict, reasons and places) updates
# that entry instead of adding one, so a phone that checks in from home every day keeps one
# entry, not a month of identical ones. A line in the older JSON form never matches: the next
# check-in puts a compact line above it.
# Fleet overview (SPEC §14): ARGV[10] is the packed counters/index argument ("" when the
# counters are off), and then the last three KEYS are its shards (store/fleet_stats.py).
# Sampling index (SPEC §12.5): one more key, after all of those, is the device's index shard:
# sampling.LUA_PRELUDE, first, takes it out of KEYS (so the keys above keep their places, and
# the last three are the overview's again); rl_sample_index() indexes a new device.
_RECORD_CHECKIN = (
    sampling.LUA_PRELUDE
    + fleet_stats.LUA_FRAGMENT
    + fleet_stats.LUA_CHECKIN
    + r"""
local rl_nkeys = #KEYS - (ARGV[10] ~= '' and 3 or 0)
local stream = rl_nkeys >= 2 and KEYS[2] or nil
if ARGV[9] ~= '' then
  if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[9]) then
    return -1
  end
  stream = rl_nkeys >= 3 and KEYS[3] or nil
end
local rl_old_verdict = ARGV[10] ~= '' and redis.call('HGET', KEYS[1], 'verdict')
redis.call('HSETNX', KEYS[1], 'first_seen', ARGV[1])
local deleted = tonumber(ARGV[7])
if deleted > 0 then
  redis.call('HDEL', KEYS[1], unpack(ARGV, 11, 10 + deleted))
end
if #ARGV > 10 + deleted then
  redis.call('HSET', KEYS[1], unpack(ARGV, 11 + deleted))
end
if ARGV[8] == 'proven' then
  redis.call('HSETNX', KEYS[1], 'proven', ARGV[1])
elseif ARGV[8] == 'unproven' then
  redis.call('HINCRBY', KEYS[1], 'unproven_checkins', 1)
  redis.call('HSET', KEYS[1], 'last_unproven', ARGV[1])
end
-- === decision history (compact lines, records.HistoryLine) ===
local history = redis.call('HGET', KEYS[1], 'history')
local now_s = math.floor(tonumber(ARGV[1]))
local entry = string.format('%d', now_s) .. '|1|0|' .. ARGV[2]
local count = 1
if history then
  local newline = string.find(history, '\n', 1, true)
  local head = newline and string.sub(history, 1, newline - 1) or history
  local since, n, outcome = string.match(head, '^(%d+)|(%d+)|%d+|[^|]*|(.*)$')
  if since and outcome == ARGV[3] then
    count = tonumber(n) + 1
    local age = math.max(0, now_s - tonumber(since))
    entry = since .. '|' .. count .. '|' .. string.format('%d', age) .. '|' .. ARGV[2]
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
if stream then
  redis.call('XADD', stream, 'MAXLEN', '~', ARGV[5], '*', 'facts', ARGV[6])
end
if ARGV[10] ~= '' then
  rl_checkin_stats(ARGV[10], rl_old_verdict, ARGV[1])
end
rl_sample_index()  -- sampling index (SPEC §12.5), see sampling.LUA_PRELUDE
return count
"""
)


# Compare-and-set, so a check-in landing during the retention sweep is never undone.
# KEYS: device hash. ARGV: facts value read, history value read, new history ("" to delete),
# drop facts (1/0).
_FORGET_FACTS = r"""
local changed = 0
if ARGV[4] == '1' and redis.call('HGET', KEYS[1], 'facts') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'facts')
  changed = 1
end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'history') == ARGV[2] then
  if ARGV[3] == '' then
    redis.call('HDEL', KEYS[1], 'history')
  else
    redis.call('HSET', KEYS[1], 'history', ARGV[3])
  end
  changed = 1
end
return changed
"""

# Forget the activation binding (SPEC §13), compare-and-set against what the caller read so a
# check-in landing meanwhile is never undone, with its idempotency record and its audit entry in
# the same call.
# KEYS: device hash, idempotency record, [audit stream]. ARGV: state read ("" for none),
# activation read ("" for none), new state ("" to delete), idempotency record, its TTL, then the
# audit entry's field/value pairs.
_RESET_ACTIVATION = r"""
local prior = redis.call('GET', KEYS[2])
if prior then
  return {'replay', prior}
end
local state = redis.call('HGET', KEYS[1], 'state') or ''
local activation = redis.call('HGET', KEYS[1], 'activation') or ''
if state ~= ARGV[1] or activation ~= ARGV[2] then
  return {'changed', ''}
end
redis.call('HDEL', KEYS[1], 'activation')
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], 'state')
else
  redis.call('HSET', KEYS[1], 'state', ARGV[3])
end
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[5])
if KEYS[3] then
  redis.call('XADD', KEYS[3], '*', unpack(ARGV, 6))
end
return {'done', ''}
"""

# Check-and-set of a device's override with its idempotency record and audit entry.
# KEYS: override, idempotency record, [audit stream (absent in a Cluster)], [the overview's
#       five keys when ARGV[8] is not "" (store/fleet_stats.py)].
# ARGV: mode (set/delete), check (1: only if the override is ARGV[3]), expected ("" = none),
#       new override, its TTL (0 = none), idempotency record, its TTL, the overview's packed
#       argument ("" = none), audit field/value pairs.
# 'stale' (nothing written): the device's lock basis changed since the index entry was computed.
_CHANGE_OVERRIDE = (
    fleet_stats.LUA_FRAGMENT
    + fleet_stats.LUA_OVERRIDE
    + r"""
local rl_a = ARGV[8] ~= '' and rl_override_packed(ARGV[8]) or nil
local audit = (#KEYS - (rl_a and 5 or 0)) >= 3 and KEYS[3] or nil
local prior = redis.call('GET', KEYS[2])
if prior then
  return {'replay', prior}
end
local current = redis.call('GET', KEYS[1]) or ''
if ARGV[2] == '1' and current ~= ARGV[3] then
  return {'changed', current}
end
if rl_override_stale(rl_a) then
  return {'stale', current}
end
if ARGV[1] == 'set' then
  if tonumber(ARGV[5]) > 0 then
    redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[5])
  else
    redis.call('SET', KEYS[1], ARGV[4])
  end
else
  if current == '' then
    return {'changed', ''}
  end
  redis.call('DEL', KEYS[1])
end
redis.call('SET', KEYS[2], ARGV[6], 'EX', ARGV[7])
if audit then
  redis.call('XADD', audit, '*', unpack(ARGV, 9))
end
rl_override_stats(rl_a)
return {'done', current}
"""
)

# The sampled simulation's read of many devices (standalone Redis only: the keys span slots).
# KEYS: device hash, override, device hash, override, ... ARGV: the fields. Returns, per
# device, the fields' values then the override (nil where missing).
_READ_MANY = r"""
local out, n = {}, 0
for i = 1, #KEYS, 2 do
  local values = redis.call('HMGET', KEYS[i], unpack(ARGV))
  for j = 1, #ARGV do
    n = n + 1
    out[n] = values[j]
  end
  n = n + 1
  out[n] = redis.call('GET', KEYS[i + 1])
end
return out
"""

# Fields a check-in never writes from its record: the script sets first_seen once, merges
# the history itself and keeps the proof fields (SPEC §13; counted, never overwritten).
_SCRIPT_FIELDS = ("first_seen", "history", "proven", "unproven_checkins", "last_unproven")


def _queue_snapshot(pipe, imei: str, fields, counters, along) -> list[int]:
    """Queue a device read on PIPE (DeviceStore.snapshot); the number of replies of each ALONG."""
    if fields is None:
        pipe.hgetall(keys.device(imei))
    else:
        pipe.hmget(keys.device(imei), fields)
    pipe.get(keys.device_override(imei))
    for key, ttl_s in counters:
        pipe.incr(key)
        pipe.expire(key, ttl_s)
    return [queue(pipe) for queue in along]


def _snapshot_of(replies: list, fields, counters: int, widths: list[int]) -> DeviceSnapshot:
    """The DeviceSnapshot of a device read's REPLIES (queued by :func:`_queue_snapshot`)."""
    stored, override, *rest = replies
    counted = rest[: 2 * counters]
    position, along = 2 * counters, []
    for width in widths:
        along.append(rest[position : position + width])
        position += width
    if fields is not None:
        stored = {
            name: value for name, value in zip(fields, stored, strict=True) if value is not None
        }
    return DeviceSnapshot(
        record=DeviceRecord.decode(stored) if stored else None,
        override=decode_override(override),
        override_raw=_text(override),
        counts=tuple(int(n) for n in counted[::2]),
        along=tuple(along),
    )


class DeviceStore:
    """Reads and writes device records; every multi-key write is one MULTI on one slot."""

    def __init__(
        self,
        redis,
        decisions_kept: int = 20,
        facts_maxlen: int = 1_000_000,
        retention_days: int = 90,
        overview: bool = True,
    ):
        self.redis = redis
        # SPEC §14: the check-in and override scripts keep the fleet overview's counters and
        # locked index (REGIONLOCK_STATS=off: they do not; the benchmark's baseline).
        self.overview = overview
        self.decisions_kept = decisions_kept
        self.facts_maxlen = facts_maxlen
        self.retention_days = retention_days
        self.cluster = is_cluster(redis)
        self._record = redis.register_script(_RECORD_CHECKIN)
        self._forget_facts = redis.register_script(_FORGET_FACTS)
        self._reset_activation = redis.register_script(_RESET_ACTIVATION)
        self._change_override = redis.register_script(_CHANGE_OVERRIDE)
        self._read_many = redis.register_script(_READ_MANY)
        self._batch = redis.register_script(batch.BATCH_SCRIPT)

    def snapshot(
        self,
        imei: str,
        fields: tuple[str, ...] | None = None,
        counters: Sequence[tuple[str, int]] = (),
        along: Sequence[Callable[[Any], int]] = (),
    ) -> DeviceSnapshot:
        """Record (all fields, or only FIELDS) and override of a device, in one round trip.
        COUNTERS, (key, seconds to live) pairs, are incremented in the same round trip (the
        check-in's rate limits); their new values are the snapshot's ``counts``. Each of ALONG
        queues its own reads on the same pipeline (``queue(pipe) -> number of replies``: the
        token's revocation counter, the alias index) and finds its replies in ``along``."""
        # One script call on a standalone Redis (store/batch.py), a pipeline in a cluster.
        pipe = batch.reads_for(self.redis, self._batch, self.cluster)
        widths = _queue_snapshot(pipe, imei, fields, counters, along)
        return _snapshot_of(pipe.execute(), fields, len(counters), widths)

    async def snapshot_async(
        self,
        connection,
        imei: str,
        fields: tuple[str, ...] | None = None,
        counters: Sequence[tuple[str, int]] = (),
        along: Sequence[Callable[[Any], int]] = (),
    ) -> DeviceSnapshot:
        """:meth:`snapshot` over CONNECTION (store/coalesced.py; standalone Redis only)."""
        pipe = batch.ScriptedBatch(None)
        widths = _queue_snapshot(pipe, imei, fields, counters, along)
        script_keys, args = pipe.request()
        replies = await connection.evalsha(self._batch.sha, batch.BATCH_SCRIPT, script_keys, args)
        return _snapshot_of(pipe.converted(replies), fields, len(counters), widths)

    def record_checkin(self, imei: str, record: DeviceRecord, **write: Any) -> bool:
        """Write the outcome of one check-in, in one atomic script call: RECORD's fields replace
        the stored ones (empty ones are removed; an activation of None leaves the stored one,
        and first_seen and history are the script's), OUTCOME (records.encode_outcome) at
        POLICY_VERSION joins the history (merged with the newest entry when the same), FACTS
        the facts
        stream. PROOF_STATUS ("proven", "unproven" or "") is counted in the record (SPEC §13);
        PROOF_MAC, the check-in's proof, is claimed first: False, and nothing written, when it
        was used before (a replay). COUNTS: what the check-in adds to the fleet overview's
        counters and locked index, written by the same script (None: the counters are off).
        WRITE: those keyword arguments (typed in :meth:`_record_call`)."""
        # One script call (atomic, one reply) instead of a MULTI of many commands: the write
        # half of a check-in is on the hot path.
        script_keys, args, facts_json = self._record_call(imei, record, **write)
        if self._record(keys=script_keys, args=args) == -1:
            return False
        if self.cluster:
            # In a cluster the facts stream lives in another slot: it cannot join the device's
            # script, so it follows it (it only feeds simulation).
            self.redis.xadd(
                keys.CHECKIN_FACTS,
                {"facts": facts_json},
                maxlen=self.facts_maxlen,
                approximate=True,
            )
        return True

    async def record_checkin_async(
        self, connection, imei: str, record: DeviceRecord, **write: Any
    ) -> bool:
        """:meth:`record_checkin` over CONNECTION (store/coalesced.py; standalone Redis only)."""
        script_keys, args, _ = self._record_call(imei, record, **write)
        reply = await connection.evalsha(self._record.sha, _RECORD_CHECKIN, script_keys, args)
        return reply != -1

    def _record_call(
        self,
        imei: str,
        record: DeviceRecord,
        *,
        now: float,
        policy_version: int | None,
        outcome: str,
        facts: dict,
        proof_status: str = "",
        proof_mac: str | None = None,
        counts: fleet_stats.CheckinCounts | None = None,
    ) -> tuple[list[str], list, bytes]:
        """The check-in script's KEYS and ARGV for :meth:`record_checkin`, and the facts."""
        fields = record.encode()
        for name in _SCRIPT_FIELDS:
            del fields[name]
        if record.activation is None:
            del fields["activation"]
        deleted = [name for name, value in fields.items() if value is None]
        flat: list = []
        for name, value in fields.items():
            if value is not None:
                flat.extend((name, value))
        facts_json = orjson.dumps({"imei": imei, "at": now, **facts})
        stream_keys = [] if self.cluster else [keys.CHECKIN_FACTS]
        proof_keys = [keys.device_used_proof(imei, proof_mac)] if proof_mac else []
        overview_keys, overview = (
            fleet_stats.checkin_args(imei, counts, now) if counts is not None else ([], "")
        )
        # The sampling index's shard last: sampling.LUA_PRELUDE finds it by its prefix.
        script_keys = [
            keys.device(imei),
            *proof_keys,
            *stream_keys,
            *overview_keys,
            sampling.shard_key(imei),
        ]
        args = [
            repr(now),
            f"{'' if policy_version is None else policy_version}|{outcome}",
            outcome,
            self.decisions_kept,
            self.facts_maxlen,
            facts_json,
            len(deleted),
            proof_status,
            USED_PROOF_TTL_S if proof_mac else "",
            overview,
            *deleted,
            *flat,
        ]
        return script_keys, args, facts_json

    def decisions(self, imei: str, limit: int | None = None) -> list[dict]:
        """The device's recent decisions, newest first; ``count`` check-ins with the same
        outcome since ``since`` are merged into one entry."""
        history = self.redis.hget(keys.device(imei), "history")
        return DeviceRecord.decode({"history": history}).decisions(limit)

    def change_override(
        self,
        imei: str,
        *,
        new: Override | None,
        ttl_s: int | None,
        expected: str | _Any | None,
        operation: Operation,
        result: dict,
        audit_fields: dict | None,
        counts: fleet_stats.OverrideCounts | None = None,
        now: float | None = None,
    ) -> OverrideChange:
        """Set the device's override to NEW (None removes it) with its audit entry, in one script
        call: atomic, and never applied twice.

        EXPECTED is the stored override (raw, as :attr:`DeviceSnapshot.override_raw` or
        :meth:`override_raw` read it; None for "none") the change was decided on; when the device
        no longer holds exactly that, nothing is written and the answer is ``changed`` with what
        it holds now. ``ANY`` replaces whatever is there (a removal of nothing is ``changed``).

        OPERATION names the write (from the caller's Idempotency-Key, or a random id): its record
        (RESULT, the fingerprint) is stored in the same script, so the same operation sent again
        (by the caller, or by redis-py after a lost reply) is answered ``replay`` with the first
        record instead of being applied a second time.

        COUNTS: the change's fleet-overview counters and the device's new locked-index entry,
        written by the same script; ``stale`` (nothing written) when the device's lock basis is
        no longer COUNTS.basis (a check-in landed: compute the entry again).
        """
        record = orjson.dumps({"fingerprint": operation.fingerprint, **result})
        audit_args: list = []
        for name, value in (audit_fields or {}).items():
            audit_args.extend((name, value))
        in_script = not self.cluster and audit_fields is not None
        stream = [keys.AUDIT] if in_script else []
        overview_keys, overview = (
            fleet_stats.override_args(imei, counts, time.time() if now is None else now)
            if counts is not None
            else ([], "")
        )
        reply = self._change_override(
            keys=[
                keys.device_override(imei),
                keys.idempotency(imei, operation.digest),
                *stream,
                *overview_keys,
            ],
            args=[
                "delete" if new is None else "set",
                "0" if expected is ANY else "1",
                "" if expected is ANY or expected is None else expected,
                encode_override(new) if new is not None else "",
                ttl_s or 0,
                record,
                operation.ttl_s,
                overview,
                *(audit_args if in_script else ()),
            ],
        )
        outcome, value = _text(reply[0]), _text(reply[1]) or None
        if outcome == "replay":
            return OverrideChange("replay", record=orjson.loads(value))
        if outcome in ("changed", "stale"):
            return OverrideChange(outcome, current=value)
        if self.cluster and audit_fields is not None:
            # The audit stream is another slot: it follows the change (docs/decisions.md).
            self.redis.xadd(keys.AUDIT, audit_fields)
        if counts is not None and counts.expires is not None:
            # Another slot: marks the device's expiries shard due for the stats sweeper.
            fleet_stats.mark_due(self.redis, imei, counts.expires)
        return OverrideChange("done", current=value)

    def operation_record(self, imei: str, digest: str) -> dict | None:
        """The stored record of a write named DIGEST on the device (None when none)."""
        raw = self.redis.get(keys.idempotency(imei, digest))
        return orjson.loads(raw) if raw else None

    def request_record(self, digest: str) -> dict | None:
        """The stored result of a many-device call named DIGEST (bulk unlock), or None."""
        raw = self.redis.get(keys.idempotent_request(digest))
        return orjson.loads(raw) if raw else None

    def store_request_record(self, digest: str, record: dict, ttl_s: int) -> None:
        """Keep the result of a many-device call named DIGEST for TTL_S seconds."""
        self.redis.set(keys.idempotent_request(digest), orjson.dumps(record), ex=ttl_s)

    def override_raw(self, imei: str) -> str | None:
        """The device's override as stored (what :meth:`change_override` compares with)."""
        return _text(self.redis.get(keys.device_override(imei)))

    def reset_activation(
        self,
        imei: str,
        audit_fields_of,
        attempts: int = 5,
        operation: Operation | None = None,
    ) -> ActivationReset | None:
        """Forget the device's activation record and its ``bind: activation`` bindings (with
        the grace clocks those rules started), so the next check-in binds afresh (SPEC §13).
        AUDIT_FIELDS_OF(forgotten) gives the audit entry, written in the same call. Returns
        what was forgotten, None when there was nothing.

        OPERATION (default: an anonymous one) names the call: its record is written by the same
        script, so the same call sent again is answered with the first one's result
        (``replayed``) instead of being applied twice. Raises IdempotencyConflict when its key
        was used for another request, OutcomeUnknown when the script's answer was lost."""
        operation = operation or anonymous_operation()
        record_key = keys.idempotency(imei, operation.digest)
        if operation.named:
            prior = decode_record(self.redis.get(record_key))
            if prior is not None:
                check_fingerprint(prior, operation)
                return ActivationReset(prior["forgotten"], replayed=True)
        for _ in range(attempts):
            state_raw, activation_raw = self.redis.hmget(keys.device(imei), ["state", "activation"])
            record = DeviceRecord.decode({"state": state_raw, "activation": activation_raw})
            bound = dict(record.state.bindings)
            if record.activation is None and not bound:
                return None
            kept = DeviceState(
                bindings={},
                first_hits={k: v for k, v in record.state.first_hits.items() if k not in bound},
            )
            forgotten = {"activation": record.activation, "bindings": bound}
            audit_fields = audit_fields_of(forgotten)
            flat = [item for pair in audit_fields.items() for item in pair]
            new_state = encode_state(kept)
            record = encode_record(operation, {"status": 204, "forgotten": forgotten})
            try:
                reply = self._reset_activation(
                    keys=[keys.device(imei), record_key, *([] if self.cluster else [keys.AUDIT])],
                    args=[
                        state_raw or "",
                        activation_raw or "",
                        new_state or b"",
                        record,
                        operation.ttl_s,
                        *flat,
                    ],
                )
            except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
                # Sent (or perhaps sent): whether it was applied cannot be known from here.
                raise OutcomeUnknown(OUTCOME_UNKNOWN_MESSAGE) from exc
            outcome = _text(reply[0])
            if outcome == "replay":
                prior = orjson.loads(reply[1])
                check_fingerprint(prior, operation)
                return ActivationReset(prior["forgotten"], replayed=True)
            if outcome == "done":
                if self.cluster:
                    # The audit stream lives in another slot: it follows the change.
                    self.redis.xadd(keys.AUDIT, audit_fields)
                return ActivationReset(forgotten)
        raise ResetConflict(imei)

    def index_basis(self, imei: str) -> fleet_stats.IndexBasis:
        """What the device's locked-index entry is computed from (SPEC §14), as stored now."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(keys.device(imei), ["policy_reasons", "distributor"])
        pipe.get(keys.device_override(imei))
        (reasons, distributor), override = pipe.execute()
        return fleet_stats.index_basis(reasons, distributor, override)

    def policy_reasons(self, imei: str) -> list[dict]:
        """What the policy alone said at the last check-in: [{code, rule, kind, action}]."""
        raw = self.redis.hget(keys.device(imei), "policy_reasons")
        return DeviceRecord.decode({"policy_reasons": raw}).policy_reasons

    def override(self, imei: str) -> Override | None:
        """The device's active override (a lapsed time-boxed one is gone by its TTL)."""
        return decode_override(self.redis.get(keys.device_override(imei)))

    def exists(self, imei: str) -> bool:
        """True when the device has checked in at least once."""
        return bool(self.redis.exists(keys.device(imei)))

    # --- every device at once (retention sweep, impact simulation) ----------------------------

    def field_batches(
        self, fields: Sequence[str], *, batch: int, scan_count: int
    ) -> Iterator[list[tuple[str, list[Any]]]]:
        """(imei, [value of each of FIELDS, raw as stored or None]) of every device record,
        BATCH devices per pipelined read; decode the values with :mod:`service.store.records`.
        Read-only; every primary of a cluster is scanned."""
        read = hash_fields_reader(self.redis, fields)
        for rows in scan_batches(
            self.redis, keys.DEVICE_SCAN_PATTERN, read, batch=batch, scan_count=scan_count
        ):
            yield [(keys.imei_of_device_key(key), values) for key, values in rows]

    def overrides_by_imei(self, *, batch: int, scan_count: int) -> dict[str, Any]:
        """IMEI -> stored override (raw JSON; :func:`records.decode_override` reads it) of every
        device that has one.

        Overrides are few, so one SCAN of their own plus an MGET per batch is far cheaper than a
        GET beside every device's HMGET (redis-py spends most of a pipeline on per-command work).
        """
        found: dict[str, Any] = {}
        read = strings_reader(self.redis)
        for rows in scan_batches(
            self.redis, keys.DEVICE_OVERRIDE_SCAN_PATTERN, read, batch=batch, scan_count=scan_count
        ):
            for key, value in rows:
                if value is not None:  # lapsed (TTL) between SCAN and MGET
                    found[keys.imei_of_override_key(key)] = value
        return found

    def forget_facts(
        self, imei: str, *, facts_read: str, history_read: str, new_history: str, drop_facts: bool
    ) -> bool:
        """Retention: remove the device's ``facts`` (when DROP_FACTS) and replace its history
        with NEW_HISTORY ("" removes it), each only if it still holds what was read
        (FACTS_READ, HISTORY_READ), so a check-in landing meanwhile is never undone. True when
        something changed."""
        changed = self._forget_facts(
            keys=[keys.device(imei)],
            args=[facts_read, history_read, new_history, "1" if drop_facts else "0"],
        )
        return bool(changed)

    def trim_facts_stream(self, before: float) -> int:
        """Retention: remove the check-in facts stream's entries recorded before BEFORE (epoch
        seconds; stream ids are the time of recording); the number removed."""
        return self.redis.xtrim(
            keys.CHECKIN_FACTS, minid=f"{int(before * 1000)}-0", approximate=False
        )

    # --- chosen devices (the sampled simulations of SPEC §12.5) ---------------------------------

    def fields_and_overrides(
        self, imeis: Sequence[str], fields: Sequence[str]
    ) -> tuple[list[tuple[str, list[Any]]], dict[str, Any]]:
        """([(imei, [value of each of FIELDS, raw])], {imei: stored override}) of IMEIS, in one
        round trip: on a standalone Redis one script call for them all (redis-py spends far
        more on a command than Redis does), in a cluster an HMGET and a GET per device,
        pipelined. A device without a record comes with None values."""
        if not imeis:
            return [], {}
        width = len(fields)
        if self.cluster:
            pipe = self.redis.pipeline(transaction=False)
            for imei in imeis:
                pipe.execute_command("HMGET", keys.device(imei), *fields)
                pipe.execute_command("GET", keys.device_override(imei))
            replies = pipe.execute()
            pairs = ((replies[2 * i], replies[2 * i + 1]) for i in range(len(imeis)))
        else:
            names: list[str] = []
            for imei in imeis:
                names.append(keys.device(imei))
                names.append(keys.device_override(imei))
            flat = self._read_many(keys=names, args=list(fields))
            step = width + 1
            pairs = (
                (flat[i * step : i * step + width], flat[i * step + width])
                for i in range(len(imeis))
            )
        rows: list[tuple[str, list[Any]]] = []
        overrides: dict[str, Any] = {}
        for imei, (values, override) in zip(imeis, pairs, strict=True):
            rows.append((imei, values))
            if override is not None:
                overrides[imei] = override
        return rows, overrides
