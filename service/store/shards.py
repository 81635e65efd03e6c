"""Fleet-wide keys sharded by Redis Cluster slot, so a device's script can reach its shard.

A key that grows with the fleet (the day's counters, the locked-devices index, the sampling
index of SPEC §12.5 and §14) cannot be one key in a Redis Cluster, and a Lua script may only
touch keys of one slot. So such a key is split into one shard per slot: the shard that a
device writes is tagged with ``slot_tag(imei)``, a short string that hashes to the same slot
as the device's own ``{imei}`` tag, and so lives beside the device's record. The check-in's
one script then updates the device and its shard together; readers go over the shards
(``ALL_TAGS``; on a standalone Redis too, so the two deployments share one layout).

The table (16,384 tags: the shortest hex number hashing to each slot) is built once, on first
use, in about 50 ms.
"""

from __future__ import annotations

from functools import lru_cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot


@lru_cache(maxsize=1)
def _tags() -> tuple[str, ...]:
    tags: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    missing = REDIS_CLUSTER_HASH_SLOTS
    number = 0
    while missing:
        candidate = format(number, "x")
        slot = key_slot(candidate.encode())
        if tags[slot] is None:
            tags[slot] = candidate
            missing -= 1
        number += 1
    return tuple(tags)  # type: ignore[arg-type]


def slot_of(imei: str) -> int:
    """The Redis Cluster slot of the device's keys (their hash tag is the IMEI)."""
    return key_slot(imei.encode())


def slot_tag(imei: str) -> str:
    """The shard tag of IMEI: a string whose hash slot is the device's own."""
    return _tags()[slot_of(imei)]


def all_tags() -> tuple[str, ...]:
    """Every shard tag, one per slot, in slot order."""
    return _tags()
