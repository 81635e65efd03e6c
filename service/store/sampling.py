"""The sampling index (SPEC §12.5): every recorded device by slot and ordinal, so a uniform
sample of the fleet is drawn without a scan of it.

One hash per Redis Cluster slot (``keys.sample_shard(slot_tag(imei))``, beside the device's
record): ``n`` counts the devices of that slot first recorded so far, and ``"1"``..``"n"`` name
them in that order. The check-in's script adds a device when it writes its record for the
first time (:data:`LUA_PRELUDE`, the delimited fragment of ``store/devices.py``'s script).

The fleet is then a sequence of positions ``0 .. N-1``: the devices of slot 0, then of slot
1, ... A sample is a set of positions; :meth:`SamplingIndex.counts` reads the 16,384 ``n``
(one pipelined read) and :meth:`SamplingIndex.imeis_at` turns sorted positions into IMEIs
(one pipelined HMGET per slot the positions fall in). Ordinals only grow, so the positions of
a sample stay valid while the fleet grows, as long as the counts they were drawn on are kept
(a resumed job keeps them).

Devices recorded before the index existed are added once by :meth:`SamplingIndex.reindex`
(``regionlock devices reindex``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from service.store import keys
from service.store.client import is_cluster
from service.store.scan import scan_batches
from service.store.shards import all_tags, slot_of, slot_tag

# >>> the check-in script's fragment (SPEC §12.5 sampling index) >>>
# Prepended to the check-in script. The caller passes the device's index shard as one more key
# (anywhere after the device hash); the prelude takes it out of KEYS, so the rest of the script
# sees its keys as before, and notes whether the device is new (no first_seen yet).
# ``rl_sample_index()``, called by the script once the record is written (never after a refused
# replay), gives a new device the next ordinal of its slot.
LUA_PRELUDE = r"""
local rl_sample_key, rl_sample_new = nil, false
for i = #KEYS, 2, -1 do
  if string.sub(KEYS[i], 1, {length}) == '{prefix}' then
    rl_sample_key = table.remove(KEYS, i)
    break
  end
end
if rl_sample_key then
  rl_sample_new = redis.call('HEXISTS', KEYS[1], 'first_seen') == 0
end
local function rl_sample_index()
  if rl_sample_new then
    local n = redis.call('HINCRBY', rl_sample_key, 'n', 1)
    redis.call('HSET', rl_sample_key, tostring(n), string.match(KEYS[1], '{(.-)}'))
  end
end
""".replace("{length}", str(len(keys.SAMPLE_SHARD_PREFIX))).replace(
    "{prefix}", keys.SAMPLE_SHARD_PREFIX
)
# <<< the check-in script's fragment <<<

# Adds devices recorded before the index existed. KEYS: shard. ARGV: IMEIs.
_APPEND = r"""
local n = redis.call('HINCRBY', KEYS[1], 'n', #ARGV)
local first = n - #ARGV
local pairs = {}
for i, imei in ipairs(ARGV) do
  pairs[#pairs + 1] = tostring(first + i)
  pairs[#pairs + 1] = imei
end
redis.call('HSET', KEYS[1], unpack(pairs))
return n
"""

# The loader's batch write on a standalone Redis (one call for many records instead of one
# command each). KEYS: device hashes. ARGV: per key, its number of fields, then field/value pairs.
_LOAD = r"""
local at = 1
for i, key in ipairs(KEYS) do
  local n = tonumber(ARGV[at])
  redis.call('HSET', key, unpack(ARGV, at + 1, at + 2 * n))
  at = at + 1 + 2 * n
end
return #KEYS
"""

# The draw's read of many ordinals (standalone Redis only: the shards span slots). KEYS:
# shards. ARGV: per shard, its number of ordinals, then the ordinals. Returns the IMEIs.
_AT = r"""
local out, n, at = {}, 0, 1
for i, key in ipairs(KEYS) do
  local m = tonumber(ARGV[at])
  local found = redis.call('HMGET', key, unpack(ARGV, at + 1, at + m))
  for j = 1, m do
    n = n + 1
    out[n] = found[j]
  end
  at = at + 1 + m
end
return out
"""

#: Slots read per pipelined round trip.
_SLOTS_PER_READ = 16_384


def shard_key(imei: str) -> str:
    """The index shard a device's check-in writes (the script's extra key)."""
    return keys.sample_shard(slot_tag(imei))


class SamplingIndex:
    """Reads (and, for devices recorded before it, fills) the sampling index."""

    def __init__(self, redis):
        self.redis = redis
        self._append = redis.register_script(_APPEND)
        self._load = redis.register_script(_LOAD)
        self._at = redis.register_script(_AT)
        self.cluster = is_cluster(redis)

    def counts(self) -> list[int]:
        """Devices indexed per slot, in slot order (one pipelined read of 16,384 fields)."""
        pipe = self.redis.pipeline(transaction=False)
        for tag in all_tags():
            pipe.execute_command("HGET", keys.sample_shard(tag), "n")
        return [int(n) if n else 0 for n in pipe.execute()]

    def imeis_at(self, positions: Sequence[int], counts: Sequence[int]) -> list[str | None]:
        """The IMEIs at sorted POSITIONS of the fleet laid out by COUNTS (None where an entry is
        missing). One HMGET per slot the positions fall in: all in one script call on a
        standalone Redis, pipelined in a cluster."""
        tags = all_tags()
        pipe = self.redis.pipeline(transaction=False)
        groups: list[int] = []
        shard_keys: list[str] = []
        args: list[int] = []
        slot, start = 0, 0
        i, total = 0, len(positions)
        while i < total:
            position = positions[i]
            while position >= start + counts[slot]:
                start += counts[slot]
                slot += 1
            ordinals = []
            end = start + counts[slot]
            while i < total and positions[i] < end:
                ordinals.append(positions[i] - start + 1)
                i += 1
            if self.cluster:
                pipe.execute_command("HMGET", keys.sample_shard(tags[slot]), *ordinals)
            else:
                shard_keys.append(keys.sample_shard(tags[slot]))
                args.append(len(ordinals))
                args.extend(ordinals)
            groups.append(len(ordinals))
        if not self.cluster:
            reply = self._at(keys=shard_keys, args=args) if groups else []
            return [v.decode() if isinstance(v, bytes) else v for v in reply]
        found: list[str | None] = []
        for reply in pipe.execute() if groups else ():
            found.extend(v.decode() if isinstance(v, bytes) else v for v in reply)
        return found

    def add(self, imeis: Iterable[str]) -> int:
        """Append IMEIS (not indexed yet) to their slots' shards; how many were added."""
        by_tag: dict[str, list[str]] = {}
        for imei in imeis:
            by_tag.setdefault(slot_tag(imei), []).append(imei)
        added = 0
        for tag, group in by_tag.items():
            for at in range(0, len(group), 1000):
                chunk = group[at : at + 1000]
                self._append(keys=[keys.sample_shard(tag)], args=chunk)
                added += len(chunk)
        return added

    def indexed(self) -> set[str]:
        """Every IMEI in the index (the reindex's one big read)."""
        found: set[str] = set()
        tags = all_tags()
        for at in range(0, len(tags), 512):
            pipe = self.redis.pipeline(transaction=False)
            for tag in tags[at : at + 512]:
                pipe.hgetall(keys.sample_shard(tag))
            for shard in pipe.execute():
                for field, value in shard.items():
                    name = field.decode() if isinstance(field, bytes) else field
                    if name != "n":
                        found.add(value.decode() if isinstance(value, bytes) else value)
        return found

    def reindex(self, *, batch: int = 1000, scan_count: int = 10_000) -> tuple[int, int]:
        """Add every recorded device that is not in the index (devices recorded before it
        existed): (devices seen, devices added). The devices are listed first and the index read
        after, so a device first recorded meanwhile (indexed by its check-in) is not added twice;
        two reindexes must not run at once."""
        recorded: list[str] = []
        for rows in scan_batches(
            self.redis,
            keys.DEVICE_SCAN_PATTERN,
            lambda batch_keys: [None] * len(batch_keys),
            batch=batch,
            scan_count=scan_count,
        ):
            recorded.extend(keys.imei_of_device_key(key) for key, _ in rows)
        indexed = self.indexed()
        missing = [imei for imei in recorded if imei not in indexed]
        return len(recorded), self.add(missing)

    # --- the bulk loader of benchmarks and tests ---------------------------------------------

    def load(
        self,
        records: Iterable[tuple[str, Mapping[str, str]]],
        *,
        batch: int = 2000,
        index_flush: int = 200_000,
    ) -> int:
        """Write device records (IMEI, stored fields as a check-in writes them) and index them:
        a fleet recorded without check-ins (benchmarks, tests). Records go BATCH per pipelined
        round trip; index entries are gathered by slot and written every INDEX_FLUSH devices,
        one HSET per slot. The IMEIs must be new, and no check-in may record a new device
        meanwhile (the ordinals are counted here). Returns how many were written."""
        counts = self.counts()
        tags = all_tags()
        pending: dict[int, list[str]] = {}
        written = unflushed = 0
        scripted = not is_cluster(self.redis)
        for chunk in _chunks(records, batch):
            if scripted:  # one script call per batch (the keys are this one server's)
                args: list[Any] = []
                for imei, fields in chunk:
                    args.append(len(fields))
                    for name, value in fields.items():
                        args.extend((name, value))
                    pending.setdefault(slot_of(imei), []).append(imei)
                self._load(keys=[keys.device(imei) for imei, _ in chunk], args=args)
            else:
                pipe = self.redis.pipeline(transaction=False)
                for imei, fields in chunk:
                    flat: list[str] = []
                    for name, value in fields.items():
                        flat.extend((name, value))
                    pipe.execute_command("HSET", keys.device(imei), *flat)
                    pending.setdefault(slot_of(imei), []).append(imei)
                pipe.execute()
            written += len(chunk)
            unflushed += len(chunk)
            if unflushed >= index_flush:
                self._flush(pending, counts, tags)
                pending, unflushed = {}, 0
        self._flush(pending, counts, tags)
        return written

    def _flush(self, pending: dict[int, list[str]], counts: list[int], tags) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for slot, imeis in pending.items():
            first = counts[slot]
            flat: list[Any] = []
            for i, imei in enumerate(imeis, start=first + 1):
                flat.extend((i, imei))
            counts[slot] = first + len(imeis)
            pipe.execute_command("HSET", keys.sample_shard(tags[slot]), "n", counts[slot], *flat)
        if pending:
            pipe.execute()


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
