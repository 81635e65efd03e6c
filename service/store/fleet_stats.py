"""Fleet overview (SPEC §14): the per-day counters and the locked-devices index in Redis.

Both are written by the device's own scripts (the check-in's, the override change's; see
:mod:`service.store.devices`): the Lua fragments below are prepended to those scripts, so the
counters and the index change in the same atomic call as the record or the override, with no
extra round trip. Every key is sharded by slot (:mod:`service.store.shards`): the shards a
device writes carry ``slot_tag(imei)``, which hashes to the device's own slot.

Readers sum the shards: a day's 16,384 counter shards are read in one pipelined pass (per node
in a Cluster), and the sweeper rolls each closed day up into one ``stats_day`` key and drops its
shards, so a 400-day report reads 400 small keys plus today's shards (docs/performance.md).
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

from service.store import keys
from service.store.records import DeviceRecord
from service.store.shards import all_tags, slot_tag

#: How long a day's counters are kept (SPEC §14: 400 days), counted from the day's end.
KEPT_DAYS = 400

#: Separator of the packed argument of the scripts (ASCII record separator: no value has it).
SEP = "\x1e"

# --- Lua, shared by the device scripts --------------------------------------------------------
# rl_split(text, sep): the parts of TEXT.
# rl_count(key, prefix, fields, by): HINCRBY each of the comma-separated FIELDS (with PREFIX)
#   by BY; a count falling to 0 is removed.
# rl_locked(index, counts, imei, entry, now): IMEI's entry in the locked index; ENTRY is
#   "fields\trow" ("" removes it); the stored value is "since\tfields\trow", SINCE kept while
#   the device stays locked; COUNTS follows the entry's fields.
LUA_FRAGMENT = r"""
-- >>> fleet overview (SPEC §14; service/store/fleet_stats.py) >>>
local function rl_split(text, sep)
  local out = {}
  if not text or text == '' then return out end
  local start = 1
  while true do
    local i = string.find(text, sep, start, true)
    if not i then
      out[#out + 1] = string.sub(text, start)
      return out
    end
    out[#out + 1] = string.sub(text, start, i - 1)
    start = i + 1
  end
end
local function rl_count(key, prefix, fields, by)
  for _, f in ipairs(rl_split(fields, ',')) do
    if redis.call('HINCRBY', key, prefix .. f, by) <= 0 then
      redis.call('HDEL', key, prefix .. f)
    end
  end
end
local function rl_locked(index, counts, imei, entry, now)
  local old = redis.call('HGET', index, imei)
  local since = now
  if old then
    local tab = string.find(old, '\t', 1, true)
    local rest = string.sub(old, tab + 1)
    if rest == entry then return end
    rl_count(counts, '', string.sub(rest, 1, string.find(rest, '\t', 1, true) - 1), -1)
    if entry == '' then
      redis.call('HDEL', index, imei)
      return
    end
    since = string.sub(old, 1, tab - 1)
  elseif entry == '' then
    return
  end
  redis.call('HSET', index, imei, since .. '\t' .. entry)
  rl_count(counts, '', string.sub(entry, 1, string.find(entry, '\t', 1, true) - 1), 1)
end
-- Time-boxed overrides by expiry: IMEI scored by EXPIRES ("" takes it out).
local function rl_expiry(zset, imei, expires)
  if expires == '' then
    redis.call('ZREM', zset, imei)
  else
    redis.call('ZADD', zset, expires, imei)
  end
end
-- <<< fleet overview <<<
"""

# The check-in's part. KEYS (the last three): day shard, locked index shard, locked counts
# shard. PACKED (SEP-separated): imei, day TTL, new verdict, its counter fields, locked entry
# ("" when not locked). OLD_VERDICT: the record's verdict before this check-in; NOW its time.
LUA_CHECKIN = r"""
-- >>> fleet overview: the check-in's counters and index entry >>>
local function rl_checkin_stats(packed, old_verdict, now)
  local imei, ttl, verdict, fields, entry = string.match(
    packed, '^([^\30]*)\30([^\30]*)\30([^\30]*)\30([^\30]*)\30([^\30]*)$')
  local n = #KEYS
  if redis.call('HINCRBY', KEYS[n - 2], 'n', 1) == 1 then
    redis.call('EXPIRE', KEYS[n - 2], ttl)
  end
  if old_verdict ~= verdict then
    rl_count(KEYS[n - 2], verdict .. ':', fields, 1)
  end
  rl_locked(KEYS[n - 1], KEYS[n], imei, entry, now)
end
-- <<< fleet overview <<<
"""

# The override change's part. KEYS (the last five): device hash, day shard, locked index
# shard, locked counts shard, expiries shard. PACKED: imei, day TTL, counter fields
# (comma-separated, "" for none), locked entry, now, expiry ("" none), basis read.
# rl_override_stale() first (nothing written yet): true when the device's lock basis (what
# the policy said at its last check-in) is no longer the one the entry was computed from.
LUA_OVERRIDE = r"""
-- >>> fleet overview: the override's counters and index entry >>>
local function rl_override_packed(packed)
  return rl_split(packed, '\30')
end
local function rl_basis(device)
  local values = redis.call('HMGET', device, 'policy_reasons', 'distributor')
  return (values[1] or '') .. '\n' .. (values[2] or '')
end
local function rl_override_stale(a)
  return a ~= nil and rl_basis(KEYS[#KEYS - 4]) ~= (a[7] or '')
end
local function rl_override_stats(a)
  if a == nil then return end
  local n = #KEYS
  if a[3] ~= '' then
    rl_count(KEYS[n - 3], '', a[3], 1)
    redis.call('EXPIRE', KEYS[n - 3], a[2])
  end
  rl_locked(KEYS[n - 2], KEYS[n - 1], a[1], a[4], a[5])
  rl_expiry(KEYS[n], a[1], a[6])
end
-- <<< fleet overview <<<
"""

# Re-index one device from what is stored (a lapsed time-boxed unlock; the backfill),
# compare-and-set: nothing is written when the basis or the override changed since it was read.
# KEYS: device hash, override, locked index shard, locked counts shard, expiries shard.
# ARGV: imei, basis read, override read ("" none), locked entry, now, expiry ("" none).
REINDEX = (
    LUA_FRAGMENT
    + r"""
local values = redis.call('HMGET', KEYS[1], 'policy_reasons', 'distributor')
if (values[1] or '') .. '\n' .. (values[2] or '') ~= ARGV[2] then
  return 0
end
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[3] then
  return 0
end
rl_locked(KEYS[3], KEYS[4], ARGV[1], ARGV[4], ARGV[5])
rl_expiry(KEYS[5], ARGV[1], ARGV[6])
return 1
"""
)


def basis_of(policy_reasons: str | bytes | None, distributor: str | bytes | None) -> str:
    """The lock basis as the scripts compare it: the stored ``policy_reasons`` and
    ``distributor`` fields, raw."""

    def text(value):
        if value is None:
            return ""
        return value.decode() if isinstance(value, bytes) else value

    return text(policy_reasons) + "\n" + text(distributor)


def day_of(now: float) -> str:
    """The UTC day (YYYYMMDD) of epoch second NOW."""
    return _day_name(int(now // 86400))


@lru_cache(maxsize=64)
def _day_name(day_number: int) -> str:
    # Epoch days are UTC days (no leap seconds in epoch time); cached: one per day.
    return time.strftime("%Y%m%d", time.gmtime(day_number * 86400))


def day_ttl_s(day: str, now: float) -> int:
    """Seconds to keep DAY's (YYYYMMDD) counters: until KEPT_DAYS after the day ended."""
    return max(60, int(_day_end(day) + KEPT_DAYS * 86400 - now))


@lru_cache(maxsize=64)
def _day_end(day: str) -> int:
    return calendar.timegm(time.strptime(day, "%Y%m%d")) + 86400


@dataclass(frozen=True, slots=True)
class CheckinCounts:
    """What one check-in adds to the overview: its VERDICT, the counter FIELDS of that verdict
    (``t``, ``r:<code>``, ...; counted when the verdict changed) and the device's locked-index
    ENTRY (``fields\trow``; "" when it is not locked)."""

    verdict: str
    fields: str
    entry: str


@dataclass(frozen=True, slots=True)
class OverrideCounts:
    """What one override change adds: counter FIELDS (``o:unlock:<role>``, ``codes``), the
    device's new locked-index ENTRY, computed from BASIS (compare-and-set), and the new
    override's EXPIRES (None: not time-boxed, or removed)."""

    fields: str
    entry: str
    basis: str
    expires: float | None


def checkin_args(imei: str, counts: CheckinCounts, now: float) -> tuple[list[str], str]:
    """The keys (appended to the check-in script's) and the packed argument of COUNTS (the
    script takes the time from its own first argument)."""
    day_number = int(now // 86400)
    day = _day_name(day_number)
    ttl = (day_number + 1 + KEPT_DAYS) * 86400 - int(now)
    tag = slot_tag(imei)
    packed = f"{imei}{SEP}{ttl}{SEP}{counts.verdict}{SEP}{counts.fields}{SEP}{counts.entry}"
    return [
        f"{PREFIX_STATS}{{{tag}}}:{day}",
        f"{PREFIX_LOCKED}{{{tag}}}",
        f"{PREFIX_COUNTS}{{{tag}}}",
    ], packed


# The check-in's shard names, as keys.stats_shard / locked_index / locked_counts make them
# (built inline on the hot path; tests/test_stats.py checks they agree).
PREFIX_STATS = keys.stats_shard("", "")[: -len("{}:")]
PREFIX_LOCKED = keys.locked_index("")[: -len("{}")]
PREFIX_COUNTS = keys.locked_counts("")[: -len("{}")]


def override_args(imei: str, counts: OverrideCounts, now: float) -> tuple[list[str], str]:
    """The keys (appended to the override script's) and the packed argument of COUNTS."""
    day = day_of(now)
    tag = slot_tag(imei)
    packed = SEP.join(
        (
            imei,
            str(day_ttl_s(day, now)),
            counts.fields,
            counts.entry,
            repr(now),
            "" if counts.expires is None else repr(counts.expires),
            counts.basis,
        )
    )
    return [
        keys.device(imei),
        keys.stats_shard(tag, day),
        keys.locked_index(tag),
        keys.locked_counts(tag),
        keys.override_expiries(tag),
    ], packed


def mark_due(redis, imei: str, expires: float) -> None:
    """Mark IMEI's expiries shard due at EXPIRES (or earlier, if it already is)."""
    redis.zadd(keys.OVERRIDE_EXPIRY_DUE, {slot_tag(imei): expires}, lt=True)


@dataclass(frozen=True, slots=True)
class LockedRow:
    """One entry of the locked index: the CSV row's parts (SPEC §14)."""

    imei: str
    since: float
    reasons: str
    regions: str
    distributor: str
    override: str


@dataclass(frozen=True, slots=True)
class IndexBasis:
    """What a device's locked-index entry is computed from: what the policy alone said at its
    last check-in (``policy_reasons``, ``distributor``; RAW as the scripts compare them) and
    its override's stored form (None: none)."""

    raw: str
    policy_reasons: list[dict]
    distributor: str | None
    override_raw: str | None


def index_basis(reasons, distributor, override) -> IndexBasis:
    """An IndexBasis from the stored values (raw, as read)."""
    record = DeviceRecord.decode(
        {k: v for k, v in (("policy_reasons", reasons), ("distributor", distributor)) if v}
    )
    return IndexBasis(
        raw=basis_of(reasons, distributor),
        policy_reasons=record.policy_reasons,
        distributor=record.distributor,
        override_raw=_decode(override) if override else None,
    )


def _decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _parse_row(imei: str, value: str) -> LockedRow:
    since, _fields, reasons, regions, distributor, override = value.split("\t")
    return LockedRow(imei, float(since), reasons, regions, distributor, override)


class StatsStore:
    """Reads the counters and the index (writes are the device scripts'), rolls closed days
    up, and re-indexes devices whose time-boxed unlock lapsed."""

    def __init__(self, redis):
        self.redis = redis
        self._reindex = redis.register_script(REINDEX)

    def _sum_shards(self, names: Iterable[str], batch: int = 2048) -> dict[str, int]:
        """Field -> sum over the hashes NAMES (pipelined in batches)."""
        total: dict[str, int] = {}
        names = list(names)
        for start in range(0, len(names), batch):
            pipe = self.redis.pipeline(transaction=False)
            for name in names[start : start + batch]:
                pipe.hgetall(name)
            for shard in pipe.execute():
                for field, value in shard.items():
                    field = _decode(field)
                    total[field] = total.get(field, 0) + int(value)
        return total

    def day_counts(self, days: list[str]) -> dict[str, dict[str, int]]:
        """Day (YYYYMMDD) -> its counters: the roll-up when there is one; nothing for a day
        up to the last one rolled up that has none (nothing counted then, or over 400 days
        ago); else the sum of its shards."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(keys.STATS_ROLLED_THROUGH)
        for day in days:
            pipe.hgetall(keys.stats_day(day))
        through, *rolled_days = pipe.execute()
        through = _decode(through) if through is not None else ""
        out: dict[str, dict[str, int]] = {}
        for day, rolled in zip(days, rolled_days, strict=True):
            if rolled:  # a rolled-up day always holds "_"
                out[day] = {_decode(k): int(v) for k, v in rolled.items() if _decode(k) != "_"}
            elif day <= through:
                out[day] = {}
            else:
                out[day] = self._sum_shards(keys.stats_shard(tag, day) for tag in all_tags())
        return out

    def locked_counts(self) -> dict[str, int]:
        """The locked devices' counts (``t``, ``r:``, ``c:``, ``g:``, ``d:``), summed."""
        return self._sum_shards(keys.locked_counts(tag) for tag in all_tags())

    def rolled_through(self) -> str | None:
        """The last day rolled up (YYYYMMDD), or None."""
        value = self.redis.get(keys.STATS_ROLLED_THROUGH)
        return _decode(value) if value is not None else None

    def roll_up(self, day: str, now: float) -> dict[str, int]:
        """Sum DAY's shards into its one key (kept as long as the shards were), then drop the
        shards. Only for a closed day: a late write would otherwise be lost."""
        total = self._sum_shards(keys.stats_shard(tag, day) for tag in all_tags())
        name = keys.stats_day(day)
        pipe = self.redis.pipeline(transaction=False)
        # "_" marks a rolled-up day that counted nothing (an empty hash is no key).
        pipe.hset(name, mapping={"_": 1, **total})
        pipe.expire(name, day_ttl_s(day, now))
        pipe.set(keys.STATS_ROLLED_THROUGH, day)
        pipe.execute()
        shards = [keys.stats_shard(tag, day) for tag in all_tags()]
        for start in range(0, len(shards), 2048):
            pipe = self.redis.pipeline(transaction=False)
            for shard in shards[start : start + 2048]:
                pipe.unlink(shard)
            pipe.execute()
        return total

    def locked_rows(self, batch: int = 256) -> Iterator[LockedRow]:
        """Every entry of the locked index, shard by shard (HSCAN: bounded memory)."""
        for tag in all_tags():
            for imei, value in self.redis.hscan_iter(keys.locked_index(tag), count=batch):
                yield _parse_row(_decode(imei), _decode(value))

    def locked_row(self, imei: str) -> LockedRow | None:
        """IMEI's entry in the locked index, or None."""
        value = self.redis.hget(keys.locked_index(slot_tag(imei)), imei)
        return _parse_row(imei, _decode(value)) if value is not None else None

    def due_tags(self, now: float) -> list[str]:
        """The shard tags marked due by NOW (see :func:`mark_due`)."""
        return [_decode(t) for t in self.redis.zrangebyscore(keys.OVERRIDE_EXPIRY_DUE, "-inf", now)]

    def lapsed(self, now: float, tags=None, limit: int = 1000) -> list[str]:
        """IMEIs whose time-boxed override expired by NOW, in the shards TAGS (None: every
        shard, one pipelined pass)."""
        found: list[str] = []
        tags = list(all_tags() if tags is None else tags)
        for start in range(0, len(tags), 4096):
            pipe = self.redis.pipeline(transaction=False)
            for tag in tags[start : start + 4096]:
                pipe.zrangebyscore(keys.override_expiries(tag), "-inf", now, start=0, num=limit)
            for members in pipe.execute():
                found.extend(_decode(m) for m in members)
        return found

    def reschedule(self, tags) -> None:
        """Mark each of TAGS due at its shard's next expiry, or unmark it when none is left.
        (A mark set meanwhile for an earlier expiry may be lost here: the sweeper's full pass
        catches that device.)"""
        tags = list(tags)
        if not tags:
            return
        pipe = self.redis.pipeline(transaction=False)
        for tag in tags:
            pipe.zrange(keys.override_expiries(tag), 0, 0, withscores=True)
        nexts = pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        for tag, first in zip(tags, nexts, strict=True):
            if first:
                pipe.zadd(keys.OVERRIDE_EXPIRY_DUE, {tag: first[0][1]})
            else:
                pipe.zrem(keys.OVERRIDE_EXPIRY_DUE, tag)
        pipe.execute()

    def index_basis(self, imei: str) -> IndexBasis:
        """What a device's index entry is computed from, as stored now (one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(keys.device(imei), ["policy_reasons", "distributor"])
        pipe.get(keys.device_override(imei))
        (reasons, distributor), override = pipe.execute()
        return index_basis(reasons, distributor, override)

    def reindex(
        self,
        imei: str,
        *,
        basis: str,
        override_raw: str | None,
        entry: str,
        now: float,
        expires: float | None,
    ) -> bool:
        """Set IMEI's index entry to ENTRY ("" removes it) and its expiry, only if its basis and
        override are still BASIS and OVERRIDE_RAW; False (nothing written) otherwise."""
        tag = slot_tag(imei)
        done = self._reindex(
            keys=[
                keys.device(imei),
                keys.device_override(imei),
                keys.locked_index(tag),
                keys.locked_counts(tag),
                keys.override_expiries(tag),
            ],
            args=[
                imei,
                basis,
                override_raw or "",
                entry,
                repr(now),
                "" if expires is None else repr(expires),
            ],
        )
        return bool(done)
